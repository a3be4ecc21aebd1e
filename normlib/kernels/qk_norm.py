"""Per-head QK-norm: RMSNorm (or LayerNorm) over the head dimension of queries or keys, read in
place from a strided view, with the rotary embedding optionally applied in the same kernel.

The input is ``(..., T, H, D)`` whose last axis is contiguous and whose leading axes collapse
into rows of two levels: row ``r`` is head ``r mod H`` of token ``r div H``, at
``(r div H) * token_stride + (r mod H) * head_stride``. A slice of a fused QKV projection,
``qkv.view(B, T, 3, H, D)[:, :, 0]``, is such a view (token stride ``3HD``, head stride ``D``):
it is normalized without a copy. Rows are held in registers (head dimensions up to 4,096); the
rotary embedding (GPT-NeoX's half rotation, ``cos``/``sin`` of shape ``(T, D/2)``) rotates
each row's two halves after the gain, and the backward rotates the gradient back first.

Forward: one read of the row, one write; statistics in float32 (float64 for float64 inputs)
saved for the backward. Backward: a persistent grid whose programs each sum their rows' weight
gradient into one row of a bounded buffer (no atomics: deterministic).

Derived in ``chapters/20_kernels.ipynb``; QK-norm itself in ``chapters/14_attention_norms.ipynb``.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from normlib.kernels._common import accumulator_dtype, persistent_programs, stats_dtype

MAX_D = 4096     # head dimensions held in registers
TILE = 2048      # elements per program step: ROWS x D


@triton.jit
def _rows(start, M, H, tok_units, head_units, T, ROWS: tl.constexpr, ALIGN: tl.constexpr):
    # rows [start, start + ROWS): their mask, input offsets (two-level strides, given in units of
    # ALIGN elements so that Triton sees rows aligned for 128-bit loads) and positions
    rows = start + tl.arange(0, ROWS)
    row_mask = rows < M
    token = rows // H
    base = (token.to(tl.int64) * tok_units + (rows % H).to(tl.int64) * head_units) * ALIGN
    return rows, row_mask, base, token % T


@triton.jit
def _load_halves(P, base, cols, mask, ACC: tl.constexpr, HALF: tl.constexpr):
    # a tile of rows as its two halves, columns [0, D/2) and [D/2, D)
    first = tl.load(P + base[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
    second = tl.load(P + base[:, None] + HALF + cols[None, :], mask=mask, other=0.0).to(ACC)
    return first, second


@triton.jit(do_not_specialize=["M", "tok_units", "head_units", "T"])
def _forward_kernel(X, W, B, COS, SIN, Y, Mean, Rstd, M, H, T, tok_units, head_units, eps,
                    IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, ROTARY: tl.constexpr,
                    ACC: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr,
                    ALIGN: tl.constexpr):
    D = 2 * HALF
    cols = tl.arange(0, BLOCK)
    col_mask = cols < HALF
    rows, row_mask, base, position = _rows(tl.program_id(0) * ROWS, M, H, tok_units, head_units, T, ROWS, ALIGN)
    mask = row_mask[:, None] & col_mask[None, :]
    x1, x2 = _load_halves(X, base, cols, mask, ACC, HALF)
    if IS_RMS:
        mean = tl.zeros([ROWS], dtype=ACC)
    else:
        mean = (tl.sum(x1, axis=1) + tl.sum(x2, axis=1)) / D
        tl.store(Mean + rows, mean, mask=row_mask)
    c1 = tl.where(mask, x1 - mean[:, None], 0.0)
    c2 = tl.where(mask, x2 - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt((tl.sum(c1 * c1, axis=1) + tl.sum(c2 * c2, axis=1)) / D + eps)
    tl.store(Rstd + rows, rstd, mask=row_mask)
    y1 = c1 * rstd[:, None]
    y2 = c2 * rstd[:, None]
    if HAS_W:
        y1 *= tl.load(W + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
        y2 *= tl.load(W + HALF + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
    if HAS_B:
        y1 += tl.load(B + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
        y2 += tl.load(B + HALF + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
    if ROTARY:
        angle = position.to(tl.int64)[:, None] * HALF + cols[None, :]
        cos = tl.load(COS + angle, mask=mask, other=0.0).to(ACC)
        sin = tl.load(SIN + angle, mask=mask, other=0.0).to(ACC)
        y1, y2 = y1 * cos - y2 * sin, y2 * cos + y1 * sin
    out = rows.to(tl.int64)[:, None] * D + cols[None, :]
    tl.store(Y + out, y1.to(Y.dtype.element_ty), mask=mask)
    tl.store(Y + out + HALF, y2.to(Y.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M", "tok_units", "head_units", "T", "rows_per_program"])
def _backward_kernel(DY, X, W, COS, SIN, Mean, Rstd, DX, DW_PARTIAL, DB_PARTIAL, M, H, T, tok_units, head_units,
                     rows_per_program, IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                     ROTARY: tl.constexpr, ACC: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr,
                     ROWS: tl.constexpr, ALIGN: tl.constexpr):
    D = 2 * HALF
    program = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    col_mask = cols < HALF
    if HAS_W:
        w1 = tl.load(W + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
        w2 = tl.load(W + HALF + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
    else:
        w1 = 1.0
        w2 = 1.0
    dw1 = tl.zeros([BLOCK], dtype=ACC)
    dw2 = tl.zeros([BLOCK], dtype=ACC)
    db1 = tl.zeros([BLOCK], dtype=ACC)
    db2 = tl.zeros([BLOCK], dtype=ACC)
    first = program * rows_per_program
    last = tl.minimum(first + rows_per_program, M)
    for start in range(first, last, ROWS):
        rows, row_mask, base, position = _rows(start, last, H, tok_units, head_units, T, ROWS, ALIGN)
        mask = row_mask[:, None] & col_mask[None, :]
        x1, x2 = _load_halves(X, base, cols, mask, ACC, HALF)
        out = rows.to(tl.int64)[:, None] * D + cols[None, :]
        dn1 = tl.load(DY + out, mask=mask, other=0.0).to(ACC)
        dn2 = tl.load(DY + out + HALF, mask=mask, other=0.0).to(ACC)
        if ROTARY:   # the gradient rotated back: the transpose of the rotation
            angle = position.to(tl.int64)[:, None] * HALF + cols[None, :]
            cos = tl.load(COS + angle, mask=mask, other=0.0).to(ACC)
            sin = tl.load(SIN + angle, mask=mask, other=0.0).to(ACC)
            dn1, dn2 = dn1 * cos + dn2 * sin, dn2 * cos - dn1 * sin
        rstd = tl.load(Rstd + rows, mask=row_mask, other=0.0)[:, None]
        mean = 0.0 if IS_RMS else tl.load(Mean + rows, mask=row_mask, other=0.0)[:, None]
        h1 = tl.where(mask, (x1 - mean) * rstd, 0.0)
        h2 = tl.where(mask, (x2 - mean) * rstd, 0.0)
        g1 = dn1 * w1
        g2 = dn2 * w2
        # dx = rstd * (g - mean(g) - xhat * mean(g * xhat)); RMSNorm has no mean(g) term
        mean_gh = (tl.sum(g1 * h1, axis=1) + tl.sum(g2 * h2, axis=1)) / D
        c1 = h1 * mean_gh[:, None]
        c2 = h2 * mean_gh[:, None]
        if not IS_RMS:
            mean_g = ((tl.sum(g1, axis=1) + tl.sum(g2, axis=1)) / D)[:, None]
            c1 += mean_g
            c2 += mean_g
        tl.store(DX + out, ((g1 - c1) * rstd).to(DX.dtype.element_ty), mask=mask)
        tl.store(DX + out + HALF, ((g2 - c2) * rstd).to(DX.dtype.element_ty), mask=mask)
        dw1 += tl.sum(dn1 * h1, axis=0)
        dw2 += tl.sum(dn2 * h2, axis=0)
        db1 += tl.sum(dn1, axis=0)
        db2 += tl.sum(dn2, axis=0)
    partial = program.to(tl.int64) * D + cols
    if HAS_W:
        tl.store(DW_PARTIAL + partial, dw1, mask=col_mask)
        tl.store(DW_PARTIAL + partial + HALF, dw2, mask=col_mask)
    if HAS_B:
        tl.store(DB_PARTIAL + partial, db1, mask=col_mask)
        tl.store(DB_PARTIAL + partial + HALF, db2, mask=col_mask)


def _strides(x: torch.Tensor) -> Optional[tuple[int, int, int, int]]:
    """(tokens, heads, token stride, head stride) of an ``(..., H, D)`` view whose leading axes
    collapse into one token axis and whose last axis is contiguous; None otherwise."""
    if x.stride(-1) != 1 and x.shape[-1] > 1:
        return None
    tokens, token_stride, outer = 1, None, None
    for size, step in reversed(list(zip(x.shape[:-2], x.stride()[:-2]))):
        if size == 1:
            continue
        if outer is not None and step != outer:
            return None
        token_stride = step if token_stride is None else token_stride
        tokens, outer = tokens * size, step * size
    return tokens, x.shape[-2], token_stride if token_stride is not None else x.numel(), x.stride(-2)


def _alignment(dtype: torch.dtype, *lengths: int) -> int:
    # the largest power of two, up to 16 bytes' worth of elements, dividing every length
    align = max(1, 16 // dtype.itemsize)
    while any(length % align for length in lengths):
        align //= 2
    return align


def _config(d: int) -> tuple[int, int, int]:
    half = d // 2
    block = triton.next_power_of_2(half)
    rows = max(1, min(64, TILE // (2 * block)))
    return block, rows, min(8, max(1, 2 * block * rows // 512))


@torch.library.custom_op("normlib::qk_norm_forward", mutates_args=())
def _forward(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], cos: Optional[torch.Tensor],
             sin: Optional[torch.Tensor], eps: float, rms: bool, positions: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, mean or empty, rstd)``: y contiguous, of ``x``'s shape; ``positions`` is T, the
    length of the position axis (the third from last) that ``cos``/``sin`` index."""
    d = x.shape[-1]
    y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    m = x.numel() // max(1, d)
    sd = stats_dtype(x.dtype)
    mean = torch.empty(0 if rms else m, device=x.device, dtype=sd)
    rstd = torch.empty(m, device=x.device, dtype=sd)
    if m == 0:
        return y, mean, rstd
    tokens, heads, tok_stride, head_stride = _strides(x)
    align = _alignment(x.dtype, tok_stride, head_stride, d // 2)
    block, rows, num_warps = _config(d)
    _forward_kernel[(triton.cdiv(m, rows),)](
        x, weight if weight is not None else x, bias if bias is not None else x, cos if cos is not None else x,
        sin if sin is not None else x, y, mean if not rms else rstd, rstd, m, heads, positions, tok_stride // align,
        head_stride // align, eps, IS_RMS=rms, HAS_W=weight is not None, HAS_B=bias is not None,
        ROTARY=cos is not None, ACC=accumulator_dtype(x.dtype), HALF=d // 2, BLOCK=block, ROWS=rows, ALIGN=align,
        num_warps=num_warps)
    return y, mean, rstd


@_forward.register_fake
def _(x, weight, bias, cos, sin, eps, rms, positions):
    m = x.numel() // max(1, x.shape[-1])
    sd = stats_dtype(x.dtype)
    return x.new_empty(x.shape), x.new_empty(0 if rms else m, dtype=sd), x.new_empty(m, dtype=sd)


@torch.library.custom_op("normlib::qk_norm_backward", mutates_args=())
def _backward(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], cos: Optional[torch.Tensor],
              sin: Optional[torch.Tensor], mean: torch.Tensor, rstd: torch.Tensor, rms: bool, has_bias: bool,
              positions: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dweight or empty, dbias or empty)``, dx contiguous."""
    d = x.shape[-1]
    dy = dy.contiguous()
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    m = x.numel() // max(1, d)
    tokens, heads, tok_stride, head_stride = _strides(x)
    align = _alignment(x.dtype, tok_stride, head_stride, d // 2)
    block, rows, num_warps = _config(d)
    options = dict(IS_RMS=rms, HAS_W=weight is not None, HAS_B=has_bias, ROTARY=cos is not None,
                   ACC=accumulator_dtype(x.dtype), HALF=d // 2, BLOCK=block, ROWS=rows, ALIGN=align,
                   num_warps=num_warps)
    args = [dy, x, weight if weight is not None else x, cos if cos is not None else x, sin if sin is not None else x,
            mean if not rms else rstd, rstd, dx, rstd, rstd, m, heads, positions, tok_stride // align,
            head_stride // align, m]
    programs = persistent_programs(_backward_kernel, tuple(args), options, x.device, m)
    partials = [torch.zeros(programs, d, device=x.device, dtype=rstd.dtype) if wanted else rstd.new_empty(0)
                for wanted in (weight is not None, has_bias)]
    if m > 0:
        args[8:10] = [p if p.numel() else rstd for p in partials]
        args[15] = triton.cdiv(m, programs)
        _backward_kernel[(programs,)](*args, **options)
    dw = partials[0].sum(0).to(weight.dtype) if weight is not None else x.new_empty(0)
    db = partials[1].sum(0).to(x.dtype if weight is None else weight.dtype) if has_bias else x.new_empty(0)
    return dx, dw, db


@_backward.register_fake
def _(dy, x, weight, cos, sin, mean, rstd, rms, has_bias, positions):
    d = x.shape[-1]
    dtype = weight.dtype if weight is not None else x.dtype
    return (x.new_empty(x.shape), x.new_empty(d if weight is not None else 0, dtype=dtype),
            x.new_empty(d if has_bias else 0, dtype=dtype))


def _setup_context(ctx, inputs, output):
    x, weight, bias, cos, sin, eps, rms, positions = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, cos, sin, mean, rstd)
    ctx.rms, ctx.has_bias, ctx.positions = rms, bias is not None, positions


def _backward_formula(ctx, dy, dmean, drstd):
    x, weight, cos, sin, mean, rstd = ctx.saved_tensors
    dx, dw, db = _backward(dy, x, weight, cos, sin, mean, rstd, ctx.rms, ctx.has_bias, ctx.positions)
    return dx, dw if weight is not None else None, db if ctx.has_bias else None, None, None, None, None, None


_forward.register_autograd(_backward_formula, setup_context=_setup_context)


def qk_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, eps: Optional[float] = None,
            bias: Optional[torch.Tensor] = None, cos: Optional[torch.Tensor] = None, sin: Optional[torch.Tensor] = None,
            rms: bool = True) -> torch.Tensor:
    """Per-head QK-norm with the Triton kernels; the arguments of
    :func:`normlib.functional.qk_norm` (checked there). ``x`` is read in place when its leading
    axes collapse into one token axis (a slice of a fused QKV projection does); the output is
    contiguous. Derived in ``chapters/20_kernels.ipynb``."""
    if x.shape[-1] % 2 or x.shape[-1] > MAX_D:
        raise ValueError(f"input: the kernels take an even head dimension up to {MAX_D}, got {x.shape[-1]}")
    if _strides(x) is None:
        x = x.contiguous()
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    positions = x.shape[-3] if cos is not None else 1
    y, _, _ = _forward(x, weight, bias, cos.contiguous() if cos is not None else None,
                       sin.contiguous() if sin is not None else None, float(eps), rms, positions)
    return y
