"""Dynamic Tanh, ``weight * tanh(alpha * x) + bias`` (Zhu et al. 2025), as one Triton kernel
each way.

The input is seen as a matrix of ``R`` rows of ``K`` elements: ``(M, C)`` with the channel the
column (``channels_last``), or ``(N * C, L)`` with the channel the row modulo ``C``
(``(N, C, *)``). The forward is elementwise: one read, one write, with tanh in float32 (float64
for float64 inputs). The backward reads x and dy once, writes dx, and sums the parameter
gradients in a grid of (blocks of rows) x (blocks of columns): each program writes its partial
sums of ``dy * tanh``, ``dy`` and ``dy * weight * x * (1 - tanh^2)`` (for alpha) to a bounded
buffer that torch then reduces; no atomics, so the result is deterministic.

Derived in ``chapters/20_kernels.ipynb``; DyT itself in ``chapters/15_dyt.ipynb``.
"""

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from normlib.kernels._common import accumulator_dtype, program_budget, stats_dtype

TILE = 1024           # elements per program (per step of the backward): 8 per thread of 4 warps
BLOCK_COLUMNS = 512   # columns per backward program; more rows per tile when the rows are shorter


def _matrix(x: torch.Tensor, channels_last: bool) -> tuple[int, int, int]:
    """(R, K, C): rows, row length and channels of the view the kernels take."""
    channels = x.shape[-1] if channels_last else x.shape[1]
    if channels_last:
        return x.numel() // max(1, channels), channels, channels
    return x.shape[0] * channels, math.prod(x.shape[2:]), channels


@triton.jit
def _series(p, s, c, ACC: tl.constexpr):
    # one Horner step, the coefficient made in the accumulator dtype (a float literal is float32)
    return p * s + tl.full([], c, ACC)


@triton.jit
def _tanh(z, ACC: tl.constexpr):
    """tanh without cancellation: (1 - e) / (1 + e) with e = exp(-2|z|) where |z| >= 1/4 (1 - e
    is then within 1.5 ulp), its Taylor series to z^23 below (truncation < 1e-19 relative)."""
    a = tl.abs(z)
    e = tl.exp(-2.0 * a)
    large = (1.0 - e) / (1.0 + e)
    s = a * a
    p = tl.full([], -113927491862 / 2900518163668125, ACC)
    p = _series(p, s, 18888466084 / 194896477400625, ACC)
    p = _series(p, s, -443861162 / 1856156927625, ACC)
    p = _series(p, s, 6404582 / 10854718875, ACC)
    p = _series(p, s, -929569 / 638512875, ACC)
    p = _series(p, s, 21844 / 6081075, ACC)
    p = _series(p, s, -1382 / 155925, ACC)
    p = _series(p, s, 62 / 2835, ACC)
    p = _series(p, s, -17 / 315, ACC)
    p = _series(p, s, 2 / 15, ACC)
    p = _series(p, s, -1 / 3, ACC)
    p = _series(p, s, 1.0, ACC)
    t = tl.where(a < 0.25, a * p, large)
    return tl.where(z < 0, -t, t)


