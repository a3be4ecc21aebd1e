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

from normlib._validation import CASTING_MODES as _MODE_NAMES
from normlib._validation import check_modulation, check_norm_options, norm_output_dtype, promoted_dtype
from normlib.kernels._common import (MIN_ROWS_PER_PROGRAM, accumulator_dtype, chan_merge, check_input,
                                     persistent_programs, program_budget,
                                     rows_in_flight, stats_dtype, tile_statistics)

# Longest rows held in registers, in bytes of accumulators per row: 16,384 float32 elements
# forward, 8,192 backward (which holds x, dy, gamma and the two gradient sums per element);
# half as many float64 elements. Longer rows take the chunked kernels.
FUSED_BYTES_FORWARD = 16384 * 4
FUSED_BYTES_BACKWARD = 8192 * 4
CHUNK_N = 4096           # chunk length for long rows
TILE = 4096              # elements per program for short rows (ROWS x BLOCK_N)
WEIGHT_GRADIENT_TILE = (8, 512)   # (rows, columns) per step of the long-row dgamma/dbeta kernel


def max_fused_n(dtype: torch.dtype, backward: bool = False, aligned: bool = True, more_held: bool = False) -> int:
    """The longest row the forward (or backward) keeps in registers for inputs of ``dtype``.
    A row whose length in bytes is not a multiple of 16 (``aligned=False``) is loaded element by
    element, with an address each, and the backward that holds more per element (``more_held``:
    the memory-light backward's shift, the modulation's scale and its two sums) holds half as
    many (no spills)."""
    limit = (FUSED_BYTES_BACKWARD if backward else FUSED_BYTES_FORWARD) // max(4, dtype.itemsize)
    return limit if not backward or (aligned and not more_held) else limit // 2


def _in_registers(n: int, dtype: torch.dtype, backward: bool = False, more_held: bool = False) -> bool:
    return n <= max_fused_n(dtype, backward, aligned=n * dtype.itemsize % 16 == 0, more_held=more_held)


