"""BatchNorm for ``(N, C, *)`` inputs: training (batch statistics) and inference (running statistics).

Per-channel statistics run over ``N x positions`` values, usually far more than one program
should handle, and there are often few channels. So the reduction is split: a grid of
``C x SPLITS`` programs, each reducing a contiguous slice of one channel's values to a count, a
mean and a sum of squared deviations; a second step merges the slices with Chan's formula
(stable: no ``E[x^2] - E[x]^2``). The same split grid then applies
``y = (x - mean_c) * scale_c + shift_c`` (centred first, so a large mean does not cancel).
The backward reduces ``sum(dy)`` and ``sum(dy * xhat)`` per channel the same way (they are
``dbeta`` and ``dgamma`` and give the two means the input gradient needs), then writes ``dx``
in one elementwise pass. The running statistics are updated by the caller
(:func:`normlib.functional.batch_norm`) with PyTorch's momentum semantics. Inputs are read as
contiguous ``(N, C, S)``; other layouts are copied first.

Derived in ``chapters/10_kernels.ipynb``.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from normlib._validation import batch_axes, check_param, check_values_per_channel
from normlib.kernels._common import accumulator_dtype, chan_merge, check_input, stats_dtype, tile_statistics

BLOCK = 1024          # elements per tile
MAX_SPLITS = 64       # slices per channel (bounded: the second step's size does not grow with N)


def _split_count(count: int) -> int:
    return max(1, min(MAX_SPLITS, triton.cdiv(count, 16 * BLOCK)))


@triton.jit
def _address(index, channel, C, S):
    # flat index into one channel's N x S values -> offset in a contiguous (N, C, S) tensor
    n = index // S
    return (n * C + channel) * S + index % S


@triton.jit
def _program_slice(per_channel, per_split):
    # this program's channel and its slice [first, last) of the channel's values
    first = tl.program_id(1).to(tl.int64) * per_split
    return tl.program_id(0), first, tl.minimum(first + per_split, per_channel)


@triton.jit
def _partial_statistics_kernel(X, Count, Mean, M2, C, S, per_channel, per_split,
                               ACC: tl.constexpr, BLOCK: tl.constexpr):
    channel, first, last = _program_slice(per_channel, per_split)
    count = tl.zeros([], dtype=ACC)
    mean = tl.zeros([], dtype=ACC)
    m2 = tl.zeros([], dtype=ACC)
    for start in range(first, last, BLOCK):
        index = start + tl.arange(0, BLOCK)
        mask = index < last
        x = tl.load(X + _address(index, channel, C, S), mask=mask, other=0.0).to(ACC)
        k = tl.sum(mask.to(ACC), axis=0)
        tile_mean, tile_m2 = tile_statistics(x, mask, k)
        count, mean, m2 = chan_merge(count, mean, m2, k, tile_mean, tile_m2)
    out = channel * tl.num_programs(1) + tl.program_id(1)
    tl.store(Count + out, count)
    tl.store(Mean + out, mean)
    tl.store(M2 + out, m2)


@triton.jit
def _channel_affine_kernel(X, Center, Scale, Shift, Y, C, S, per_channel, per_split,
                           ACC: tl.constexpr, BLOCK: tl.constexpr):
    # y = (x - center[c]) * scale[c] + shift[c]
    channel, first, last = _program_slice(per_channel, per_split)
    center = tl.load(Center + channel).to(ACC)
    scale = tl.load(Scale + channel).to(ACC)
    shift = tl.load(Shift + channel).to(ACC)
    for start in range(first, last, BLOCK):
        index = start + tl.arange(0, BLOCK)
        mask = index < last
        offsets = _address(index, channel, C, S)
        x = tl.load(X + offsets, mask=mask, other=0.0).to(ACC)
        tl.store(Y + offsets, ((x - center) * scale + shift).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _partial_gradient_sums_kernel(DY, X, Mean, Rstd, SumDy, SumDyXhat, C, S, per_channel, per_split,
                                  ACC: tl.constexpr, BLOCK: tl.constexpr):
    channel, first, last = _program_slice(per_channel, per_split)
    mean = tl.load(Mean + channel)
    rstd = tl.load(Rstd + channel)
    sum_dy = tl.zeros([BLOCK], dtype=ACC)
    sum_dy_xhat = tl.zeros([BLOCK], dtype=ACC)
    for start in range(first, last, BLOCK):
        index = start + tl.arange(0, BLOCK)
        mask = index < last
        offsets = _address(index, channel, C, S)
        x = tl.load(X + offsets, mask=mask, other=0.0).to(ACC)
        dy = tl.load(DY + offsets, mask=mask, other=0.0).to(ACC)
        sum_dy += dy
        sum_dy_xhat += tl.where(mask, dy * (x - mean) * rstd, 0.0)
    out = channel * tl.num_programs(1) + tl.program_id(1)
    tl.store(SumDy + out, tl.sum(sum_dy, axis=0))
    tl.store(SumDyXhat + out, tl.sum(sum_dy_xhat, axis=0))


@triton.jit
def _input_gradient_kernel(DY, X, Mean, Rstd, Weight, MeanDy, MeanDyXhat, DX, C, S, per_channel, per_split,
                           HAS_W: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # dx = gamma * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)), means per channel
    channel, first, last = _program_slice(per_channel, per_split)
    mean = tl.load(Mean + channel)
    rstd = tl.load(Rstd + channel)
    mean_dy = tl.load(MeanDy + channel)
    mean_dy_xhat = tl.load(MeanDyXhat + channel)
    scale = rstd
    if HAS_W:
        scale = scale * tl.load(Weight + channel).to(ACC)
    for start in range(first, last, BLOCK):
        index = start + tl.arange(0, BLOCK)
        mask = index < last
        offsets = _address(index, channel, C, S)
        x = tl.load(X + offsets, mask=mask, other=0.0).to(ACC)
        dy = tl.load(DY + offsets, mask=mask, other=0.0).to(ACC)
        dx = scale * (dy - mean_dy - (x - mean) * rstd * mean_dy_xhat)
        tl.store(DX + offsets, dx.to(DX.dtype.element_ty), mask=mask)


def _grid(x: torch.Tensor) -> tuple[int, int, int, int, int]:
    """(C, S, values per channel, values per split, splits) of a contiguous (N, C, S) input."""
    c, s = x.shape[1], (x[0, 0].numel() if x.shape[0] else 0)
    per_channel = x.shape[0] * s
    splits = _split_count(per_channel)
    return c, s, per_channel, triton.cdiv(per_channel, splits), splits


def _channel_affine(x: torch.Tensor, center: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    y = torch.empty_like(x)
    c, s, per_channel, per_split, splits = _grid(x)
    if per_channel:
        _channel_affine_kernel[(c, splits)](x, center, scale, shift, y, c, s, per_channel, per_split,
                                            ACC=accumulator_dtype(x.dtype), BLOCK=BLOCK)
    return y


@torch.library.custom_op("normlib::batch_norm_training_forward", mutates_args=())
def _training_forward(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                      eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, mean, biased variance, rstd)`` with per-channel statistics of a contiguous input."""
    c, s, per_channel, per_split, splits = _grid(x)
    sd = stats_dtype(x.dtype)
    count, mean, m2 = (torch.empty(c, splits, device=x.device, dtype=sd) for _ in range(3))
    _partial_statistics_kernel[(c, splits)](x, count, mean, m2, c, s, per_channel, per_split,
                                            ACC=accumulator_dtype(x.dtype), BLOCK=BLOCK)
    # second step: Chan's merge of the splits, per channel
    total = count.sum(1)
    channel_mean = (count * mean).sum(1) / total
    var = (m2.sum(1) + (count * (mean - channel_mean[:, None]).square()).sum(1)) / total
    rstd = torch.rsqrt(var + eps)
    scale = rstd * weight.to(sd) if weight is not None else rstd
    shift = bias.to(sd) if bias is not None else torch.zeros_like(rstd)
    return _channel_affine(x, channel_mean, scale, shift), channel_mean, var, rstd


