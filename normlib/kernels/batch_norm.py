"""BatchNorm for ``(N, C, *)`` inputs: training (batch statistics) and inference (running statistics).

Per-channel statistics run over ``N x positions`` values, usually far more than one program
should handle, and there are often few channels. The input is read in place as a 3-D array
``(A, C, B)``: ``(N, C, positions)`` for a contiguous input, ``(N x positions, C, 1)`` for a
channels_last one (and an ``(N, C)`` input is ``(N, C, 1)``), so the contiguous dimension is
either the positions or the channels. A program takes a block of channels (one channel when the
positions are contiguous, up to 64 when the channels are) and a block of rows of ``A`` (a
split), and walks ``[rows, channels, positions]`` tiles: no element's address needs a division,
and the contiguous dimension is loaded 128 bits at a time where its length allows.

Training forward, two kernels: each split reduces its values to a count, a mean and a sum of
squared deviations per channel; the normalize kernel merges the splits with Chan's formula
(stable: no ``E[x^2] - E[x]^2``) and applies ``y = (x - mean_c) * scale_c + shift_c`` (centred
first, so a large mean does not cancel). Backward, two kernels: each split sums ``dy`` and
``dy * xhat`` per channel (``dbeta`` and ``dgamma``, which give the two means the input
gradient needs); the input-gradient kernel adds up the splits and writes ``dx``. Outputs keep
the input's memory format; other layouts are copied to a contiguous one first. The arguments
that change with the batch size are not specialized, so a new batch size compiles nothing new.
The running statistics are updated by the caller (:func:`normlib.functional.batch_norm`) with
PyTorch's momentum semantics.

Derived in ``chapters/20_kernels.ipynb``.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from normlib._validation import batch_axes, check_param, check_values_per_channel
from normlib.kernels._common import accumulator_dtype, chan_merge, check_input, stats_dtype

TILE = 2048             # elements per tile: [rows] x [channels] x [positions]
MAX_CHANNELS = 64       # channels per program when the channels are contiguous
MAX_SPLITS = 256        # splits per channel block (bounded: the merge does not grow with N)
MIN_SPLIT = 16 * TILE   # elements of a channel block per split, at least


def _layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself if contiguous or channels_last (read in place), else a contiguous copy."""
    if x.is_contiguous():
        return x
    for dims, memory_format in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if x.dim() == dims and x.is_contiguous(memory_format=memory_format):
            return x
    return x.contiguous()


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format of an input :func:`_layout` accepted (the gradient is read in it too)."""
    if x.is_contiguous():
        return torch.contiguous_format
    return torch.channels_last if x.dim() == 4 else torch.channels_last_3d


def _view(x: torch.Tensor) -> tuple[int, int, int]:
    """(A, C, B) of an input read in place as an ``(A, C, B)`` array."""
    n, c = x.shape[:2]
    positions = x[0, 0].numel() if n else 0
    if not x.is_contiguous():   # channels_last: positions are C apart
        return n * positions, c, 1
    return n, c, positions


def _grid(a: int, c: int, b: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_A, BLOCK_C, BLOCK_B, channel blocks, splits) for an ``(A, C, B)`` input."""
    if b > 1:
        block_c, block_b = 1, min(triton.next_power_of_2(b), TILE)
    else:
        block_c, block_b = min(triton.next_power_of_2(c), MAX_CHANNELS), 1
    block_a = max(1, TILE // (block_c * block_b))
    splits = max(1, min(MAX_SPLITS, triton.cdiv(a * b * block_c, MIN_SPLIT), a))
    return block_a, block_c, block_b, triton.cdiv(c, block_c), splits


def _split_count(values_per_channel: int) -> int:
    """Splits for a contiguous ``(N, C, positions)`` input with this many values per channel."""
    return _grid(values_per_channel, 1, 1)[4]


@triton.jit
def _tile(A, C, rows_per_split, BLOCK_C: tl.constexpr, BLOCK_B: tl.constexpr):
    # this program's channels and their mask, its rows [first, last), and a tile's positions
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    first = tl.program_id(1) * rows_per_split
    return channels, channels < C, first, tl.minimum(first + rows_per_split, A), tl.arange(0, BLOCK_B)


@triton.jit
def _where(rows, last, channels, channel_mask, positions, C, B):
    # offsets and mask of a [rows, channels, positions] tile of the (A, C, B) array
    offsets = (rows.to(tl.int64) * C * B)[:, None, None] + (channels * B)[None, :, None] + positions[None, None, :]
    mask = (rows < last)[:, None, None] & channel_mask[None, :, None] & (positions < B)[None, None, :]
    return offsets, mask


@triton.jit
def _per_channel(tile):
    # sum over the rows and positions of a [rows, channels, positions] tile
    return tl.sum(tl.sum(tile, axis=2), axis=0)


@triton.jit(do_not_specialize=["A", "rows_per_split"])
def _partial_statistics_kernel(X, Count, Mean, M2, A, C, B, rows_per_split,
                               ACC: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr,
                               BLOCK_B: tl.constexpr):
    channels, channel_mask, first, last, lanes = _tile(A, C, rows_per_split, BLOCK_C, BLOCK_B)
    count = tl.zeros([BLOCK_C], dtype=ACC)
    mean = tl.zeros([BLOCK_C], dtype=ACC)
    m2 = tl.zeros([BLOCK_C], dtype=ACC)
    for row_start in range(first, last, BLOCK_A):
        rows = row_start + tl.arange(0, BLOCK_A)
        for position_start in range(0, B, BLOCK_B):
            offsets, mask = _where(rows, last, channels, channel_mask, position_start + lanes, C, B)
            x = tl.load(X + offsets, mask=mask, other=0.0).to(ACC)
            k = (tl.minimum(last - row_start, BLOCK_A) * tl.minimum(B - position_start, BLOCK_B)).to(ACC)
            tile_mean = _per_channel(x) / k
            # the deviations' own mean is the rounding error of the first sum (large means): add it
            tile_mean += _per_channel(tl.where(mask, x - tile_mean[None, :, None], 0.0)) / k
            deviation = tl.where(mask, x - tile_mean[None, :, None], 0.0)
            count, mean, m2 = chan_merge(count, mean, m2, k, tile_mean, _per_channel(deviation * deviation))
    out = tl.program_id(1) * C + channels
    tl.store(Count + out, count, mask=channel_mask)
    tl.store(Mean + out, mean, mask=channel_mask)
    tl.store(M2 + out, m2, mask=channel_mask)


@triton.jit(do_not_specialize=["A", "rows_per_split", "splits"])
def _normalize_kernel(X, Y, Count, PartialMean, M2, W, Bias, Center, Scale, Shift, MeanOut, VarOut, RstdOut,
                      A, C, B, rows_per_split, splits, eps,
                      FROM_PARTIALS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACC: tl.constexpr,
                      BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_B: tl.constexpr):
    # y = (x - center[c]) * scale[c] + shift[c]. Training: center, scale and shift come from the
    # splits' statistics, which every program merges for its channels (split 0 stores them).
    channels, channel_mask, first, last, lanes = _tile(A, C, rows_per_split, BLOCK_C, BLOCK_B)
    if FROM_PARTIALS:
        count = tl.zeros([BLOCK_C], dtype=ACC)
        center = tl.zeros([BLOCK_C], dtype=ACC)
        m2 = tl.zeros([BLOCK_C], dtype=ACC)
        for split in range(0, splits):
            at = split * C + channels
            count, center, m2 = chan_merge(count, center, m2, tl.load(Count + at, mask=channel_mask, other=1.0),
                                           tl.load(PartialMean + at, mask=channel_mask, other=0.0),
                                           tl.load(M2 + at, mask=channel_mask, other=0.0))
        var = m2 / count
        rstd = 1.0 / tl.sqrt(var + eps)
        scale = rstd
        if HAS_W:
            scale = scale * tl.load(W + channels, mask=channel_mask, other=0.0).to(ACC)
        shift = tl.zeros([BLOCK_C], dtype=ACC)
        if HAS_B:
            shift += tl.load(Bias + channels, mask=channel_mask, other=0.0).to(ACC)
        if tl.program_id(1) == 0:
            tl.store(MeanOut + channels, center, mask=channel_mask)
            tl.store(VarOut + channels, var, mask=channel_mask)
            tl.store(RstdOut + channels, rstd, mask=channel_mask)
    else:
        center = tl.load(Center + channels, mask=channel_mask, other=0.0).to(ACC)
        scale = tl.load(Scale + channels, mask=channel_mask, other=0.0).to(ACC)
        shift = tl.load(Shift + channels, mask=channel_mask, other=0.0).to(ACC)
    for row_start in range(first, last, BLOCK_A):
        rows = row_start + tl.arange(0, BLOCK_A)
        for position_start in range(0, B, BLOCK_B):
            offsets, mask = _where(rows, last, channels, channel_mask, position_start + lanes, C, B)
            x = tl.load(X + offsets, mask=mask, other=0.0).to(ACC)
            y = (x - center[None, :, None]) * scale[None, :, None] + shift[None, :, None]
            tl.store(Y + offsets, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["A", "rows_per_split"])
def _partial_gradient_sums_kernel(DY, X, Mean, Rstd, SumDy, SumDyXhat, A, C, B, rows_per_split,
                                  ACC: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr,
                                  BLOCK_B: tl.constexpr):
    channels, channel_mask, first, last, lanes = _tile(A, C, rows_per_split, BLOCK_C, BLOCK_B)
    mean = tl.load(Mean + channels, mask=channel_mask, other=0.0)[None, :, None]
    rstd = tl.load(Rstd + channels, mask=channel_mask, other=0.0)[None, :, None]
    sum_dy = tl.zeros([BLOCK_C], dtype=ACC)
    sum_dy_xhat = tl.zeros([BLOCK_C], dtype=ACC)
    for row_start in range(first, last, BLOCK_A):
        rows = row_start + tl.arange(0, BLOCK_A)
        for position_start in range(0, B, BLOCK_B):
            offsets, mask = _where(rows, last, channels, channel_mask, position_start + lanes, C, B)
            x = tl.load(X + offsets, mask=mask, other=0.0).to(ACC)
            dy = tl.load(DY + offsets, mask=mask, other=0.0).to(ACC)
            sum_dy += _per_channel(dy)
            sum_dy_xhat += _per_channel(tl.where(mask, dy * (x - mean) * rstd, 0.0))
    out = tl.program_id(1) * C + channels
    tl.store(SumDy + out, sum_dy, mask=channel_mask)
    tl.store(SumDyXhat + out, sum_dy_xhat, mask=channel_mask)


@triton.jit(do_not_specialize=["A", "rows_per_split", "splits"])
def _input_gradient_kernel(DY, X, Mean, Rstd, Weight, SumDy, SumDyXhat, DX, DWeight, DBias,
                           A, C, B, rows_per_split, splits,
                           HAS_W: tl.constexpr, ACC: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr,
                           BLOCK_B: tl.constexpr):
    # dx = gamma * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)), the means per channel from the
    # splits' sums, which split 0 also stores (they are dbeta and dgamma)
    channels, channel_mask, first, last, lanes = _tile(A, C, rows_per_split, BLOCK_C, BLOCK_B)
    sum_dy = tl.zeros([BLOCK_C], dtype=ACC)
    sum_dy_xhat = tl.zeros([BLOCK_C], dtype=ACC)
    for split in range(0, splits):
        sum_dy += tl.load(SumDy + split * C + channels, mask=channel_mask, other=0.0)
        sum_dy_xhat += tl.load(SumDyXhat + split * C + channels, mask=channel_mask, other=0.0)
    if tl.program_id(1) == 0:
        tl.store(DBias + channels, sum_dy.to(DBias.dtype.element_ty), mask=channel_mask)
        tl.store(DWeight + channels, sum_dy_xhat.to(DWeight.dtype.element_ty), mask=channel_mask)
    total = A.to(ACC) * B
    mean_dy = (sum_dy / total)[None, :, None]
    mean_dy_xhat = (sum_dy_xhat / total)[None, :, None]
    mean = tl.load(Mean + channels, mask=channel_mask, other=0.0)[None, :, None]
    rstd = tl.load(Rstd + channels, mask=channel_mask, other=0.0)
    scale = rstd
    if HAS_W:
        scale = scale * tl.load(Weight + channels, mask=channel_mask, other=0.0).to(ACC)
    rstd, scale = rstd[None, :, None], scale[None, :, None]
    for row_start in range(first, last, BLOCK_A):
        rows = row_start + tl.arange(0, BLOCK_A)
        for position_start in range(0, B, BLOCK_B):
            offsets, mask = _where(rows, last, channels, channel_mask, position_start + lanes, C, B)
            x = tl.load(X + offsets, mask=mask, other=0.0).to(ACC)
            dy = tl.load(DY + offsets, mask=mask, other=0.0).to(ACC)
            dx = scale * (dy - mean_dy - (x - mean) * rstd * mean_dy_xhat)
            tl.store(DX + offsets, dx.to(DX.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor) -> tuple[tuple[int, int], tuple[int, int, int, int], dict]:
    """(grid, (A, C, B, rows per split), tile constexprs) for an input read in place."""
    a, c, b = _view(x)
    block_a, block_c, block_b, channel_blocks, splits = _grid(a, c, b)
    return ((channel_blocks, splits), (a, c, b, triton.cdiv(a, splits)),
            dict(ACC=accumulator_dtype(x.dtype), BLOCK_A=block_a, BLOCK_C=block_c, BLOCK_B=block_b))


@torch.library.custom_op("normlib::batch_norm_training_forward", mutates_args=())
def _training_forward(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                      eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, mean, biased variance, rstd)``, per-channel statistics, of a contiguous or channels_last input."""
    grid, shape, tile = _launch(x)
    c, sd = x.shape[1], stats_dtype(x.dtype)
    count, partial_mean, m2 = (torch.empty(grid[1], c, device=x.device, dtype=sd) for _ in range(3))
    mean, var, rstd = (torch.empty(c, device=x.device, dtype=sd) for _ in range(3))
    y = torch.empty_like(x)   # keeps x's memory format
    _partial_statistics_kernel[grid](x, count, partial_mean, m2, *shape, **tile)
    _normalize_kernel[grid](x, y, count, partial_mean, m2, weight if weight is not None else x,
                            bias if bias is not None else x, mean, mean, mean, mean, var, rstd, *shape, grid[1], eps,
                            FROM_PARTIALS=True, HAS_W=weight is not None, HAS_B=bias is not None, **tile)
    return y, mean, var, rstd


@_training_forward.register_fake
def _(x, weight, bias, eps):
    stats = x.new_empty(x.shape[1], dtype=stats_dtype(x.dtype))
    return torch.empty_like(x), stats, torch.empty_like(stats), torch.empty_like(stats)


@torch.library.custom_op("normlib::batch_norm_training_backward", mutates_args=())
def _training_backward(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], mean: torch.Tensor,
                       rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dy = dy.contiguous(memory_format=_memory_format(x))   # read with x's strides
    grid, shape, tile = _launch(x)
    c = x.shape[1]
    sum_dy, sum_dy_xhat = (torch.empty(grid[1], c, device=x.device, dtype=mean.dtype) for _ in range(2))
    dtype = weight.dtype if weight is not None else x.dtype
    dweight, dbias = torch.empty(c, device=x.device, dtype=dtype), torch.empty(c, device=x.device, dtype=dtype)
    dx = torch.empty_like(x)
    _partial_gradient_sums_kernel[grid](dy, x, mean, rstd, sum_dy, sum_dy_xhat, *shape, **tile)
    _input_gradient_kernel[grid](dy, x, mean, rstd, weight if weight is not None else x, sum_dy, sum_dy_xhat, dx,
                                 dweight, dbias, *shape, grid[1], HAS_W=weight is not None, **tile)
    return dx, dweight, dbias


@_training_backward.register_fake
def _(dy, x, weight, mean, rstd):
    dtype = weight.dtype if weight is not None else x.dtype
    return torch.empty_like(x), x.new_empty(x.shape[1], dtype=dtype), x.new_empty(x.shape[1], dtype=dtype)


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps = inputs
    _, mean, _, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.has_bias = bias is not None


def _backward_formula(ctx, dy, dmean, dvar, drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = _training_backward(dy, x, weight, mean, rstd)
    return dx, dw if weight is not None else None, db if ctx.has_bias else None, None


_training_forward.register_autograd(_backward_formula, setup_context=_setup_context)


@torch.library.custom_op("normlib::channel_affine", mutates_args=())
def _channel_affine_op(x: torch.Tensor, center: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``(x - center[c]) * scale[c] + shift[c]`` for a contiguous or channels_last ``(N, C, *)`` input
    (BatchNorm inference); the output keeps the input's memory format."""
    y = torch.empty_like(x)
    grid, shape, tile = _launch(x)
    center, scale, shift = center.contiguous(), scale.contiguous(), shift.contiguous()
    _normalize_kernel[grid](x, y, center, center, center, x, x, center, scale, shift, center, center, center,
                            *shape, grid[1], 0.0, FROM_PARTIALS=False, HAS_W=False, HAS_B=False, **tile)
    return y


@_channel_affine_op.register_fake
def _(x, center, scale, shift):
    return torch.empty_like(x)


def _affine_setup_context(ctx, inputs, output):
    x, center, scale, shift = inputs
    ctx.save_for_backward(x, center, scale)


def _affine_backward(ctx, dy):
    x, center, scale = ctx.saved_tensors
    dy = dy.contiguous(memory_format=_memory_format(x))
    dims = batch_axes(x.dim())
    zeros = torch.zeros_like(scale)
    dx = _channel_affine_op(dy, zeros, scale, zeros) if ctx.needs_input_grad[0] else None
    sum_dy = dy.sum(dims, dtype=scale.dtype)
    dcenter = -scale * sum_dy if ctx.needs_input_grad[1] else None
    if ctx.needs_input_grad[2]:
        view = (1, -1, *([1] * (x.dim() - 2)))
        dscale = (dy * (x - center.view(view).to(x.dtype))).sum(dims, dtype=scale.dtype)
    else:
        dscale = None
    return dx, dcenter, dscale, sum_dy if ctx.needs_input_grad[3] else None


_channel_affine_op.register_autograd(_affine_backward, setup_context=_affine_setup_context)


def batch_norm_training(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                        eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode batch normalization of an ``(N, C, *)`` input with the Triton kernels
    (contiguous and channels_last inputs are read in place; the output keeps the memory format).
    Returns ``(y, batch mean, biased batch variance)``, the statistics per channel in float32
    (float64 for float64 inputs), for the caller's running-statistics update. Differentiable.
    Derived in ``chapters/20_kernels.ipynb``."""
    check_input(x, "input", min_dim=2, weight=weight, bias=bias)
    check_values_per_channel(x, x.numel() // x.shape[1] if x.shape[1] else 0)
    y, mean, var, _ = _training_forward(_layout(x), weight, bias, float(eps))
    return y, mean, var


def batch_norm_inference(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                         weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                         eps: float = 1e-5) -> torch.Tensor:
    """Inference-mode batch normalization with running statistics: one elementwise pass
    ``(x - running_mean) * scale + bias`` with ``scale = weight / sqrt(running_var + eps)``
    (differentiable in ``input``, ``weight`` and ``bias``; the output keeps the memory format).
    Derived in ``chapters/20_kernels.ipynb``."""
    check_input(x, "input", min_dim=2, weight=weight, bias=bias)
    check_param(running_mean, "running_mean", (x.shape[1],), x)
    check_param(running_var, "running_var", (x.shape[1],), x)
    sd = stats_dtype(x.dtype)
    scale = torch.rsqrt(running_var.to(sd) + eps)
    if weight is not None:
        scale = scale * weight.to(sd)
    shift = bias.to(sd) if bias is not None else torch.zeros_like(scale)
    return _channel_affine_op(_layout(x), running_mean.to(sd), scale, shift)
