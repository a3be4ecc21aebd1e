"""GroupNorm (and InstanceNorm, ``num_groups = C``) for ``(N, C, *)`` inputs.

One program per (example, group). The group's elements are addressed through the channel and
position strides, so a contiguous (NCHW) and a channels_last (NHWC) input are read in place;
any other layout is made contiguous first. Forward: statistics over ``[channels of the group] x
[positions]`` tiles merged with Chan's formula, then a second pass normalizes and applies the
per-channel affine transform. Backward: a first pass sums ``dy`` and ``dy * xhat`` per channel
(which gives both the group's two means and this example's share of ``dgamma``/``dbeta``,
written to an ``(N, C)`` buffer summed in a second step), a second pass writes ``dx``.

Derived in ``chapters/10_kernels.ipynb``.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from normlib.kernels._common import accumulator_dtype, chan_merge, check_input, stats_dtype, tile_statistics

TILE = 2048           # elements per tile: [channels of a group (padded to a power of two)] x [positions]
TILE_FLOAT64 = 1024   # float64 tiles are smaller (the same registers)


def _tile(channels_per_group: int, positions: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_S, num_warps): 16 elements per thread in a full tile (4 warps: larger
    tiles, or 8 warps, spill in the backward), at least 8 in a small one, so that a thread's
    run of a contiguous row is 128 bits in 16-bit dtypes."""
    tile = TILE_FLOAT64 if dtype == torch.float64 else TILE
    block_c = triton.next_power_of_2(channels_per_group)
    block_s = max(1, min(triton.next_power_of_2(positions), tile // block_c))
    return block_c, block_s, max(1, min(4, block_c * block_s // 256))


@triton.jit
def _group(G, per_group, BLOCK_C: tl.constexpr):
    # this program's example, and the group's channel indices and mask; per_group = C // G is an
    # argument, so that Triton sees when it is a multiple of 16 (aligned, vectorizable channels_last rows)
    n = tl.program_id(0) // G
    lanes = tl.arange(0, BLOCK_C)
    return n, (tl.program_id(0) % G) * per_group + lanes, lanes < per_group


@triton.jit
def _forward_kernel(X, W, B, Y, Mean, Rstd, C, S, G, per_group, stride_n, stride_c, stride_s, eps,
                    HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    n, channels, channel_mask = _group(G, per_group, BLOCK_C)
    base = n.to(tl.int64) * stride_n
    count = tl.zeros([], dtype=ACC)
    mean = tl.zeros([], dtype=ACC)
    m2 = tl.zeros([], dtype=ACC)
    for start in range(0, S, BLOCK_S):
        positions = start + tl.arange(0, BLOCK_S)
        mask = channel_mask[:, None] & (positions[None, :] < S)
        offsets = base + channels[:, None].to(tl.int64) * stride_c + positions[None, :].to(tl.int64) * stride_s
        x = tl.load(X + offsets, mask=mask, other=0.0).to(ACC)
        k = (per_group * tl.minimum(S - start, BLOCK_S)).to(ACC)
        tile_mean, tile_m2 = tile_statistics(x, mask, k)
        count, mean, m2 = chan_merge(count, mean, m2, k, tile_mean, tile_m2)
    rstd = 1.0 / tl.sqrt(m2 / count + eps)
    tl.store(Mean + tl.program_id(0), mean)
    tl.store(Rstd + tl.program_id(0), rstd)
    if HAS_W:
        scale = tl.load(W + channels, mask=channel_mask, other=0.0).to(ACC) * rstd
    else:
        scale = tl.zeros([BLOCK_C], dtype=ACC) + rstd
    if HAS_B:
        shift = tl.load(B + channels, mask=channel_mask, other=0.0).to(ACC)
    else:
        shift = tl.zeros([BLOCK_C], dtype=ACC)
    for start in range(0, S, BLOCK_S):
        positions = start + tl.arange(0, BLOCK_S)
        mask = channel_mask[:, None] & (positions[None, :] < S)
        offsets = base + channels[:, None].to(tl.int64) * stride_c + positions[None, :].to(tl.int64) * stride_s
        x = tl.load(X + offsets, mask=mask, other=0.0).to(ACC)
        # (x - mean) * scale, not x * scale - mean * scale: no cancellation when |mean| >> std
        tl.store(Y + offsets, ((x - mean) * scale[:, None] + shift[:, None]).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(DY, X, W, Mean, Rstd, DX, DW_PARTIAL, DB_PARTIAL, C, S, G, per_group, group_size,
                     stride_n, stride_c, stride_s, dy_stride_n, dy_stride_c, dy_stride_s,
                     HAS_W: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    n, channels, channel_mask = _group(G, per_group, BLOCK_C)
    base = n.to(tl.int64) * stride_n
    dy_base = n.to(tl.int64) * dy_stride_n
    mean = tl.load(Mean + tl.program_id(0))
    rstd = tl.load(Rstd + tl.program_id(0))
    sum_dy = tl.zeros([BLOCK_C], dtype=ACC)
    sum_dy_xhat = tl.zeros([BLOCK_C], dtype=ACC)
    for start in range(0, S, BLOCK_S):
        positions = start + tl.arange(0, BLOCK_S)
        mask = channel_mask[:, None] & (positions[None, :] < S)
        x = tl.load(X + base + channels[:, None].to(tl.int64) * stride_c + positions[None, :].to(tl.int64) * stride_s,
                    mask=mask, other=0.0).to(ACC)
        dy = tl.load(DY + dy_base + channels[:, None].to(tl.int64) * dy_stride_c
                     + positions[None, :].to(tl.int64) * dy_stride_s, mask=mask, other=0.0).to(ACC)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        sum_dy += tl.sum(dy, axis=1)
        sum_dy_xhat += tl.sum(dy * xhat, axis=1)
    # this example's share of dgamma and dbeta (summed over examples in a second step)
    partial = n.to(tl.int64) * C + channels
    tl.store(DW_PARTIAL + partial, sum_dy_xhat, mask=channel_mask)
    tl.store(DB_PARTIAL + partial, sum_dy, mask=channel_mask)
    if HAS_W:
        w = tl.load(W + channels, mask=channel_mask, other=0.0).to(ACC)
    else:
        w = tl.where(channel_mask, 1.0, 0.0).to(ACC)
    mean_g = tl.sum(w * sum_dy, axis=0) / group_size             # mean of g = gamma * dy over the group
    mean_g_xhat = tl.sum(w * sum_dy_xhat, axis=0) / group_size   # mean of g * xhat
    for start in range(0, S, BLOCK_S):
        positions = start + tl.arange(0, BLOCK_S)
        mask = channel_mask[:, None] & (positions[None, :] < S)
        offsets = base + channels[:, None].to(tl.int64) * stride_c + positions[None, :].to(tl.int64) * stride_s
        x = tl.load(X + offsets, mask=mask, other=0.0).to(ACC)
        dy = tl.load(DY + dy_base + channels[:, None].to(tl.int64) * dy_stride_c
                     + positions[None, :].to(tl.int64) * dy_stride_s, mask=mask, other=0.0).to(ACC)
        xhat = (x - mean) * rstd
        dx = (w[:, None] * dy - mean_g - xhat * mean_g_xhat) * rstd
        tl.store(DX + offsets, dx.to(DX.dtype.element_ty), mask=mask)


def _layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself if it is contiguous or channels_last (read by strides), else a contiguous copy."""
    if x.is_contiguous():
        return x
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return x
    return x.contiguous()


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    """(example, channel, position) strides of an input read as (N, C, S)."""
    if x.dim() == 2 or x.is_contiguous():
        return x.stride(0), x[0, 0].numel(), 1
    return x.stride(0), 1, x.shape[1]   # channels_last: positions are C apart


@torch.library.custom_op("normlib::group_norm_forward", mutates_args=())
def _forward(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], num_groups: int,
             eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, c = x.shape[:2]
    s = x[0, 0].numel() if n else 0
    y = torch.empty_like(x)   # keeps x's memory format
    mean = torch.empty(n * num_groups, device=x.device, dtype=stats_dtype(x.dtype))
    rstd = torch.empty_like(mean)
    if n:
        block_c, block_s, num_warps = _tile(c // num_groups, s, x.dtype)
        _forward_kernel[(n * num_groups,)](
            x, weight if weight is not None else x, bias if bias is not None else x, y, mean, rstd, c, s, num_groups, c // num_groups,
            *_strides(x), eps, HAS_W=weight is not None, HAS_B=bias is not None, ACC=accumulator_dtype(x.dtype),
            BLOCK_C=block_c, BLOCK_S=block_s, num_warps=num_warps)
    return y, mean, rstd


@_forward.register_fake
def _(x, weight, bias, num_groups, eps):
    stats = x.new_empty(x.shape[0] * num_groups, dtype=stats_dtype(x.dtype))
    return torch.empty_like(x), stats, torch.empty_like(stats)


@torch.library.custom_op("normlib::group_norm_backward", mutates_args=())
def _backward(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], mean: torch.Tensor,
              rstd: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, c = x.shape[:2]
    s = x[0, 0].numel() if n else 0
    dy = _layout(dy)   # read by its own strides, which may differ from x's
    dx = torch.empty_like(x)
    dw_partial = torch.zeros(n, c, device=x.device, dtype=mean.dtype)
    db_partial = torch.zeros(n, c, device=x.device, dtype=mean.dtype)
    if n:
        block_c, block_s, num_warps = _tile(c // num_groups, s, x.dtype)
        _backward_kernel[(n * num_groups,)](
            dy, x, weight if weight is not None else x, mean, rstd, dx, dw_partial, db_partial, c, s, num_groups,
            c // num_groups, c // num_groups * s,
            *_strides(x), *_strides(dy), HAS_W=weight is not None, ACC=accumulator_dtype(x.dtype),
            BLOCK_C=block_c, BLOCK_S=block_s, num_warps=num_warps)
    dtype = weight.dtype if weight is not None else x.dtype
    return dx, dw_partial.sum(0).to(dtype), db_partial.sum(0).to(dtype)


@_backward.register_fake
def _(dy, x, weight, mean, rstd, num_groups):
    dtype = weight.dtype if weight is not None else x.dtype
    return torch.empty_like(x), x.new_empty(x.shape[1], dtype=dtype), x.new_empty(x.shape[1], dtype=dtype)


def _setup_context(ctx, inputs, output):
    x, weight, bias, num_groups, eps = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.num_groups, ctx.has_bias = num_groups, bias is not None


def _backward_formula(ctx, dy, dmean, drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = _backward(dy, x, weight, mean, rstd, ctx.num_groups)
    return dx, dw if weight is not None else None, db if ctx.has_bias else None, None, None


_forward.register_autograd(_backward_formula, setup_context=_setup_context)


def group_norm(x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None, eps: float = 1e-5) -> torch.Tensor:
    """Group normalization of an ``(N, C, *)`` input with the Triton kernels (contiguous or
    channels_last inputs are read in place; the output has the input's memory format).
    Differentiable; a ``torch.library`` custom op. Derived in ``chapters/10_kernels.ipynb``."""
    check_input(x, "input", min_dim=2, weight=weight, bias=bias)
    c = x.shape[1]
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 or c % num_groups:
        raise ValueError(f"num_groups: expected a positive divisor of the number of channels {c}, got {num_groups!r}")
    y, _, _ = _forward(_layout(x), weight, bias, num_groups, float(eps))
    return y