@_training_forward.register_fake
def _(x, weight, bias, eps):
    stats = x.new_empty(x.shape[1], dtype=stats_dtype(x.dtype))
    return torch.empty_like(x), stats, torch.empty_like(stats), torch.empty_like(stats)


@torch.library.custom_op("normlib::batch_norm_training_backward", mutates_args=())
def _training_backward(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], mean: torch.Tensor,
                       rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dy = dy.contiguous()
    c, s, per_channel, per_split, splits = _grid(x)
    sum_dy, sum_dy_xhat = (torch.empty(c, splits, device=x.device, dtype=mean.dtype) for _ in range(2))
    acc = accumulator_dtype(x.dtype)
    _partial_gradient_sums_kernel[(c, splits)](dy, x, mean, rstd, sum_dy, sum_dy_xhat, c, s, per_channel, per_split,
                                               ACC=acc, BLOCK=BLOCK)
    dbias, dweight = sum_dy.sum(1), sum_dy_xhat.sum(1)
    dx = torch.empty_like(x)
    _input_gradient_kernel[(c, splits)](dy, x, mean, rstd, weight if weight is not None else x, dbias / per_channel,
                                        dweight / per_channel, dx, c, s, per_channel, per_split,
                                        HAS_W=weight is not None, ACC=acc, BLOCK=BLOCK)
    dtype = weight.dtype if weight is not None else x.dtype
    return dx, dweight.to(dtype), dbias.to(dtype)


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
    """``(x - center[c]) * scale[c] + shift[c]`` for a contiguous ``(N, C, *)`` input (BatchNorm inference)."""
    return _channel_affine(x, center.contiguous(), scale.contiguous(), shift.contiguous())


