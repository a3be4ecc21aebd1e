"""GroupNorm (and InstanceNorm, ``num_groups = C``) for ``(N, C, *)`` inputs.

A program takes one (example, group), or a slice of its positions when there are too few
groups to fill the GPU (a diffusion UNet at batch 2 has 64 groups for 132 SMs). The group's
elements are addressed through the channel and position strides, so a contiguous (NCHW) and a
channels_last (NHWC) input are read in place; any other layout is made contiguous first.

Forward: statistics over ``[channels of the group] x [positions]`` tiles merged with Chan's
formula, then a second pass normalizes and applies the per-channel affine transform. With one
program per group, one kernel does both passes; with several slices per group, a first kernel
reduces each slice to (count, mean, squared deviations) and the normalize kernel merges its
group's slices. Backward, the same way: a first pass sums ``dy`` and ``dy * xhat`` per channel
(which gives both the group's two means and this example's share of ``dgamma``/``dbeta``,
written to an ``(N, C)`` buffer summed in a second step), a second pass writes ``dx``.

Derived in ``chapters/20_kernels.ipynb``.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from normlib.kernels._common import (accumulator_dtype, chan_merge, check_input, program_budget, stats_dtype,
                                     tile_statistics)

TILE = 1024        # elements per tile: [channels of a group (padded to a power of two)] x [positions]
MIN_SLICE = 4      # tiles per slice of a group's positions, at least


def _tile(channels_per_group: int, positions: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_S, num_warps): 8 elements per thread (4 warps in a full tile; larger tiles
    spill in the backward where loads are element by element), so that a thread's run of a
    contiguous row is 128 bits in 16-bit dtypes."""
    block_c = triton.next_power_of_2(channels_per_group)
    block_s = max(1, min(triton.next_power_of_2(positions), TILE // block_c))
    return block_c, block_s, max(1, min(4, block_c * block_s // 256))


def _slices(groups: int, positions: int, block_s: int, device: torch.device) -> tuple[int, int]:
    """(slices per group, tiles per slice): one slice while the groups alone give each SM a few
    programs, else enough slices of at least ``MIN_SLICE`` tiles to fill the program budget."""
    tiles = triton.cdiv(positions, block_s)
    budget = program_budget(device)
    slices = 1 if 2 * groups >= budget else max(1, min(triton.cdiv(budget, groups), tiles // MIN_SLICE))
    per_slice = triton.cdiv(tiles, slices)
    return triton.cdiv(tiles, per_slice), per_slice


@triton.jit
def _group(G, per_group, tiles_per_slice, S, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    # this program's example, its group's channels and mask, and its slice [first, last) of the
    # positions; per_group = C // G is an argument, so that Triton sees when it is a multiple of 16
    # (aligned, vectorizable channels_last rows)
    n = tl.program_id(0) // G
    lanes = tl.arange(0, BLOCK_C)
    first = tl.program_id(1) * tiles_per_slice * BLOCK_S
    return (n, (tl.program_id(0) % G) * per_group + lanes, lanes < per_group, first,
            tl.minimum(first + tiles_per_slice * BLOCK_S, S))


@triton.jit
def _offsets(base, channels, channel_mask, positions, S, stride_c, stride_s):
    offsets = base + channels[:, None].to(tl.int64) * stride_c + positions[None, :].to(tl.int64) * stride_s
    return offsets, channel_mask[:, None] & (positions[None, :] < S)


@triton.jit
def _statistics(X, base, channels, channel_mask, first, last, per_group, stride_c, stride_s,
                ACC: tl.constexpr, BLOCK_S: tl.constexpr):
    # count, mean and squared deviations of the group's positions [first, last)
    count = tl.zeros([], dtype=ACC)
    mean = tl.zeros([], dtype=ACC)
    m2 = tl.zeros([], dtype=ACC)
    for start in range(first, last, BLOCK_S):
        offsets, mask = _offsets(base, channels, channel_mask, start + tl.arange(0, BLOCK_S), last, stride_c, stride_s)
        x = tl.load(X + offsets, mask=mask, other=0.0).to(ACC)
        k = (per_group * tl.minimum(last - start, BLOCK_S)).to(ACC)
        tile_mean, tile_m2 = tile_statistics(x, mask, k)
        count, mean, m2 = chan_merge(count, mean, m2, k, tile_mean, tile_m2)
    return count, mean, m2


@triton.jit(do_not_specialize=["tiles_per_slice"])
def _statistics_kernel(X, Count, Mean, M2, S, G, per_group, tiles_per_slice, stride_n, stride_c, stride_s,
                       ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    # several slices per group: each slice's statistics, merged by the normalize kernel
    n, channels, channel_mask, first, last = _group(G, per_group, tiles_per_slice, S, BLOCK_C, BLOCK_S)
    count, mean, m2 = _statistics(X, n.to(tl.int64) * stride_n, channels, channel_mask, first, last, per_group,
                                  stride_c, stride_s, ACC, BLOCK_S)
    out = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    tl.store(Count + out, count)
    tl.store(Mean + out, mean)
    tl.store(M2 + out, m2)


@triton.jit
def _sigmoid(h):
    return 1.0 / (1.0 + tl.exp(-h))


@triton.jit
def _modulation(SC, SH, n, C, channels, channel_mask, ACC: tl.constexpr):
    # this example's (1 + scale) and shift per channel of the group
    at = n.to(tl.int64) * C + channels
    return (1.0 + tl.load(SC + at, mask=channel_mask, other=0.0).to(ACC),
            tl.load(SH + at, mask=channel_mask, other=0.0).to(ACC))


@triton.jit(do_not_specialize=["tiles_per_slice"])
def _forward_kernel(X, W, B, Y, Mean, Rstd, Count, PartialMean, M2, SC, SH, S, G, per_group, tiles_per_slice,
                    stride_n, stride_c, stride_s, eps,
                    SLICED: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_MOD: tl.constexpr,
                    SILU: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    n, channels, channel_mask, first, last = _group(G, per_group, tiles_per_slice, S, BLOCK_C, BLOCK_S)
    base = n.to(tl.int64) * stride_n
    if SLICED:   # merge the group's slices
        count = tl.zeros([], dtype=ACC)
        mean = tl.zeros([], dtype=ACC)
        m2 = tl.zeros([], dtype=ACC)
        for i in range(0, tl.num_programs(1)):
            at = tl.program_id(0) * tl.num_programs(1) + i
            count, mean, m2 = chan_merge(count, mean, m2, tl.load(Count + at), tl.load(PartialMean + at),
                                         tl.load(M2 + at))
    else:
        count, mean, m2 = _statistics(X, base, channels, channel_mask, 0, S, per_group, stride_c, stride_s,
                                      ACC, BLOCK_S)
    rstd = 1.0 / tl.sqrt(m2 / count + eps)
    if tl.program_id(1) == 0:
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
    if HAS_MOD:   # a diffusion UNet's time embedding: y * (1 + scale) + shift, per example and channel
        gain, offset = _modulation(SC, SH, n, G * per_group, channels, channel_mask, ACC)
        scale, shift = scale * gain, shift * gain + offset
    for start in range(first, last, BLOCK_S):
        offsets, mask = _offsets(base, channels, channel_mask, start + tl.arange(0, BLOCK_S), last, stride_c, stride_s)
        x = tl.load(X + offsets, mask=mask, other=0.0).to(ACC)
        # (x - mean) * scale, not x * scale - mean * scale: no cancellation when |mean| >> std
        y = (x - mean) * scale[:, None] + shift[:, None]
        if SILU:
            y = y * _sigmoid(y)
        tl.store(Y + offsets, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _through_silu(dy, xhat, affine_scale, affine_shift, SILU: tl.constexpr):
    # the gradient at the SiLU's input h = xhat * affine_scale + affine_shift (the norm's affine
    # map and the modulation, per channel): dy * sigmoid(h) * (1 + h * (1 - sigmoid(h)))
    if SILU:
        h = xhat * affine_scale[:, None] + affine_shift[:, None]
        sigmoid = _sigmoid(h)
        dy = dy * sigmoid * (1.0 + h * (1.0 - sigmoid))
    return dy


@triton.jit
def _gradient_sums(DY, X, base, dy_base, channels, channel_mask, first, last, mean, rstd, affine_scale,
                   affine_shift, stride_c, stride_s, dy_stride_c, dy_stride_s, SILU: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    # per channel of the group: sum(dh) and sum(dh * xhat) over the positions [first, last), dh
    # the gradient at the affine map's output (through the SiLU, if any)
    sum_dy = tl.zeros([BLOCK_C], dtype=ACC)
    sum_dy_xhat = tl.zeros([BLOCK_C], dtype=ACC)
    for start in range(first, last, BLOCK_S):
        positions = start + tl.arange(0, BLOCK_S)
        offsets, mask = _offsets(base, channels, channel_mask, positions, last, stride_c, stride_s)
        dy_offsets, _ = _offsets(dy_base, channels, channel_mask, positions, last, dy_stride_c, dy_stride_s)
        x = tl.load(X + offsets, mask=mask, other=0.0).to(ACC)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        dy = _through_silu(tl.load(DY + dy_offsets, mask=mask, other=0.0).to(ACC), xhat, affine_scale,
                           affine_shift, SILU)
        sum_dy += tl.sum(dy, axis=1)
        sum_dy_xhat += tl.sum(dy * xhat, axis=1)
    return sum_dy, sum_dy_xhat


@triton.jit
def _affine(W, B, SC, SH, n, C, channels, channel_mask, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
            HAS_MOD: tl.constexpr, SILU: tl.constexpr, ACC: tl.constexpr):
    # per channel of the group: the norm's gain and shift, and the modulation's (1 + scale) and shift
    w = tl.load(W + channels, mask=channel_mask, other=0.0).to(ACC) if HAS_W else tl.where(channel_mask, 1.0, 0.0).to(ACC)
    # the shift only where the backward needs the affine map's output (SiLU, modulation)
    b = tl.load(B + channels, mask=channel_mask, other=0.0).to(ACC) if HAS_B and (SILU or HAS_MOD) else tl.zeros_like(w)
    if HAS_MOD:
        gain, offset = _modulation(SC, SH, n, C, channels, channel_mask, ACC)
    else:
        gain, offset = tl.where(channel_mask, 1.0, 0.0).to(ACC), tl.zeros_like(w)
    return w, b, gain, offset


@triton.jit(do_not_specialize=["tiles_per_slice"])
def _gradient_sums_kernel(DY, X, W, B, SC, SH, Mean, Rstd, SumDy, SumDyXhat, C, S, G, per_group, tiles_per_slice,
                          stride_n, stride_c, stride_s, dy_stride_n, dy_stride_c, dy_stride_s,
                          HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_MOD: tl.constexpr, SILU: tl.constexpr,
                          ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    # several slices per group: each slice's per-channel sums, added up by the backward kernel
    n, channels, channel_mask, first, last = _group(G, per_group, tiles_per_slice, S, BLOCK_C, BLOCK_S)
    w, b, gain, offset = _affine(W, B, SC, SH, n, C, channels, channel_mask, HAS_W, HAS_B, HAS_MOD, SILU, ACC)
    sum_dy, sum_dy_xhat = _gradient_sums(DY, X, n.to(tl.int64) * stride_n, n.to(tl.int64) * dy_stride_n, channels,
                                         channel_mask, first, last, tl.load(Mean + tl.program_id(0)),
                                         tl.load(Rstd + tl.program_id(0)), w * gain, b * gain + offset, stride_c,
                                         stride_s, dy_stride_c, dy_stride_s, SILU, ACC, BLOCK_C, BLOCK_S)
    out = tl.program_id(1).to(tl.int64) * tl.num_programs(0) * BLOCK_C + tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    tl.store(SumDy + out, sum_dy)
    tl.store(SumDyXhat + out, sum_dy_xhat)


@triton.jit(do_not_specialize=["tiles_per_slice"])
def _backward_kernel(DY, X, W, B, SC, SH, Mean, Rstd, DX, DW_PARTIAL, DB_PARTIAL, DSC, DSH, SumDy, SumDyXhat, C, S,
                     G, per_group, tiles_per_slice, group_size, stride_n, stride_c, stride_s, dy_stride_n, dy_stride_c,
                     dy_stride_s, SLICED: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                     HAS_MOD: tl.constexpr, SILU: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
                     BLOCK_S: tl.constexpr):
    n, channels, channel_mask, first, last = _group(G, per_group, tiles_per_slice, S, BLOCK_C, BLOCK_S)
    base = n.to(tl.int64) * stride_n
    dy_base = n.to(tl.int64) * dy_stride_n
    mean = tl.load(Mean + tl.program_id(0))
    rstd = tl.load(Rstd + tl.program_id(0))
    w, b, gain, offset = _affine(W, B, SC, SH, n, C, channels, channel_mask, HAS_W, HAS_B, HAS_MOD, SILU, ACC)
    if SLICED:   # add up the group's slices
        sum_dy = tl.zeros([BLOCK_C], dtype=ACC)
        sum_dy_xhat = tl.zeros([BLOCK_C], dtype=ACC)
        for i in range(0, tl.num_programs(1)):
            at = i * tl.num_programs(0) * BLOCK_C + tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
            sum_dy += tl.load(SumDy + at)
            sum_dy_xhat += tl.load(SumDyXhat + at)
    else:
        sum_dy, sum_dy_xhat = _gradient_sums(DY, X, base, dy_base, channels, channel_mask, 0, S, mean, rstd,
                                             w * gain, b * gain + offset, stride_c, stride_s, dy_stride_c,
                                             dy_stride_s, SILU, ACC, BLOCK_C, BLOCK_S)
    if tl.program_id(1) == 0:
        partial = n.to(tl.int64) * C + channels
        if HAS_MOD:   # this example's dshift = sum(dh), dscale = sum(dh * (xhat * gamma + beta))
            tl.store(DSH + partial, sum_dy, mask=channel_mask)
            tl.store(DSC + partial, w * sum_dy_xhat + b * sum_dy, mask=channel_mask)
        # this example's share of dgamma and dbeta (summed over examples in a second step)
        tl.store(DW_PARTIAL + partial, gain * sum_dy_xhat, mask=channel_mask)
        tl.store(DB_PARTIAL + partial, gain * sum_dy, mask=channel_mask)
    w = w * gain   # the gradient reaching the norm is (1 + scale) times the modulation's
    mean_g = tl.sum(w * sum_dy, axis=0) / group_size             # mean of g = gamma * dy over the group
    mean_g_xhat = tl.sum(w * sum_dy_xhat, axis=0) / group_size   # mean of g * xhat
    for start in range(first, last, BLOCK_S):
        positions = start + tl.arange(0, BLOCK_S)
        offsets, mask = _offsets(base, channels, channel_mask, positions, last, stride_c, stride_s)
        dy_offsets, _ = _offsets(dy_base, channels, channel_mask, positions, last, dy_stride_c, dy_stride_s)
        x = tl.load(X + offsets, mask=mask, other=0.0).to(ACC)
        xhat = (x - mean) * rstd
        dy = _through_silu(tl.load(DY + dy_offsets, mask=mask, other=0.0).to(ACC), xhat, w, b * gain + offset, SILU)
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
             eps: float, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor], silu: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, mean, rstd)``; with ``scale``/``shift`` (``(N, C)``) the modulation after the norm, with
    ``silu`` the SiLU after that."""
    n, c = x.shape[:2]
    s = x[0, 0].numel() if n else 0
    y = torch.empty_like(x)   # keeps x's memory format
    sd = stats_dtype(x.dtype)
    mean = torch.empty(n * num_groups, device=x.device, dtype=sd)
    rstd = torch.empty_like(mean)
    if n and s:
        block_c, block_s, num_warps = _tile(c // num_groups, s)
        slices, tiles_per_slice = _slices(n * num_groups, s, block_s, x.device)
        grid, shape = (n * num_groups, slices), (s, num_groups, c // num_groups, tiles_per_slice, *_strides(x))
        tile = dict(ACC=accumulator_dtype(x.dtype), BLOCK_C=block_c, BLOCK_S=block_s, num_warps=num_warps)
        partials = [torch.empty(n * num_groups * slices, device=x.device, dtype=sd) for _ in range(3)]
        if slices > 1:
            _statistics_kernel[grid](x, *partials, *shape, **tile)
        _forward_kernel[grid](x, weight if weight is not None else x, bias if bias is not None else x, y, mean, rstd,
                              *partials, scale if scale is not None else x, shift if shift is not None else x,
                              *shape, eps, SLICED=slices > 1, HAS_W=weight is not None, HAS_B=bias is not None,
                              HAS_MOD=scale is not None, SILU=silu, **tile)
    return y, mean, rstd


@_forward.register_fake
def _(x, weight, bias, num_groups, eps, scale, shift, silu):
    stats = x.new_empty(x.shape[0] * num_groups, dtype=stats_dtype(x.dtype))
    return torch.empty_like(x), stats, torch.empty_like(stats)


@torch.library.custom_op("normlib::group_norm_backward", mutates_args=())
def _backward(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
              scale: Optional[torch.Tensor], shift: Optional[torch.Tensor], mean: torch.Tensor, rstd: torch.Tensor,
              num_groups: int, silu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dweight, dbias, dscale or empty, dshift or empty)``."""
    n, c = x.shape[:2]
    s = x[0, 0].numel() if n else 0
    dy = _layout(dy)   # read by its own strides, which may differ from x's
    dx = torch.empty_like(x)
    modulated = scale is not None
    dw_partial, db_partial = (torch.zeros(n, c, device=x.device, dtype=mean.dtype) for _ in range(2))
    dscale, dshift = (torch.zeros(n, c, device=x.device, dtype=mean.dtype) if modulated else mean.new_empty(0)
                      for _ in range(2))
    if n and s:
        per_group = c // num_groups
        block_c, block_s, num_warps = _tile(per_group, s)
        slices, tiles_per_slice = _slices(n * num_groups, s, block_s, x.device)
        grid = (n * num_groups, slices)
        strides = (*_strides(x), *_strides(dy))
        tile = dict(ACC=accumulator_dtype(x.dtype), BLOCK_C=block_c, BLOCK_S=block_s, num_warps=num_warps)
        flags = dict(HAS_W=weight is not None, HAS_B=bias is not None, HAS_MOD=modulated, SILU=silu)
        params = tuple(t if t is not None else x for t in (weight, bias, scale, shift))
        sums = [torch.empty(slices * n * num_groups * block_c, device=x.device, dtype=mean.dtype) for _ in range(2)]
        if slices > 1:
            _gradient_sums_kernel[grid](dy, x, *params, mean, rstd, *sums, c, s, num_groups, per_group,
                                        tiles_per_slice, *strides, **flags, **tile)
        _backward_kernel[grid](dy, x, *params, mean, rstd, dx, dw_partial, db_partial,
                               *(t if t.numel() else mean for t in (dscale, dshift)), *sums, c, s, num_groups,
                               per_group, tiles_per_slice, per_group * s, *strides, SLICED=slices > 1, **flags, **tile)
    dtype = weight.dtype if weight is not None else x.dtype
    if modulated:
        dscale, dshift = dscale.to(scale.dtype), dshift.to(shift.dtype)
    return dx, dw_partial.sum(0).to(dtype), db_partial.sum(0).to(dtype), dscale, dshift


@_backward.register_fake
def _(dy, x, weight, bias, scale, shift, mean, rstd, num_groups, silu):
    dtype = weight.dtype if weight is not None else x.dtype
    return (torch.empty_like(x), x.new_empty(x.shape[1], dtype=dtype), x.new_empty(x.shape[1], dtype=dtype),
            torch.empty_like(scale) if scale is not None else mean.new_empty(0),
            torch.empty_like(shift) if shift is not None else mean.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, weight, bias, num_groups, eps, scale, shift, silu = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, scale, shift, mean, rstd)
    ctx.num_groups, ctx.silu = num_groups, silu


def _backward_formula(ctx, dy, dmean, drstd):
    x, weight, bias, scale, shift, mean, rstd = ctx.saved_tensors
    dx, dw, db, dscale, dshift = _backward(dy, x, weight, bias, scale, shift, mean, rstd, ctx.num_groups, ctx.silu)
    modulated = scale is not None
    return (dx, dw if weight is not None else None, db if bias is not None else None, None, None,
            dscale if modulated else None, dshift if modulated else None, None)


_forward.register_autograd(_backward_formula, setup_context=_setup_context)


def group_norm(x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None, eps: float = 1e-5, scale: Optional[torch.Tensor] = None,
               shift: Optional[torch.Tensor] = None, silu: bool = False) -> torch.Tensor:
    """Group normalization of an ``(N, C, *)`` input with the Triton kernels (contiguous or
    channels_last inputs are read in place; the output has the input's memory format), then
    optionally a diffusion UNet's ``* (1 + scale) + shift`` (``(N, C)``) and SiLU, fused.
    Differentiable; a ``torch.library`` custom op. Derived in ``chapters/20_kernels.ipynb``."""
    check_input(x, "input", min_dim=2, weight=weight, bias=bias)
    c = x.shape[1]
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 or c % num_groups:
        raise ValueError(f"num_groups: expected a positive divisor of the number of channels {c}, got {num_groups!r}")
    scale, shift = (t.contiguous() if t is not None else None for t in (scale, shift))
    y, _, _ = _forward(_layout(x), weight, bias, num_groups, float(eps), scale, shift, bool(silu))
    return y