def _launch_config(n: int, dtype: torch.dtype = torch.float32, backward: bool = False,
                   more_held: bool = False) -> tuple[int, int, int]:
    """(BLOCK_N, ROWS, num_warps) from the row length and dtype alone."""
    block_n = triton.next_power_of_2(n) if _in_registers(n, dtype, backward, more_held) else CHUNK_N
    # several short rows per program, at least 256 elements (8 per thread of one warp: 128-bit loads)
    rows = max(1, min(TILE // block_n, max(16, 256 // block_n)))
    num_warps = min(16, max(1, block_n * rows // 512))
    return block_n, rows, num_warps


def _alignment(dtype: torch.dtype, *lengths: int) -> int:
    """The largest power of two, up to 16 bytes' worth of elements, that divides the row length
    and every row stride: passed as a constexpr with the lengths in its units, so that Triton can
    prove rows aligned and use 128-bit loads (it only specializes integers divisible by 16 itself)."""
    align = max(1, 16 // dtype.itemsize)
    while any(length % align for length in lengths):
        align //= 2
    return align


CASTING_MODES = {name: code for code, name in enumerate(_MODE_NAMES)}   # the kernels' CAST flag
_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
              torch.float64: tl.float64}


@triton.jit
def _row_tile(start, last, cols, col_mask, ROWS: tl.constexpr):
    # rows [start, start + ROWS) that are below last: indices, their mask and the tile's mask
    rows = start + tl.arange(0, ROWS)
    row_mask = rows < last
    return rows, row_mask, row_mask[:, None] & col_mask[None, :]


@triton.jit
def _at(rows, cols, stride):
    # offsets of a tile of rows (any row stride, contiguous columns)
    return rows.to(tl.int64)[:, None] * stride + cols[None, :]


@triton.jit
def _round(v, DTYPE: tl.constexpr, ACC: tl.constexpr):
    return v.to(DTYPE).to(ACC)


@triton.jit
def _output(x, centered, mean, rstd, w, b, offset, IS_RMS: tl.constexpr, HAS_W: tl.constexpr,
            HAS_B: tl.constexpr, CAST: tl.constexpr, DTYPE: tl.constexpr, W_DTYPE: tl.constexpr,
            GAIN: tl.constexpr, ACC: tl.constexpr):
    # xhat * (offset + w) + b, rounded where the casting mode's model rounds (CASTING_MODES):
    # fp32 once at the store; llama xhat to the input dtype, then each step to the promoted one;
    # none also the statistics and each step of xhat to the input dtype
    if CAST == 2:
        r = _round(rstd, DTYPE, ACC)
        if IS_RMS:
            xhat = _round(x * r, DTYPE, ACC)
        else:
            xhat = _round(_round(x - _round(mean, DTYPE, ACC), DTYPE, ACC) * r, DTYPE, ACC)
    else:
        xhat = centered * rstd
        if CAST == 1:
            xhat = _round(xhat, DTYPE, ACC)
    y = xhat
    if HAS_W:
        gain = w + offset
        if CAST != 0:
            gain = _round(gain, W_DTYPE, ACC)
        y = y * gain
        if CAST != 0:
            y = _round(y, GAIN, ACC)
    if HAS_B:
        y = y + b
        if CAST != 0:
            y = _round(y, GAIN, ACC)
    return y


@triton.jit(do_not_specialize=["M", "x_row", "r_row", "per_condition"])
def _forward_kernel(X, R, W, B, Y, S, Mean, Rstd, G, SC, SH, M, row_units, x_row, r_row, eps, offset, per_condition,
                    IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_RES: tl.constexpr,
                    HAS_GATE: tl.constexpr, HAS_MOD: tl.constexpr,
                    CAST: tl.constexpr, DTYPE: tl.constexpr, GAIN: tl.constexpr, DENSE: tl.constexpr,
                    ACC: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr, ALIGN: tl.constexpr):
    N = row_units * ALIGN   # the row length; Triton sees that it is a multiple of ALIGN
    cols = tl.arange(0, BLOCK_N)
    rows, row_mask, mask = _row_tile(tl.program_id(0) * ROWS, M, cols, cols < N, ROWS)
    offsets = _at(rows, cols, N)   # of the outputs; DENSE: every input's rows are N apart too
    x = tl.load(X + (offsets if DENSE else _at(rows, cols, x_row * ALIGN)), mask=mask, other=0.0)
    if HAS_RES:
        # round the sum to the storage dtype: the kernel normalizes exactly the tensor it returns
        r = tl.load(R + (offsets if DENSE else _at(rows, cols, r_row * ALIGN)), mask=mask, other=0.0)
        if HAS_GATE:   # adaLN-Zero's gated residual: r + gate * x, the gate per condition
            x = x.to(ACC) * tl.load(G + _at(rows // per_condition, cols, N), mask=mask, other=0.0).to(ACC)
        x = (x.to(ACC) + r.to(ACC)).to(S.dtype.element_ty)
        tl.store(S + offsets, x, mask=mask)
    x = x.to(ACC)
    if IS_RMS:
        centered = x
        mean = tl.zeros([ROWS], dtype=ACC)
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
    w = tl.load(W + cols, mask=cols < N, other=0.0).to(ACC)[None, :] if HAS_W else 0.0
    b = tl.load(B + cols, mask=cols < N, other=0.0).to(ACC)[None, :] if HAS_B else 0.0
    y = _output(x, centered, mean[:, None], rstd[:, None], w, b, offset, IS_RMS, HAS_W, HAS_B, CAST, DTYPE,
                W.dtype.element_ty, GAIN, ACC)
    if HAS_MOD:   # adaLN: y * (1 + scale) + shift, per condition (example or token)
        at = _at(rows // per_condition, cols, N)
        y = y * (1.0 + tl.load(SC + at, mask=mask, other=0.0).to(ACC)) + tl.load(SH + at, mask=mask, other=0.0).to(ACC)
    tl.store(Y + offsets, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M", "x_row", "r_row", "per_condition"])
def _forward_chunked_kernel(X, R, W, B, Y, S, Mean, Rstd, G, SC, SH, M, row_units, x_row, r_row, eps, offset,
                            per_condition, IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                            HAS_RES: tl.constexpr, HAS_GATE: tl.constexpr, HAS_MOD: tl.constexpr,
                            CAST: tl.constexpr, DTYPE: tl.constexpr, GAIN: tl.constexpr, DENSE: tl.constexpr,
                            ACC: tl.constexpr, BLOCK_N: tl.constexpr, ALIGN: tl.constexpr):
    N = row_units * ALIGN   # the row length; Triton sees that it is a multiple of ALIGN
    # long rows, a bounded grid: program p takes rows p, p + programs, ... (rows in flight fit in L2)
    for row in range(tl.program_id(0), M, tl.num_programs(0)):
        base = tl.cast(row, tl.int64) * N
        x_base = tl.cast(row, tl.int64) * (x_row * ALIGN)
        condition = tl.cast(row // per_condition, tl.int64) * N
        count = tl.zeros([], dtype=ACC)
        mean = tl.zeros([], dtype=ACC)
        m2 = tl.zeros([], dtype=ACC)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = cols < N
            x = tl.load(X + x_base + cols, mask=mask, other=0.0)
            if HAS_RES:
                r_base = tl.cast(row, tl.int64) * (r_row * ALIGN)
                if HAS_GATE:
                    x = x.to(ACC) * tl.load(G + condition + cols, mask=mask, other=0.0).to(ACC)
                x = (x.to(ACC) + tl.load(R + r_base + cols, mask=mask, other=0.0).to(ACC)).to(S.dtype.element_ty)
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
                x = tl.load(X + x_base + cols, mask=mask, other=0.0).to(ACC)
            w = tl.load(W + cols, mask=mask, other=0.0).to(ACC) if HAS_W else 0.0
            b = tl.load(B + cols, mask=mask, other=0.0).to(ACC) if HAS_B else 0.0
            y = _output(x, x - mean, mean, rstd, w, b, offset, IS_RMS, HAS_W, HAS_B, CAST, DTYPE,
                        W.dtype.element_ty, GAIN, ACC)
            if HAS_MOD:
                y = (y * (1.0 + tl.load(SC + condition + cols, mask=mask, other=0.0).to(ACC))
                     + tl.load(SH + condition + cols, mask=mask, other=0.0).to(ACC))
            tl.store(Y + base + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _xhat(x, mean, rstd, gain, b, mask, IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
          RECOMPUTE: tl.constexpr):
    # the normalized input, from the saved input and statistics or (RECOMPUTE) from the saved
    # output y = xhat * gain + b, which lets the input go (Apex's memory_efficient)
    if RECOMPUTE:
        xhat = x
        if HAS_B:
            xhat = xhat - b
        if HAS_W:
            xhat = xhat / tl.where(mask, gain, 1.0)   # no 0 / 0 in the masked columns
    elif IS_RMS:
        xhat = x * rstd
    else:
        xhat = (x - mean) * rstd
    return tl.where(mask, xhat, 0.0)


@triton.jit(do_not_specialize=["M", "rows_per_program", "dy_row", "x_row", "per_condition", "splits"])
def _backward_kernel(DY, X, W, B, Mean, Rstd, DX, DW_PARTIAL, DB_PARTIAL, SC, DSC_PARTIAL, DSH_PARTIAL, M, row_units,
                     dy_row, x_row, rows_per_program, offset, per_condition, splits, IS_RMS: tl.constexpr,
                     HAS_W: tl.constexpr, HAS_B: tl.constexpr, RECOMPUTE: tl.constexpr, HAS_MOD: tl.constexpr,
                     DENSE: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr,
                     ALIGN: tl.constexpr):
    N = row_units * ALIGN   # the row length; Triton sees that it is a multiple of ALIGN
    program = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    gain = tl.load(W + cols, mask=col_mask, other=0.0).to(ACC)[None, :] + offset if HAS_W else 1.0
    dw = tl.zeros([BLOCK_N], dtype=ACC)
    db = tl.zeros([BLOCK_N], dtype=ACC)
    if HAS_MOD:
        # each program stays within one condition's rows (splits programs per condition), so its
        # scale is one row and its sums of dy * (xhat * gain + b) and dy are that condition's
        condition = program // splits
        first = condition * per_condition + (program % splits) * rows_per_program
        last = tl.minimum(tl.minimum(first + rows_per_program, (condition + 1) * per_condition), M)
        scale = 1.0 + tl.load(SC + condition.to(tl.int64) * N + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
        b_out = tl.load(B + cols, mask=col_mask, other=0.0).to(ACC)[None, :] if HAS_B else 0.0
        dscale = tl.zeros([BLOCK_N], dtype=ACC)
        dshift = tl.zeros([BLOCK_N], dtype=ACC)
    else:
        first = program * rows_per_program
        last = tl.minimum(first + rows_per_program, M)
    for start in range(first, last, ROWS):
        rows, row_mask, mask = _row_tile(start, last, cols, col_mask, ROWS)
        offsets = _at(rows, cols, N)   # of dx; DENSE: of x and dy too
        x = tl.load(X + (offsets if DENSE else _at(rows, cols, x_row * ALIGN)), mask=mask, other=0.0).to(ACC)
        dy = tl.load(DY + (offsets if DENSE else _at(rows, cols, dy_row * ALIGN)), mask=mask, other=0.0).to(ACC)
        rstd = tl.load(Rstd + rows, mask=row_mask, other=0.0)[:, None]
        mean = 0.0 if (IS_RMS or RECOMPUTE) else tl.load(Mean + rows, mask=row_mask, other=0.0)[:, None]
        # the shift (only to recover x-hat from the output) is read per tile, not held: registers
        b = tl.load(B + cols, mask=col_mask, other=0.0).to(ACC)[None, :] if (RECOMPUTE and HAS_B) else 0.0
        xhat = _xhat(x, mean, rstd, gain, b, mask, IS_RMS, HAS_W, HAS_B, RECOMPUTE)
        if HAS_MOD:
            dscale += tl.sum(dy * (xhat * gain + b_out), axis=0)
            dshift += tl.sum(dy, axis=0)
            dy = dy * scale
        g = dy * gain
        # dx = rstd * (g - mean(g) - xhat * mean(g * xhat)); RMSNorm has no mean(g) term
        correction = xhat * (tl.sum(g * xhat, axis=1) / N)[:, None]
        if not IS_RMS:
            correction += (tl.sum(g, axis=1) / N)[:, None]
        tl.store(DX + offsets, ((g - correction) * rstd).to(DX.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, axis=0)
        db += tl.sum(dy, axis=0)
    if HAS_W:
        tl.store(DW_PARTIAL + program * N + cols, dw, mask=col_mask)
    if HAS_B:
        tl.store(DB_PARTIAL + program * N + cols, db, mask=col_mask)
    if HAS_MOD:
        tl.store(DSC_PARTIAL + program * N + cols, dscale, mask=col_mask)
        tl.store(DSH_PARTIAL + program * N + cols, dshift, mask=col_mask)


@triton.jit
def _chunk_gradients(X, DY, W, B, x_base, dy_base, start, N, mean, rstd, offset, IS_RMS: tl.constexpr,
                     HAS_W: tl.constexpr, HAS_B: tl.constexpr, RECOMPUTE: tl.constexpr, ACC: tl.constexpr,
                     BLOCK_N: tl.constexpr):
    # one chunk of a long row: its columns, mask, xhat and g = gain * dy
    cols = start + tl.arange(0, BLOCK_N)
    mask = cols < N
    gain = tl.load(W + cols, mask=mask, other=0.0).to(ACC) + offset if HAS_W else 1.0
    b = tl.load(B + cols, mask=mask, other=0.0).to(ACC) if (RECOMPUTE and HAS_B) else 0.0
    x = tl.load(X + x_base + cols, mask=mask, other=0.0).to(ACC)
    xhat = _xhat(x, mean, rstd, gain, b, mask, IS_RMS, HAS_W, HAS_B, RECOMPUTE)
    g = tl.load(DY + dy_base + cols, mask=mask, other=0.0).to(ACC) * gain
    return cols, mask, xhat, g


@triton.jit(do_not_specialize=["M", "dy_row", "x_row"])
def _backward_chunked_kernel(DY, X, W, B, Mean, Rstd, DX, M, row_units, dy_row, x_row, offset,
                             IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                             RECOMPUTE: tl.constexpr, DENSE: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr,
                             ALIGN: tl.constexpr):
    N = row_units * ALIGN   # the row length; Triton sees that it is a multiple of ALIGN
    # long rows, dx only: a pass for the row's two sums, a second (from L2) for dx
    for row in range(tl.program_id(0), M, tl.num_programs(0)):
        base = tl.cast(row, tl.int64) * N
        x_base = tl.cast(row, tl.int64) * (x_row * ALIGN)
        dy_base = tl.cast(row, tl.int64) * (dy_row * ALIGN)
        rstd = tl.load(Rstd + row)
        if IS_RMS or RECOMPUTE:
            mean = 0.0
        else:
            mean = tl.load(Mean + row)
        sum_g = tl.zeros([], dtype=ACC)
        sum_gx = tl.zeros([], dtype=ACC)
        for start in range(0, N, BLOCK_N):
            cols, mask, xhat, g = _chunk_gradients(X, DY, W, B, x_base, dy_base, start, N, mean, rstd, offset,
                                                   IS_RMS, HAS_W, HAS_B, RECOMPUTE, ACC, BLOCK_N)
            sum_g += tl.sum(g, axis=0)
            sum_gx += tl.sum(g * xhat, axis=0)
        for start in range(0, N, BLOCK_N):
            cols, mask, xhat, g = _chunk_gradients(X, DY, W, B, x_base, dy_base, start, N, mean, rstd, offset,
                                                   IS_RMS, HAS_W, HAS_B, RECOMPUTE, ACC, BLOCK_N)
            correction = xhat * (sum_gx / N)
            if not IS_RMS:
                correction += sum_g / N
            tl.store(DX + base + cols, ((g - correction) * rstd).to(DX.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M", "rows_per_program", "dy_row", "x_row"])
def _weight_gradient_kernel(DY, X, W, B, Mean, Rstd, DW_PARTIAL, DB_PARTIAL, M, row_units, dy_row, x_row,
                            rows_per_program, offset, IS_RMS: tl.constexpr, HAS_W: tl.constexpr,
                            HAS_B: tl.constexpr, RECOMPUTE: tl.constexpr, DENSE: tl.constexpr, ACC: tl.constexpr,
                            ROWS: tl.constexpr, BLOCK_N: tl.constexpr, ALIGN: tl.constexpr):
    N = row_units * ALIGN   # the row length; Triton sees that it is a multiple of ALIGN
    # long rows: sum(dy * xhat) and sum(dy) over a block of rows for one block of columns, in registers
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    dw = tl.zeros([BLOCK_N], dtype=ACC)
    db = tl.zeros([BLOCK_N], dtype=ACC)
    # the gain and shift only to recover x-hat from the output (held over the loop: registers)
    gain = tl.load(W + cols, mask=col_mask, other=0.0).to(ACC)[None, :] + offset if (RECOMPUTE and HAS_W) else 1.0
    b = tl.load(B + cols, mask=col_mask, other=0.0).to(ACC)[None, :] if (RECOMPUTE and HAS_B) else 0.0
    first = tl.program_id(1) * rows_per_program
    last = tl.minimum(first + rows_per_program, M)
    for start in range(first, last, ROWS):
        rows, row_mask, mask = _row_tile(start, last, cols, col_mask, ROWS)
        offsets = _at(rows, cols, N)   # DENSE: of both
        dy = tl.load(DY + (offsets if DENSE else _at(rows, cols, dy_row * ALIGN)), mask=mask, other=0.0).to(ACC)
        if HAS_W:
            x = tl.load(X + (offsets if DENSE else _at(rows, cols, x_row * ALIGN)), mask=mask, other=0.0).to(ACC)
            rstd = tl.load(Rstd + rows, mask=row_mask, other=0.0)[:, None]
            mean = 0.0 if (IS_RMS or RECOMPUTE) else tl.load(Mean + rows, mask=row_mask, other=0.0)[:, None]
            dw += tl.sum(dy * _xhat(x, mean, rstd, gain, b, mask, IS_RMS, HAS_W, HAS_B, RECOMPUTE), axis=0)
        db += tl.sum(dy, axis=0)
    partial = tl.program_id(1).to(tl.int64) * N + cols
    if HAS_W:
        tl.store(DW_PARTIAL + partial, dw, mask=col_mask)
    if HAS_B:
        tl.store(DB_PARTIAL + partial, db, mask=col_mask)


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0)


def _row_stride(t: torch.Tensor) -> int:
    return t.stride(0) if t.shape[0] > 1 else t.shape[1]


@torch.library.custom_op("normlib::rowwise_norm_forward", mutates_args=())
def _forward(x: torch.Tensor, residual: Optional[torch.Tensor], weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
             gate: Optional[torch.Tensor], scale: Optional[torch.Tensor], shift: Optional[torch.Tensor], eps: float,
             rms: bool, weight_offset: float, casting_mode: str, out_dtype: torch.dtype, residual_dtype: torch.dtype,
             memory_efficient: bool, per_condition: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, residual + [gate *] x or empty, mean or empty, rstd)`` for an ``(M, N)`` input whose
    rows are contiguous (any row stride, as is the residual's); ``gate``, ``scale`` and ``shift``
    are ``(M / per_condition, N)``, one row per condition (example or token);
    ``memory_efficient`` only changes what the backward saves."""
    m, n = x.shape
    y = torch.empty(m, n, device=x.device, dtype=out_dtype)
    summed = torch.empty(m, n, device=x.device, dtype=residual_dtype) if residual is not None else _empty(x)
    normalized_dtype = residual_dtype if residual is not None else x.dtype
    sd = stats_dtype(torch.promote_types(x.dtype, normalized_dtype))
    mean = torch.empty(m, device=x.device, dtype=sd) if not rms else torch.empty(0, device=x.device, dtype=sd)
    rstd = torch.empty(m, device=x.device, dtype=sd)
    if m == 0:
        return y, summed, mean, rstd
    block_n, rows, num_warps = _launch_config(n, x.dtype)
    x_row = _row_stride(x)
    r_row = _row_stride(residual) if residual is not None else n
    align = _alignment(x.dtype, n, x_row, r_row)
    flags = dict(IS_RMS=rms, HAS_W=weight is not None, HAS_B=bias is not None, HAS_RES=residual is not None,
                 HAS_GATE=gate is not None, HAS_MOD=scale is not None,
                 CAST=CASTING_MODES[casting_mode], DTYPE=_TL_DTYPES[normalized_dtype],
                 GAIN=_TL_DTYPES[promoted_dtype(normalized_dtype, weight, bias)], DENSE=x_row == r_row == n,
                 ACC=accumulator_dtype(sd), BLOCK_N=block_n, ALIGN=align)
    args = (x, residual if residual is not None else x, weight if weight is not None else x,
            bias if bias is not None else x, y, summed if residual is not None else y,
            mean if not rms else rstd, rstd, *(t if t is not None else x for t in (gate, scale, shift)),
            m, n // align, x_row // align, r_row // align, eps, weight_offset, per_condition)
    if _in_registers(n, x.dtype):
        _forward_kernel[(triton.cdiv(m, rows),)](*args, **flags, ROWS=rows, num_warps=num_warps)
    else:
        grid = (rows_in_flight(x.device, m, n * x.element_size()),)
        _forward_chunked_kernel[grid](*args, **flags, num_warps=num_warps)
    return y, summed, mean, rstd


@_forward.register_fake
def _(x, residual, weight, bias, gate, scale, shift, eps, rms, weight_offset, casting_mode, out_dtype, residual_dtype,
      memory_efficient, per_condition):
    m, n = x.shape
    normalized_dtype = residual_dtype if residual is not None else x.dtype
    sd = stats_dtype(torch.promote_types(x.dtype, normalized_dtype))
    return (x.new_empty(m, n, dtype=out_dtype),
            x.new_empty(m, n, dtype=residual_dtype) if residual is not None else x.new_empty(0),
            x.new_empty(0 if rms else m, dtype=sd), x.new_empty(m, dtype=sd))


@torch.library.custom_op("normlib::rowwise_norm_backward", mutates_args=())
def _backward(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
              scale: Optional[torch.Tensor], mean: torch.Tensor, rstd: torch.Tensor, rms: bool, has_bias: bool,
              weight_offset: float, recompute: bool, dx_dtype: torch.dtype, per_condition: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dweight or empty, dbias or empty, dscale or empty, dshift or empty)``; ``x`` is the
    normalized input (the sum with the residual), or with ``recompute`` the output, from which
    the kernels recompute x-hat; ``scale`` the modulation's, if any (rows in registers only)."""
    m, n = x.shape
    if dy.stride(-1) != 1:
        dy = dy.contiguous()
    dx = torch.empty(m, n, device=x.device, dtype=dx_dtype)
    has_w, modulated = weight is not None, scale is not None
    partial_dtype = rstd.dtype   # float32 partial sums (float64 for float64 inputs)
    acc = accumulator_dtype(partial_dtype)
    w_arg, b_arg, mean_arg = weight if has_w else x, bias if bias is not None else x, mean if not rms else rstd
    more_held = (recompute and has_bias) or scale is not None
    block_n, rows, num_warps = _launch_config(n, x.dtype, backward=True, more_held=more_held)
    dy_row, x_row = _row_stride(dy), _row_stride(x)
    align = _alignment(x.dtype, n, dy_row, x_row)
    strides = (dy_row // align, x_row // align)
    flags = dict(IS_RMS=rms, HAS_W=has_w, HAS_B=has_bias, RECOMPUTE=recompute, DENSE=dy_row == x_row == n, ACC=acc,
                 ALIGN=align)
    dscale, dshift = _empty(rstd), _empty(rstd)
    if _in_registers(n, x.dtype, backward=True, more_held=more_held):
        # rows in registers: each program of a persistent grid (as many as the GPU holds at once)
        # sums its rows' dgamma/dbeta (and, modulated, its condition's dscale/dshift)
        options = dict(flags, HAS_MOD=modulated, BLOCK_N=block_n, ROWS=rows, num_warps=num_warps)
        args = [dy, x, w_arg, b_arg, mean_arg, rstd, dx, rstd, rstd, scale if modulated else rstd, rstd, rstd,
                m, n // align, *strides, m, weight_offset, per_condition, 1]
        programs = persistent_programs(_backward_kernel, tuple(args), options, x.device, m)
        rows_per_program = triton.cdiv(m, programs)
        if modulated:   # programs within one condition each: splits of its rows
            conditions = m // per_condition
            splits = max(1, min(triton.cdiv(per_condition, MIN_ROWS_PER_PROGRAM), programs // max(1, conditions)))
            programs, rows_per_program = conditions * splits, triton.cdiv(per_condition, splits)
            args[-1] = splits
        partials = [torch.zeros(programs, n, device=x.device, dtype=partial_dtype) if wanted else _empty(rstd)
                    for wanted in (has_w, has_bias, modulated, modulated)]
        if m > 0:
            args[7:9] = [p if p.numel() else rstd for p in partials[:2]]
            args[10:12] = [p if p.numel() else rstd for p in partials[2:]]
            args[16] = rows_per_program
            _backward_kernel[(programs,)](*args, **options)
        dw_partial, db_partial = partials[:2]
        if modulated:
            dscale, dshift = (p.view(conditions, -1, n).sum(1).to(scale.dtype) for p in partials[2:])
    else:
        # long rows: dx row by row, then dgamma/dbeta over blocks of columns
        tile_rows, tile_cols = WEIGHT_GRADIENT_TILE
        col_blocks = triton.cdiv(n, tile_cols)
        row_programs = max(1, min(triton.cdiv(m, tile_rows), program_budget(x.device) // col_blocks))
        dw_partial = torch.zeros(row_programs, n, device=x.device, dtype=partial_dtype) if has_w else _empty(rstd)
        db_partial = torch.zeros(row_programs, n, device=x.device, dtype=partial_dtype) if has_bias else _empty(rstd)
        if m > 0:
            grid = (rows_in_flight(x.device, m, 2 * n * x.element_size()),)
            _backward_chunked_kernel[grid](dy, x, w_arg, b_arg, mean_arg, rstd, dx, m, n // align, *strides,
                                           weight_offset, **flags, BLOCK_N=block_n, num_warps=num_warps)
            if has_w or has_bias:
                _weight_gradient_kernel[(col_blocks, row_programs)](
                    dy, x, w_arg, b_arg, mean_arg, rstd, dw_partial if has_w else rstd,
                    db_partial if has_bias else rstd, m, n // align, *strides, triton.cdiv(m, row_programs),
                    weight_offset, **flags, ROWS=tile_rows, BLOCK_N=tile_cols, num_warps=4)
    # second step: reduce the bounded (programs, N) buffers
    dw = dw_partial.sum(0).to(weight.dtype) if has_w else _empty(x)
    db = db_partial.sum(0).to(dx_dtype if bias is None else bias.dtype) if has_bias else _empty(x)
    return dx, dw, db, dscale, dshift


@_backward.register_fake
def _(dy, x, weight, bias, scale, mean, rstd, rms, has_bias, weight_offset, recompute, dx_dtype, per_condition):
    m, n = x.shape
    return (x.new_empty(m, n, dtype=dx_dtype),
            x.new_empty(n if weight is not None else 0, dtype=weight.dtype if weight is not None else x.dtype),
            x.new_empty(n if has_bias else 0, dtype=bias.dtype if bias is not None else dx_dtype),
            torch.empty_like(scale) if scale is not None else rstd.new_empty(0),
            torch.empty_like(scale) if scale is not None else rstd.new_empty(0))


def _setup_context(ctx, inputs, output):
    (x, residual, weight, bias, gate, scale, shift, eps, rms, weight_offset, casting_mode, out_dtype, residual_dtype,
     memory_efficient, per_condition) = inputs
    y, summed, mean, rstd = output
    normalized = summed if residual is not None else x
    ctx.save_for_backward(y if memory_efficient else normalized, weight, bias, scale, mean, rstd,
                          x if gate is not None else None, gate)
    ctx.rms, ctx.has_bias, ctx.weight_offset, ctx.recompute = rms, bias is not None, weight_offset, memory_efficient
    ctx.dtypes = x.dtype, residual.dtype if residual is not None else None, normalized.dtype
    ctx.per_condition, ctx.has_shift = per_condition, shift is not None


def _backward_formula(ctx, dy, dsum, dmean, drstd):
    saved, weight, bias, scale, mean, rstd, branch, gate = ctx.saved_tensors
    x_dtype, residual_dtype, normalized_dtype = ctx.dtypes
    dx, dw, db, dscale, dshift = _backward(dy, saved, weight, bias, scale, mean, rstd, ctx.rms, ctx.has_bias,
                                           ctx.weight_offset, ctx.recompute, normalized_dtype, ctx.per_condition)
    if residual_dtype is not None and dsum is not None:
        dx = dx + dsum   # the sum is also an output: its gradient joins the normalization's
    dgate = None
    if gate is not None:   # the gated residual's backward, in PyTorch: d(branch) = gate * d(sum)
        by_condition = dx.view(gate.shape[0], -1, dx.shape[1])
        dgate = (by_condition.float() * branch.view(by_condition.shape).float()).sum(1).to(gate.dtype)
        dbranch = (by_condition * gate[:, None, :].to(dx.dtype)).view(dx.shape)
    else:
        dbranch = dx
    return (dbranch.to(x_dtype), dx.to(residual_dtype) if residual_dtype is not None else None,
            dw if weight is not None else None, db if ctx.has_bias else None, dgate,
            dscale if scale is not None else None, dshift if ctx.has_shift else None, *[None] * 8)


_forward.register_autograd(_backward_formula, setup_context=_setup_context)


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t`` as ``(rows, n)`` without a copy when its rows are contiguous and evenly strided (a
    slice of a fused projection, say); a contiguous copy otherwise."""
    flat = t.reshape(-1, n)
    return flat if flat.stride(-1) == 1 or n == 1 else flat.contiguous()


def _conditions(t: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    """A per-example or per-token modulation tensor as ``(conditions, N)``."""
    return t.reshape(-1, n).contiguous() if t is not None else None


def _rowwise(x, weight, bias, eps, residual, rms, weight_offset, casting_mode, out_dtype, residual_dtype,
             memory_efficient, gate=None, scale=None, shift=None):
    n = x.shape[-1]
    check_input(x, "input", min_dim=1, weight=weight, bias=bias)
    check_norm_options(x, weight, weight_offset, casting_mode, out_dtype, residual, residual_dtype, memory_efficient)
    check_modulation(x, residual, gate, scale, shift, memory_efficient)
    gate, scale, shift = (_conditions(t, n) for t in (gate, scale, shift))
    if residual is not None and residual_dtype is None:
        residual_dtype = residual.dtype
    out_dtype = norm_output_dtype(x, weight, bias, casting_mode, out_dtype, residual_dtype if residual is not None else None)
    weight = weight.contiguous() if weight is not None else None
    bias = bias.contiguous() if bias is not None else None
    rows = x.numel() // max(1, n)
    conditions = next((t.shape[0] for t in (gate, scale) if t is not None), 1)
    fused = scale is not None and _in_registers(n, x.dtype, backward=True, more_held=True)
    y, summed, _, _ = _forward(_rows(x, n), _rows(residual, n) if residual is not None else None, weight, bias, gate,
                               scale if fused else None, shift if fused else None, float(eps), rms,
                               float(weight_offset), casting_mode, stats_dtype(out_dtype) if scale is not None and not fused
                               else out_dtype, residual_dtype or x.dtype, memory_efficient,
                               max(1, rows // max(1, conditions)))
    if scale is not None and not fused:
        # rows too long for the fused backward: the modulation in PyTorch, on the float32 norm
        by_condition = y.view(conditions, -1, n)
        y = (by_condition * (1 + scale[:, None].to(y.dtype)) + shift[:, None].to(y.dtype)).to(out_dtype).view(rows, n)
    y = y.view(x.shape)
    return (y, summed.view(x.shape)) if residual is not None else y


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
               eps: float = 1e-5, residual: Optional[torch.Tensor] = None, *, weight_offset: float = 0.0,
               casting_mode: str = "fp32", out_dtype: Optional[torch.dtype] = None,
               residual_dtype: Optional[torch.dtype] = None, memory_efficient: bool = False,
               gate: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
               shift: Optional[torch.Tensor] = None):
    """LayerNorm over the last dimension of ``x`` (float16, bfloat16, float32 or float64) with the
    Triton kernels. With ``residual``, normalizes ``x + residual`` (added in float32, stored in
    ``residual_dtype``, by default the residual's) and returns ``(y, x + residual)``. The keyword
    options are :func:`normlib.functional.layer_norm`'s, including adaLN's ``scale``/``shift``
    and adaLN-Zero's ``gate``. Rows may have any stride (their elements contiguous): they are
    read in place. Differentiable (a ``torch.library`` custom op, so it also works under
    ``torch.compile``). Derived in ``chapters/20_kernels.ipynb``."""
    return _rowwise(x, weight, bias, eps, residual, False, weight_offset, casting_mode, out_dtype, residual_dtype,
                    memory_efficient, gate, scale, shift)


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, eps: Optional[float] = None,
             residual: Optional[torch.Tensor] = None, *, weight_offset: float = 0.0, casting_mode: str = "fp32",
             out_dtype: Optional[torch.dtype] = None, residual_dtype: Optional[torch.dtype] = None,
             memory_efficient: bool = False, gate: Optional[torch.Tensor] = None,
             scale: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None):
    """RMSNorm over the last dimension of ``x`` with the Triton kernels; same conventions as
    :func:`layer_norm`, and ``eps=None`` is the input dtype's machine epsilon (normlib's and
    torch's default). Derived in ``chapters/20_kernels.ipynb``."""
    return _rowwise(x, weight, None, torch.finfo(x.dtype).eps if eps is None else eps, residual, True, weight_offset,
                    casting_mode, out_dtype, residual_dtype, memory_efficient, gate, scale, shift)