@triton.jit
def _tile(X, Alpha, W, row_start, col_start, R, K, C, CHANNELS_LAST: tl.constexpr, HAS_W: tl.constexpr,
          ACC: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    # a tile's rows, columns, mask, offsets, x, tanh(alpha * x) and the weight it meets
    rows = row_start + tl.arange(0, ROWS)
    cols = col_start + tl.arange(0, BLOCK_K)
    mask = (rows < R)[:, None] & (cols < K)[None, :]
    offsets = rows.to(tl.int64)[:, None] * K + cols[None, :]
    x = tl.load(X + offsets, mask=mask, other=0.0).to(ACC)
    t = _tanh(tl.load(Alpha).to(ACC) * x, ACC)
    if HAS_W:
        if CHANNELS_LAST:
            w = tl.load(W + cols, mask=cols < K, other=0.0).to(ACC)[None, :]
        else:
            w = tl.load(W + rows % C, mask=rows < R, other=0.0).to(ACC)[:, None]
    else:
        w = 1.0
    return rows, cols, mask, offsets, x, t, w


@triton.jit(do_not_specialize=["total_units"])
def _forward_kernel(X, Alpha, W, B, Y, total_units, K, C, CHANNELS_LAST: tl.constexpr, HAS_W: tl.constexpr,
                    HAS_B: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, ALIGN: tl.constexpr):
    # elementwise over the flat tensor (full-width loads whatever the row length); the channel
    # of element i is i mod C (channels_last) or (i div K) mod C
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < total_units * ALIGN   # Triton sees that the mask is uniform over ALIGN elements
    x = tl.load(X + offsets, mask=mask, other=0.0).to(ACC)
    y = _tanh(tl.load(Alpha).to(ACC) * x, ACC)
    channel = offsets % C if CHANNELS_LAST else (offsets // K) % C
    if HAS_W:
        y = y * tl.load(W + channel, mask=mask, other=0.0).to(ACC)
    if HAS_B:
        y = y + tl.load(B + channel, mask=mask, other=0.0).to(ACC)
    tl.store(Y + offsets, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["R", "rows_per_program"])
def _backward_kernel(DY, X, Alpha, W, DX, DW_PARTIAL, DB_PARTIAL, DALPHA_PARTIAL, R, row_units, C, rows_per_program,
                     CHANNELS_LAST: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACC: tl.constexpr,
                     ROWS: tl.constexpr, BLOCK_K: tl.constexpr, ALIGN: tl.constexpr):
    K = row_units * ALIGN   # the row length; Triton sees that it is a multiple of ALIGN
    # program (i, j): rows [i * rows_per_program, ...) of the columns of block j
    first = tl.program_id(0) * rows_per_program
    last = tl.minimum(first + rows_per_program, R)
    col_start = tl.program_id(1) * BLOCK_K
    alpha = tl.load(Alpha).to(ACC)
    dw = tl.zeros([BLOCK_K], dtype=ACC)   # channels_last: per column
    db = tl.zeros([BLOCK_K], dtype=ACC)
    dalpha = tl.zeros([BLOCK_K], dtype=ACC)
    for start in range(first, last, ROWS):
        rows, cols, mask, offsets, x, t, w = _tile(X, Alpha, W, start, col_start, last, K, C, CHANNELS_LAST, HAS_W,
                                                   ACC, ROWS, BLOCK_K)
        dy = tl.load(DY + offsets, mask=mask, other=0.0).to(ACC)
        dz = dy * w * (1.0 - t * t)          # the gradient at alpha * x
        tl.store(DX + offsets, (dz * alpha).to(DX.dtype.element_ty), mask=mask)
        dalpha += tl.sum(dz * x, axis=0)
        if CHANNELS_LAST:
            dw += tl.sum(dy * t, axis=0)
            db += tl.sum(dy, axis=0)
        else:
            # channels-first: the channel is the row, so each row's sums go out on their own
            partial = tl.program_id(1).to(tl.int64) * R + rows
            if HAS_W:
                tl.store(DW_PARTIAL + partial, tl.sum(dy * t, axis=1), mask=rows < last)
            if HAS_B:
                tl.store(DB_PARTIAL + partial, tl.sum(dy, axis=1), mask=rows < last)
    program = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    tl.store(DALPHA_PARTIAL + program, tl.sum(dalpha, axis=0))
    if CHANNELS_LAST:
        cols = col_start + tl.arange(0, BLOCK_K)
        partial = tl.program_id(0).to(tl.int64) * K + cols
        if HAS_W:
            tl.store(DW_PARTIAL + partial, dw, mask=cols < K)
        if HAS_B:
            tl.store(DB_PARTIAL + partial, db, mask=cols < K)


def _tile_shape(k: int, dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_K, ROWS) of the backward: up to 512 columns, rows enough for a tile of ``TILE``
    elements (half as many for float64), so that nothing spills."""
    tile = TILE // 2 if dtype == torch.float64 else TILE
    block_k = min(BLOCK_COLUMNS, triton.next_power_of_2(max(1, k)))
    return block_k, max(1, tile // block_k)


def _alignment(k: int, dtype: torch.dtype) -> int:
    # the largest power of two up to 16 bytes' worth of elements dividing a length
    align = max(1, 16 // dtype.itemsize)
    while k % align:
        align //= 2
    return align


@torch.library.custom_op("normlib::dyt_forward", mutates_args=())
def _forward(x: torch.Tensor, alpha: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
             channels_last: bool) -> torch.Tensor:
    """``weight * tanh(alpha * x) + bias`` for a contiguous ``x``."""
    y = torch.empty_like(x)
    r, k, c = _matrix(x, channels_last)
    if x.numel() == 0:
        return y
    block = TILE // 2 if x.dtype == torch.float64 else TILE
    align = _alignment(x.numel(), x.dtype)
    _forward_kernel[(triton.cdiv(x.numel(), block),)](
        x, alpha, weight if weight is not None else x, bias if bias is not None else x, y, x.numel() // align, k, c,
        CHANNELS_LAST=channels_last, HAS_W=weight is not None, HAS_B=bias is not None,
        ACC=accumulator_dtype(x.dtype), BLOCK=block, ALIGN=align, num_warps=4)
    return y


@_forward.register_fake
def _(x, alpha, weight, bias, channels_last):
    return torch.empty_like(x)


@torch.library.custom_op("normlib::dyt_backward", mutates_args=())
def _backward(dy: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, weight: Optional[torch.Tensor], has_bias: bool,
              channels_last: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dalpha, dweight or empty, dbias or empty)``."""
    dy = dy.contiguous()
    dx = torch.empty_like(x)
    r, k, c = _matrix(x, channels_last)
    sd = stats_dtype(x.dtype)
    block_k, rows = _tile_shape(k, x.dtype)
    align = _alignment(k, x.dtype)
    col_blocks = triton.cdiv(max(1, k), block_k)
    row_programs = max(1, min(triton.cdiv(max(1, r), rows), program_budget(x.device) // col_blocks))
    width = k if channels_last else r
    length = row_programs if channels_last else col_blocks
    dw_partial = torch.zeros(length, width, device=x.device, dtype=sd)
    db_partial = torch.zeros(length, width, device=x.device, dtype=sd)
    dalpha_partial = torch.zeros(row_programs * col_blocks, device=x.device, dtype=sd)
    if x.numel():
        _backward_kernel[(row_programs, col_blocks)](
            dy, x, alpha, weight if weight is not None else x, dx, dw_partial, db_partial, dalpha_partial, r,
            k // align, c, triton.cdiv(r, row_programs), CHANNELS_LAST=channels_last, HAS_W=weight is not None,
            HAS_B=has_bias, ACC=accumulator_dtype(x.dtype), ROWS=rows, BLOCK_K=block_k, ALIGN=align, num_warps=4)

    def per_channel(partial):
        summed = partial.sum(0)
        return summed if channels_last else summed.reshape(-1, c).sum(0)

    dweight = per_channel(dw_partial).to(weight.dtype) if weight is not None else x.new_empty(0)
    dbias = per_channel(db_partial).to(x.dtype if weight is None else weight.dtype) if has_bias else x.new_empty(0)
    return dx, dalpha_partial.sum().reshape(alpha.shape).to(alpha.dtype), dweight, dbias


@_backward.register_fake
def _(dy, x, alpha, weight, has_bias, channels_last):
    c = x.shape[-1] if channels_last else x.shape[1]
    dtype = weight.dtype if weight is not None else x.dtype
    return (torch.empty_like(x), torch.empty_like(alpha), x.new_empty(c if weight is not None else 0, dtype=dtype),
            x.new_empty(c if has_bias else 0, dtype=dtype))


def _setup_context(ctx, inputs, output):
    x, alpha, weight, bias, channels_last = inputs
    ctx.save_for_backward(x, alpha, weight)
    ctx.has_bias, ctx.channels_last = bias is not None, channels_last


def _backward_formula(ctx, dy):
    x, alpha, weight = ctx.saved_tensors
    dx, dalpha, dw, db = _backward(dy, x, alpha, weight, ctx.has_bias, ctx.channels_last)
    return dx, dalpha, dw if weight is not None else None, db if ctx.has_bias else None, None


_forward.register_autograd(_backward_formula, setup_context=_setup_context)


def dyt(x: torch.Tensor, alpha: torch.Tensor, weight: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None, channels_last: bool = True) -> torch.Tensor:
    """Dynamic Tanh with the Triton kernels; the arguments of :func:`normlib.functional.dyt`
    (checked there). Differentiable, a ``torch.library`` custom op. Derived in
    ``chapters/20_kernels.ipynb``."""
    return _forward(x.contiguous(), alpha, weight.contiguous() if weight is not None else None,
                    bias.contiguous() if bias is not None else None, channels_last)
