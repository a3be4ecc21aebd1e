"""LayerNorm and RMSNorm over the last dimension: one Triton kernel family with an ``IS_RMS`` flag.

Forward: each program normalizes ``ROWS`` rows held in registers (several rows per program when
rows are short). Rows longer than the fused limit (:func:`max_fused_n`) are processed in
chunks: a first pass merges per-chunk means and squared deviations with Chan's formula (never
``E[x^2] - E[x]^2``), a second pass normalizes. A bounded persistent grid walks the long rows,
so the rows in flight fit in the L2 cache and the second pass reads them there. The statistics
(``mean``, ``rstd``) are saved in float32 (float64 for float64 inputs) for the backward. An
optional residual is added first; the sum is stored (in the input dtype) and normalized, as
pre-norm transformers need both.

Backward, rows that fit in registers: a persistent grid of as many programs as the GPU holds at
once (from the compiled kernel's registers, warps and shared memory), at least 8 rows each,
each taking a contiguous block of rows. Every program computes its rows' ``dx`` and
accumulates its share of ``dgamma``/``dbeta`` in float32 registers (float64 for float64
inputs), then writes one row of a ``(programs, N)`` buffer; a second step sums the buffer.
Long rows: one kernel computes each row's two reductions and ``dx`` (chunk by chunk), and a
second reduces ``dgamma``/``dbeta`` over blocks of columns, each held in registers over a
block of rows. The buffers do not grow with the number of rows, and no atomics are used, so
the result is deterministic.

The fused limits are in bytes of float32 (or float64) accumulators, so that no configuration
spills registers (``python -m normlib.kernels.check`` proves it for sm_80 and sm_90). Launch
parameters depend on ``N`` and the dtype only, and the arguments that change with the number
of rows are not specialized (``do_not_specialize``): a new batch size compiles nothing new.

Derived in ``chapters/20_kernels.ipynb``.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from normlib.kernels._common import (accumulator_dtype, chan_merge, check_input, persistent_programs, program_budget,
                                     rows_in_flight, stats_dtype, tile_statistics)

# Longest rows held in registers, in bytes of accumulators per row: 16,384 float32 elements
# forward, 8,192 backward (which holds x, dy, gamma and the two gradient sums per element);
# half as many float64 elements. Longer rows take the chunked kernels.
FUSED_BYTES_FORWARD = 16384 * 4
FUSED_BYTES_BACKWARD = 8192 * 4
CHUNK_N = 4096           # chunk length for long rows
TILE = 4096              # elements per program for short rows (ROWS x BLOCK_N)
WEIGHT_GRADIENT_TILE = (8, 512)   # (rows, columns) per step of the long-row dgamma/dbeta kernel


def max_fused_n(dtype: torch.dtype, backward: bool = False, aligned: bool = True) -> int:
    """The longest row the forward (or backward) keeps in registers for inputs of ``dtype``.
    A row whose length in bytes is not a multiple of 16 (``aligned=False``) is loaded element by
    element, with an address each: the backward then holds half as many (no spills)."""
    limit = (FUSED_BYTES_BACKWARD if backward else FUSED_BYTES_FORWARD) // max(4, dtype.itemsize)
    return limit if aligned or not backward else limit // 2


def _in_registers(n: int, dtype: torch.dtype, backward: bool = False) -> bool:
    return n <= max_fused_n(dtype, backward, aligned=n * dtype.itemsize % 16 == 0)


def _launch_config(n: int, dtype: torch.dtype = torch.float32, backward: bool = False) -> tuple[int, int, int]:
    """(BLOCK_N, ROWS, num_warps) from the row length and dtype alone."""
    block_n = triton.next_power_of_2(n) if _in_registers(n, dtype, backward) else CHUNK_N
    # several short rows per program, at least 256 elements (8 per thread of one warp: 128-bit loads)
    rows = max(1, min(TILE // block_n, max(16, 256 // block_n)))
    num_warps = min(16, max(1, block_n * rows // 512))
    return block_n, rows, num_warps


def _alignment(n: int, dtype: torch.dtype) -> int:
    """The largest power of two, up to 16 bytes' worth of elements, that divides the row length:
    passed as a constexpr with the length in its units, so that Triton can prove rows aligned
    and use 128-bit loads (it only specializes integers divisible by 16 itself)."""
    align = max(1, 16 // dtype.itemsize)
    while n % align:
        align //= 2
    return align


@triton.jit
def _row_tile(start, last, cols, col_mask, N, ROWS: tl.constexpr):
    # rows [start, start + ROWS) that are below last: indices, mask, the tile's mask and offsets
    rows = start + tl.arange(0, ROWS)
    row_mask = rows < last
    return rows, row_mask, row_mask[:, None] & col_mask[None, :], rows.to(tl.int64)[:, None] * N + cols[None, :]


@triton.jit(do_not_specialize=["M"])
def _forward_kernel(X, R, W, B, Y, S, Mean, Rstd, M, row_units, eps,
                    IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_RES: tl.constexpr,
                    ACC: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr, ALIGN: tl.constexpr):
    N = row_units * ALIGN   # the row length; Triton sees that it is a multiple of ALIGN
    cols = tl.arange(0, BLOCK_N)
    rows, row_mask, mask, offsets = _row_tile(tl.program_id(0) * ROWS, M, cols, cols < N, N, ROWS)
    x = tl.load(X + offsets, mask=mask, other=0.0)
    if HAS_RES:
        # round the sum to the storage dtype: the kernel normalizes exactly the tensor it returns
        x = (x.to(ACC) + tl.load(R + offsets, mask=mask, other=0.0).to(ACC)).to(S.dtype.element_ty)
        tl.store(S + offsets, x, mask=mask)
    x = x.to(ACC)
    if IS_RMS:
        centered = x
    else:
        mean = tl.sum(x, axis=1) / N
        centered = tl.where(mask, x - mean[:, None], 0.0)
        # the deviations' own mean is the rounding error of the first one (large offsets): remove it
        error = tl.sum(centered, axis=1) / N
        mean += error
        centered = tl.where(mask, centered - error[:, None], 0.0)
        tl.store(Mean + rows, mean, mask=row_mask)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1) / N + eps)
    tl.store(Rstd + rows, rstd, mask=row_mask)
    y = centered * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=cols < N, other=0.0).to(ACC)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=cols < N, other=0.0).to(ACC)[None, :]
    tl.store(Y + offsets, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M"])
def _forward_chunked_kernel(X, R, W, B, Y, S, Mean, Rstd, M, row_units, eps,
                            IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_RES: tl.constexpr,
                            ACC: tl.constexpr, BLOCK_N: tl.constexpr, ALIGN: tl.constexpr):
    N = row_units * ALIGN   # the row length; Triton sees that it is a multiple of ALIGN
    # long rows, a bounded grid: program p takes rows p, p + programs, ... (rows in flight fit in L2)
    for row in range(tl.program_id(0), M, tl.num_programs(0)):
        base = tl.cast(row, tl.int64) * N
        count = tl.zeros([], dtype=ACC)
        mean = tl.zeros([], dtype=ACC)
        m2 = tl.zeros([], dtype=ACC)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = cols < N
            x = tl.load(X + base + cols, mask=mask, other=0.0)
            if HAS_RES:
                x = (x.to(ACC) + tl.load(R + base + cols, mask=mask, other=0.0).to(ACC)).to(S.dtype.element_ty)
                tl.store(S + base + cols, x, mask=mask)
            x = x.to(ACC)
            if IS_RMS:
                m2 += tl.sum(x * x, axis=0)
            else:
                n = tl.minimum(N - start, BLOCK_N).to(ACC)
                chunk_mean, chunk_m2 = tile_statistics(x, mask, n)
                count, mean, m2 = chan_merge(count, mean, m2, n, chunk_mean, chunk_m2)
        rstd = 1.0 / tl.sqrt(m2 / N + eps)
        tl.store(Rstd + row, rstd)
        if not IS_RMS:
            tl.store(Mean + row, mean)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = cols < N
            if HAS_RES:
                x = tl.load(S + base + cols, mask=mask, other=0.0).to(ACC)
            else:
                x = tl.load(X + base + cols, mask=mask, other=0.0).to(ACC)
            if IS_RMS:
                y = x * rstd
            else:
                y = (x - mean) * rstd
            if HAS_W:
                y = y * tl.load(W + cols, mask=mask, other=0.0).to(ACC)
            if HAS_B:
                y = y + tl.load(B + cols, mask=mask, other=0.0).to(ACC)
            tl.store(Y + base + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M", "rows_per_program"])
def _backward_kernel(DY, X, W, Mean, Rstd, DX, DW_PARTIAL, DB_PARTIAL, M, row_units, rows_per_program,
                     IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                     ACC: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr, ALIGN: tl.constexpr):
    N = row_units * ALIGN   # the row length; Triton sees that it is a multiple of ALIGN
    program = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    if HAS_W:
        w = tl.load(W + cols, mask=col_mask, other=0.0).to(ACC)
    dw = tl.zeros([BLOCK_N], dtype=ACC)
    db = tl.zeros([BLOCK_N], dtype=ACC)
    first = program * rows_per_program
    last = tl.minimum(first + rows_per_program, M)
    for start in range(first, last, ROWS):
        rows, row_mask, mask, offsets = _row_tile(start, last, cols, col_mask, N, ROWS)
        x = tl.load(X + offsets, mask=mask, other=0.0).to(ACC)
        dy = tl.load(DY + offsets, mask=mask, other=0.0).to(ACC)
        rstd = tl.load(Rstd + rows, mask=row_mask, other=0.0)
        if IS_RMS:
            xhat = x * rstd[:, None]
        else:
            xhat = tl.where(mask, (x - tl.load(Mean + rows, mask=row_mask, other=0.0)[:, None]) * rstd[:, None], 0.0)
        if HAS_W:
            g = dy * w[None, :]
        else:
            g = dy
        # dx = rstd * (g - mean(g) - xhat * mean(g * xhat)); RMSNorm has no mean(g) term
        correction = xhat * (tl.sum(g * xhat, axis=1) / N)[:, None]
        if not IS_RMS:
            correction += (tl.sum(g, axis=1) / N)[:, None]
        tl.store(DX + offsets, ((g - correction) * rstd[:, None]).to(DX.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, axis=0)
        db += tl.sum(dy, axis=0)
    if HAS_W:
        tl.store(DW_PARTIAL + program * N + cols, dw, mask=col_mask)
    if HAS_B:
        tl.store(DB_PARTIAL + program * N + cols, db, mask=col_mask)


@triton.jit
def _chunk_gradients(X, DY, W, base, start, N, mean, rstd, HAS_W: tl.constexpr, ACC: tl.constexpr,
                     BLOCK_N: tl.constexpr):
    # one chunk of a long row: its columns, mask, xhat and g = gamma * dy
    cols = start + tl.arange(0, BLOCK_N)
    mask = cols < N
    xhat = tl.where(mask, (tl.load(X + base + cols, mask=mask, other=0.0).to(ACC) - mean) * rstd, 0.0)
    g = tl.load(DY + base + cols, mask=mask, other=0.0).to(ACC)
    if HAS_W:
        g = g * tl.load(W + cols, mask=mask, other=0.0).to(ACC)
    return cols, mask, xhat, g


@triton.jit(do_not_specialize=["M"])
def _backward_chunked_kernel(DY, X, W, Mean, Rstd, DX, M, row_units,
                             IS_RMS: tl.constexpr, HAS_W: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, ALIGN: tl.constexpr):
    N = row_units * ALIGN   # the row length; Triton sees that it is a multiple of ALIGN
    # long rows, dx only: a pass for the row's two sums, a second (from L2) for dx
    for row in range(tl.program_id(0), M, tl.num_programs(0)):
        base = tl.cast(row, tl.int64) * N
        rstd = tl.load(Rstd + row)
        if IS_RMS:
            mean = 0.0
        else:
            mean = tl.load(Mean + row)
        sum_g = tl.zeros([], dtype=ACC)
        sum_gx = tl.zeros([], dtype=ACC)
        for start in range(0, N, BLOCK_N):
            cols, mask, xhat, g = _chunk_gradients(X, DY, W, base, start, N, mean, rstd, HAS_W, ACC, BLOCK_N)
            sum_g += tl.sum(g, axis=0)
            sum_gx += tl.sum(g * xhat, axis=0)
        for start in range(0, N, BLOCK_N):
            cols, mask, xhat, g = _chunk_gradients(X, DY, W, base, start, N, mean, rstd, HAS_W, ACC, BLOCK_N)
            correction = xhat * (sum_gx / N)
            if not IS_RMS:
                correction += sum_g / N
            tl.store(DX + base + cols, ((g - correction) * rstd).to(DX.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M", "rows_per_program"])
def _weight_gradient_kernel(DY, X, Mean, Rstd, DW_PARTIAL, DB_PARTIAL, M, row_units, rows_per_program,
                            IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACC: tl.constexpr,
                            ROWS: tl.constexpr, BLOCK_N: tl.constexpr, ALIGN: tl.constexpr):
    N = row_units * ALIGN   # the row length; Triton sees that it is a multiple of ALIGN
    # long rows: sum(dy * xhat) and sum(dy) over a block of rows for one block of columns, in registers
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    dw = tl.zeros([BLOCK_N], dtype=ACC)
    db = tl.zeros([BLOCK_N], dtype=ACC)
    first = tl.program_id(1) * rows_per_program
    last = tl.minimum(first + rows_per_program, M)
    for start in range(first, last, ROWS):
        rows, row_mask, mask, offsets = _row_tile(start, last, cols, col_mask, N, ROWS)
        dy = tl.load(DY + offsets, mask=mask, other=0.0).to(ACC)
        if HAS_W:
            x = tl.load(X + offsets, mask=mask, other=0.0).to(ACC)
            rstd = tl.load(Rstd + rows, mask=row_mask, other=0.0)
            if IS_RMS:
                xhat = x * rstd[:, None]
            else:
                xhat = (x - tl.load(Mean + rows, mask=row_mask, other=0.0)[:, None]) * rstd[:, None]
            dw += tl.sum(dy * xhat, axis=0)
        db += tl.sum(dy, axis=0)
    partial = tl.program_id(1).to(tl.int64) * N + cols
    if HAS_W:
        tl.store(DW_PARTIAL + partial, dw, mask=col_mask)
    if HAS_B:
        tl.store(DB_PARTIAL + partial, db, mask=col_mask)


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0)


@torch.library.custom_op("normlib::rowwise_norm_forward", mutates_args=())
def _forward(x: torch.Tensor, residual: Optional[torch.Tensor], weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
             eps: float, rms: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, x + residual or empty, mean or empty, rstd)`` for a contiguous ``(M, N)`` input."""
    m, n = x.shape
    y = torch.empty_like(x)
    summed = torch.empty_like(x) if residual is not None else _empty(x)
    sd = stats_dtype(x.dtype)
    mean = torch.empty(m, device=x.device, dtype=sd) if not rms else torch.empty(0, device=x.device, dtype=sd)
    rstd = torch.empty(m, device=x.device, dtype=sd)
    if m == 0:
        return y, summed, mean, rstd
    block_n, rows, num_warps = _launch_config(n, x.dtype)
    align = _alignment(n, x.dtype)
    flags = dict(IS_RMS=rms, HAS_W=weight is not None, HAS_B=bias is not None, HAS_RES=residual is not None,
                 ACC=accumulator_dtype(x.dtype), BLOCK_N=block_n, ALIGN=align)
    args = (x, residual if residual is not None else x, weight if weight is not None else x,
            bias if bias is not None else x, y, summed if residual is not None else y,
            mean if not rms else rstd, rstd, m, n // align, eps)
    if _in_registers(n, x.dtype):
        _forward_kernel[(triton.cdiv(m, rows),)](*args, **flags, ROWS=rows, num_warps=num_warps)
    else:
        grid = (rows_in_flight(x.device, m, n * x.element_size()),)
        _forward_chunked_kernel[grid](*args, **flags, num_warps=num_warps)
    return y, summed, mean, rstd


@_forward.register_fake
def _(x, residual, weight, bias, eps, rms):
    sd = stats_dtype(x.dtype)
    m = x.shape[0]
    return (torch.empty_like(x), torch.empty_like(x) if residual is not None else x.new_empty(0),
            x.new_empty(0 if rms else m, dtype=sd), x.new_empty(m, dtype=sd))


@torch.library.custom_op("normlib::rowwise_norm_backward", mutates_args=())
def _backward(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], mean: torch.Tensor, rstd: torch.Tensor,
              rms: bool, has_bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dweight or empty, dbias or empty)``; ``x`` is the normalized input (the sum with the residual)."""
    m, n = x.shape
    dy = dy.contiguous()
    dx = torch.empty_like(x)
    has_w = weight is not None
    partial_dtype = stats_dtype(x.dtype)   # float32 partial sums (float64 for float64 inputs)
    acc = accumulator_dtype(x.dtype)
    w_arg, mean_arg = weight if has_w else x, mean if not rms else rstd
    block_n, rows, num_warps = _launch_config(n, x.dtype, backward=True)
    align = _alignment(n, x.dtype)
    if _in_registers(n, x.dtype, backward=True):
        # rows in registers: each program of a persistent grid (as many as the GPU holds at once)
        # sums its rows' dgamma/dbeta
        options = dict(IS_RMS=rms, HAS_W=has_w, HAS_B=has_bias, ACC=acc, BLOCK_N=block_n, ROWS=rows, ALIGN=align,
                       num_warps=num_warps)
        args = [dy, x, w_arg, mean_arg, rstd, dx, rstd, rstd, m, n // align, m]
        programs = persistent_programs(_backward_kernel, tuple(args), options, x.device, m)
        dw_partial = torch.zeros(programs, n, device=x.device, dtype=partial_dtype) if has_w else _empty(rstd)
        db_partial = torch.zeros(programs, n, device=x.device, dtype=partial_dtype) if has_bias else _empty(rstd)
        if m > 0:
            args[6:8] = dw_partial if has_w else rstd, db_partial if has_bias else rstd
            args[10] = triton.cdiv(m, programs)
            _backward_kernel[(programs,)](*args, **options)
    else:
        # long rows: dx row by row, then dgamma/dbeta over blocks of columns
        tile_rows, tile_cols = WEIGHT_GRADIENT_TILE
        col_blocks = triton.cdiv(n, tile_cols)
        row_programs = max(1, min(triton.cdiv(m, tile_rows), program_budget(x.device) // col_blocks))
        dw_partial = torch.zeros(row_programs, n, device=x.device, dtype=partial_dtype) if has_w else _empty(rstd)
        db_partial = torch.zeros(row_programs, n, device=x.device, dtype=partial_dtype) if has_bias else _empty(rstd)
        if m > 0:
            grid = (rows_in_flight(x.device, m, 2 * n * x.element_size()),)
            _backward_chunked_kernel[grid](dy, x, w_arg, mean_arg, rstd, dx, m, n // align, IS_RMS=rms, HAS_W=has_w,
                                           ACC=acc, BLOCK_N=block_n, ALIGN=align, num_warps=num_warps)
            if has_w or has_bias:
                _weight_gradient_kernel[(col_blocks, row_programs)](
                    dy, x, mean_arg, rstd, dw_partial if has_w else rstd, db_partial if has_bias else rstd,
                    m, n // align, triton.cdiv(m, row_programs), IS_RMS=rms, HAS_W=has_w, HAS_B=has_bias, ACC=acc,
                    ROWS=tile_rows, BLOCK_N=tile_cols, ALIGN=align, num_warps=4)
    # second step: reduce the bounded (programs, N) buffers
    dw = dw_partial.sum(0).to(weight.dtype) if has_w else _empty(x)
    db = db_partial.sum(0).to(x.dtype if weight is None else weight.dtype) if has_bias else _empty(x)
    return dx, dw, db


@_backward.register_fake
def _(dy, x, weight, mean, rstd, rms, has_bias):
    n = x.shape[1]
    dtype = weight.dtype if weight is not None else x.dtype
    return (torch.empty_like(x), x.new_empty(n if weight is not None else 0, dtype=dtype),
            x.new_empty(n if has_bias else 0, dtype=dtype))


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, eps, rms = inputs
    _, summed, mean, rstd = output
    ctx.save_for_backward(summed if residual is not None else x, weight, mean, rstd)
    ctx.rms, ctx.has_bias, ctx.has_residual = rms, bias is not None, residual is not None


def _backward_formula(ctx, dy, dsum, dmean, drstd):
    normalized_input, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = _backward(dy, normalized_input, weight, mean, rstd, ctx.rms, ctx.has_bias)
    if ctx.has_residual and dsum is not None:
        dx = dx + dsum   # the sum is also an output: its gradient joins the normalization's
    return (dx, dx if ctx.has_residual else None, dw if weight is not None else None,
            db if ctx.has_bias else None, None, None)


_forward.register_autograd(_backward_formula, setup_context=_setup_context)


def _rowwise(x, weight, bias, eps, residual, rms):
    n = x.shape[-1]
    check_input(x, "input", min_dim=1, weight=weight, bias=bias)
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device):
        raise ValueError(f"residual: expected shape {tuple(x.shape)}, dtype {x.dtype} and device {x.device}, "
                         f"got {tuple(residual.shape)}, {residual.dtype}, {residual.device}")
    flat = x.reshape(-1, n).contiguous()
    flat_residual = residual.reshape(-1, n).contiguous() if residual is not None else None
    weight = weight.contiguous() if weight is not None else None
    bias = bias.contiguous() if bias is not None else None
    y, summed, _, _ = _forward(flat, flat_residual, weight, bias, float(eps), rms)
    y = y.view(x.shape)
    return (y, summed.view(x.shape)) if residual is not None else y


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
               eps: float = 1e-5, residual: Optional[torch.Tensor] = None):
    """LayerNorm over the last dimension of ``x`` (float16, bfloat16, float32 or float64) with the
    Triton kernels. With ``residual``, normalizes ``x + residual`` and returns ``(y, x + residual)``.
    Differentiable (a ``torch.library`` custom op, so it also works under ``torch.compile``).
    Derived in ``chapters/20_kernels.ipynb``."""
    return _rowwise(x, weight, bias, eps, residual, rms=False)


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, eps: Optional[float] = None,
             residual: Optional[torch.Tensor] = None):
    """RMSNorm over the last dimension of ``x`` with the Triton kernels; same conventions as
    :func:`layer_norm`, and ``eps=None`` is the input dtype's machine epsilon (normlib's and
    torch's default). Derived in ``chapters/20_kernels.ipynb``."""
    return _rowwise(x, weight, None, torch.finfo(x.dtype).eps if eps is None else eps, residual, rms=True)
