"""LayerNorm and RMSNorm over the last dimension: one Triton kernel family with an ``IS_RMS`` flag.

Forward: each program normalizes ``ROWS`` rows held in registers (several rows per program when
rows are short). Rows longer than ``MAX_FUSED_N`` elements are processed in chunks: a first pass
merges per-chunk means and squared deviations with Chan's formula (never ``E[x^2] - E[x]^2``),
a second pass normalizes. The statistics (``mean``, ``rstd``) are saved in float32 (float64 for
float64 inputs) for the backward. An optional residual is added first; the sum is stored (in the
input dtype) and normalized, as pre-norm transformers need both.

Backward: a persistent grid of at most ``PROGRAMS_PER_SM x SMs`` programs, each taking a
contiguous block of rows. Every program computes its rows' ``dx`` and accumulates its share of
``dgamma``/``dbeta`` in float32 registers (float64 for float64 inputs), then writes one row of a
``(programs, N)`` buffer; a second step sums the buffer. The buffer does not grow with the number of rows, and no atomics
are used, so the result is deterministic.

Launch parameters depend on ``N`` and the dtype only, never on the number of rows, so a new
batch size does not trigger a recompilation.

Derived in ``chapters/10_kernels.ipynb``.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from normlib.kernels._common import accumulator_dtype, chan_merge, check_input, program_budget, stats_dtype, tile_statistics

MAX_FUSED_N = 16384      # longest row held in registers; longer rows are processed in chunks
CHUNK_N = 4096           # chunk length for long rows
TILE = 4096              # elements per program for short rows (ROWS x BLOCK_N)


def _launch_config(n: int) -> tuple[int, int, int]:
    """(BLOCK_N, ROWS, num_warps) from the row length alone."""
    block_n = triton.next_power_of_2(n) if n <= MAX_FUSED_N else CHUNK_N
    rows = max(1, min(16, TILE // block_n))
    num_warps = min(16, max(1, block_n * rows // 512))
    return block_n, rows, num_warps


@triton.jit
def _forward_kernel(X, R, W, B, Y, S, Mean, Rstd, M, N, eps,
                    IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_RES: tl.constexpr,
                    ACC: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    offsets = rows.to(tl.int64)[:, None] * N + cols[None, :]
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
        tl.store(Mean + rows, mean, mask=rows < M)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1) / N + eps)
    tl.store(Rstd + rows, rstd, mask=rows < M)
    y = centered * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=cols < N, other=0.0).to(ACC)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=cols < N, other=0.0).to(ACC)[None, :]
    tl.store(Y + offsets, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _forward_chunked_kernel(X, R, W, B, Y, S, Mean, Rstd, M, N, eps,
                            IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_RES: tl.constexpr,
                            ACC: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = row * N
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


@triton.jit
def _backward_kernel(DY, X, W, Mean, Rstd, DX, DW_PARTIAL, DB_PARTIAL, M, N, rows_per_program,
                     IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                     ACC: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr):
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
        rows = start + tl.arange(0, ROWS)
        row_mask = rows < last
        mask = row_mask[:, None] & col_mask[None, :]
        offsets = rows.to(tl.int64)[:, None] * N + cols[None, :]
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
    # one chunk of a long row: its columns, mask, xhat, dy and g = gamma * dy
    cols = start + tl.arange(0, BLOCK_N)
    mask = cols < N
    xhat = tl.where(mask, (tl.load(X + base + cols, mask=mask, other=0.0).to(ACC) - mean) * rstd, 0.0)
    dy = tl.load(DY + base + cols, mask=mask, other=0.0).to(ACC)
    g = dy
    if HAS_W:
        g = dy * tl.load(W + cols, mask=mask, other=0.0).to(ACC)
    return cols, mask, xhat, dy, g


@triton.jit
def _backward_chunked_kernel(DY, X, W, Mean, Rstd, DX, DW_PARTIAL, DB_PARTIAL, M, N, rows_per_program,
                             IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                             ACC: tl.constexpr, BLOCK_N: tl.constexpr):
    # long rows: two passes per row; this program's partial-sum row lives in the buffer (it owns it)
    program = tl.program_id(0)
    first = program * rows_per_program
    last = tl.minimum(first + rows_per_program, M)
    partial = program.to(tl.int64) * N
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        if HAS_W:
            tl.store(DW_PARTIAL + partial + cols, tl.zeros([BLOCK_N], dtype=ACC), mask=cols < N)
        if HAS_B:
            tl.store(DB_PARTIAL + partial + cols, tl.zeros([BLOCK_N], dtype=ACC), mask=cols < N)
    for row in range(first, last):
        base = tl.cast(row, tl.int64) * N
        rstd = tl.load(Rstd + row)
        if IS_RMS:
            mean = 0.0
        else:
            mean = tl.load(Mean + row)
        sum_g = tl.zeros([], dtype=ACC)
        sum_gx = tl.zeros([], dtype=ACC)
        for start in range(0, N, BLOCK_N):
            cols, mask, xhat, dy, g = _chunk_gradients(X, DY, W, base, start, N, mean, rstd, HAS_W, ACC, BLOCK_N)
            sum_g += tl.sum(g, axis=0)
            sum_gx += tl.sum(g * xhat, axis=0)
        for start in range(0, N, BLOCK_N):
            cols, mask, xhat, dy, g = _chunk_gradients(X, DY, W, base, start, N, mean, rstd, HAS_W, ACC, BLOCK_N)
            correction = xhat * (sum_gx / N)
            if not IS_RMS:
                correction += sum_g / N
            tl.store(DX + base + cols, ((g - correction) * rstd).to(DX.dtype.element_ty), mask=mask)
            if HAS_W:
                dw = tl.load(DW_PARTIAL + partial + cols, mask=mask, other=0.0)
                tl.store(DW_PARTIAL + partial + cols, dw + dy * xhat, mask=mask)
            if HAS_B:
                db = tl.load(DB_PARTIAL + partial + cols, mask=mask, other=0.0)
                tl.store(DB_PARTIAL + partial + cols, db + dy, mask=mask)


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
    block_n, rows, num_warps = _launch_config(n)
    flags = dict(IS_RMS=rms, HAS_W=weight is not None, HAS_B=bias is not None, HAS_RES=residual is not None,
                 ACC=accumulator_dtype(x.dtype), BLOCK_N=block_n)
    args = (x, residual if residual is not None else x, weight if weight is not None else x,
            bias if bias is not None else x, y, summed if residual is not None else y,
            mean if not rms else rstd, rstd, m, n, eps)
    if n <= MAX_FUSED_N:
        _forward_kernel[(triton.cdiv(m, rows),)](*args, **flags, ROWS=rows, num_warps=num_warps)
    else:
        _forward_chunked_kernel[(m,)](*args, **flags, num_warps=num_warps)
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
    programs = max(1, min(m, program_budget(x.device)))
    has_w = weight is not None
    partial_dtype = stats_dtype(x.dtype)   # float32 partial sums (float64 for float64 inputs)
    dw_partial = torch.empty(programs, n, device=x.device, dtype=partial_dtype) if has_w else _empty(rstd)
    db_partial = torch.empty(programs, n, device=x.device, dtype=partial_dtype) if has_bias else _empty(rstd)
    if m > 0:
        block_n, rows, num_warps = _launch_config(n)
        args = (dy, x, weight if has_w else x, mean if not rms else rstd, rstd, dx,
                dw_partial if has_w else rstd, db_partial if has_bias else rstd, m, n, triton.cdiv(m, programs))
        flags = dict(IS_RMS=rms, HAS_W=has_w, HAS_B=has_bias, ACC=accumulator_dtype(x.dtype), BLOCK_N=block_n)
        if n <= MAX_FUSED_N:
            _backward_kernel[(programs,)](*args, **flags, ROWS=rows, num_warps=num_warps)
        else:
            _backward_chunked_kernel[(programs,)](*args, **flags, num_warps=num_warps)
    else:
        dw_partial.zero_(), db_partial.zero_()
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
    Derived in ``chapters/10_kernels.ipynb``."""
    return _rowwise(x, weight, bias, eps, residual, rms=False)


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, eps: Optional[float] = None,
             residual: Optional[torch.Tensor] = None):
    """RMSNorm over the last dimension of ``x`` with the Triton kernels; same conventions as
    :func:`layer_norm`, and ``eps=None`` is the input dtype's machine epsilon (normlib's and
    torch's default). Derived in ``chapters/10_kernels.ipynb``."""
    return _rowwise(x, weight, None, torch.finfo(x.dtype).eps if eps is None else eps, residual, rms=True)