@_channel_affine_op.register_fake
def _(x, center, scale, shift):
    return torch.empty_like(x)


def _affine_setup_context(ctx, inputs, output):
    x, center, scale, shift = inputs
    ctx.save_for_backward(x, center, scale)


def _affine_backward(ctx, dy):
    x, center, scale = ctx.saved_tensors
    dy = dy.contiguous()
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
    """Training-mode batch normalization of an ``(N, C, *)`` input with the Triton kernels.
    Returns ``(y, batch mean, biased batch variance)``, the statistics per channel in float32
    (float64 for float64 inputs), for the caller's running-statistics update. Differentiable.
    Derived in ``chapters/10_kernels.ipynb``."""
    check_input(x, "input", min_dim=2, weight=weight, bias=bias)
    check_values_per_channel(x, x.numel() // x.shape[1] if x.shape[1] else 0)
    y, mean, var, _ = _training_forward(x.contiguous(), weight, bias, float(eps))
    return y, mean, var


def batch_norm_inference(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                         weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                         eps: float = 1e-5) -> torch.Tensor:
    """Inference-mode batch normalization with running statistics: one elementwise pass
    ``(x - running_mean) * scale + bias`` with ``scale = weight / sqrt(running_var + eps)``
    (differentiable in ``input``, ``weight`` and ``bias``).
    Derived in ``chapters/10_kernels.ipynb``."""
    check_input(x, "input", min_dim=2, weight=weight, bias=bias)
    check_param(running_mean, "running_mean", (x.shape[1],), x)
    check_param(running_var, "running_var", (x.shape[1],), x)
    sd = stats_dtype(x.dtype)
    scale = torch.rsqrt(running_var.to(sd) + eps)
    if weight is not None:
        scale = scale * weight.to(sd)
    shift = bias.to(sd) if bias is not None else torch.zeros_like(scale)
    return _channel_affine_op(x.contiguous(), running_mean.to(sd), scale, shift)
