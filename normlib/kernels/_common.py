"""What the kernel families share: the accumulator dtype, the device check, the size of grids
(persistent ones from the compiled kernel's occupancy), and the Triton helpers for tile
statistics. Argument checks and the statistics dtype are normlib's one set
(``normlib._validation``)."""

import functools
import os

import torch
import triton
import triton.language as tl

from normlib._validation import check_param, check_tensor, stats_dtype  # noqa: F401 (re-exported to the kernels)

# read once, when the kernels are defined: triton.jit makes interpreted kernels from then on
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
COMPILE_ONLY = False           # set by normlib.kernels.check: launches compile for a target, run nothing
PROGRAMS_PER_SM = 4            # long-row grids and the dgamma/dbeta kernel: programs per streaming multiprocessor
INTERPRETER_PROGRAMS = 4       # under TRITON_INTERPRET=1 each program costs milliseconds
MIN_ROWS_PER_PROGRAM = 8       # persistent backward: its partial-sum row costs at most 1/8 of what it reads
# what one SM offers a program (CUDA programming guide, compute capabilities 8.x-12.x)
REGISTERS_PER_SM = 65536
MAX_WARPS_PER_SM = 64
MAX_PROGRAMS_PER_SM = 32
SHARED_PER_SM = {80: 164 * 1024, 90: 228 * 1024, 100: 228 * 1024}   # others: 100 KB (sm_86, sm_89, sm_120)
SHARED_RESERVED_PER_PROGRAM = 1024


def accumulator_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def check_input(x: torch.Tensor, name: str, min_dim: int, **params) -> None:
    """A floating-point tensor the kernels can read (CUDA, or CPU in the interpreter), and its
    optional per-feature tensors ``params`` (name -> tensor) of shape ``(x.shape[1],)`` for
    ``min_dim`` 2 (the channels) or ``(x.shape[-1],)`` otherwise (the row)."""
    check_tensor(x, name, min_dim=min_dim)
    for param_name, p in params.items():
        check_param(p, param_name, (x.shape[1] if min_dim >= 2 else x.shape[-1],), x)
    if not (x.is_cuda or INTERPRETED or COMPILE_ONLY):
        raise ValueError(f"{name}: expected a CUDA tensor (CPU tensors only in Triton's interpreter, "
                         f"TRITON_INTERPRET=1 set before normlib.kernels is imported), got device {x.device}")


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def program_budget(device: torch.device) -> int:
    """Programs of a bounded grid: a few per SM on a GPU, a handful in the interpreter. It
    bounds the partial-sum buffers, whatever the number of rows."""
    if device.type == "cuda":
        return PROGRAMS_PER_SM * _multiprocessors(_index(device))
    return INTERPRETER_PROGRAMS


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def programs_per_sm(registers: int, num_warps: int, shared_bytes: int, arch: int) -> int:
    """Programs of a compiled kernel that one SM holds at once (occupancy): registers are
    allocated per warp in units of 256 (8 per thread), at most 64 warps and 32 programs per SM,
    and the shared memory of compute capability ``arch`` (80 for sm_80)."""
    per_warp = -(-registers * 32 // 256) * 256
    by_registers = REGISTERS_PER_SM // (per_warp * num_warps)
    by_shared = SHARED_PER_SM.get(arch, 100 * 1024) // (shared_bytes + SHARED_RESERVED_PER_PROGRAM)
    return min(by_registers, MAX_WARPS_PER_SM // num_warps, MAX_PROGRAMS_PER_SM, by_shared)


_RESIDENT: dict = {}


def persistent_programs(kernel, args: tuple, options: dict, device: torch.device, rows: int) -> int:
    """Programs of a persistent grid over ``rows`` rows: as many as the GPU holds at once (the
    compiled kernel's registers, warps and shared memory, times the SMs), but no fewer than
    ``MIN_ROWS_PER_PROGRAM`` rows each; a handful in the interpreter and when only compiling.
    ``args`` and ``options`` are a launch's (their integers that scale with the rows are not
    specialized, so any values compile the same variant)."""
    limit = max(1, -(-rows // MIN_ROWS_PER_PROGRAM))
    if device.type != "cuda" or COMPILE_ONLY:
        return min(limit, INTERPRETER_PROGRAMS)
    key = (kernel, _index(device), tuple(sorted((k, repr(v)) for k, v in options.items())))
    if key not in _RESIDENT:
        compiled = kernel.warmup(*args, grid=(1,), **options)   # compiles (or finds) it; launches nothing
        compiled._init_handles()                                  # loads it: n_regs
        major, minor = torch.cuda.get_device_capability(_index(device))
        _RESIDENT[key] = _multiprocessors(_index(device)) * programs_per_sm(
            compiled.n_regs, compiled.metadata.num_warps, compiled.metadata.shared, 10 * major + minor)
    return max(1, min(limit, _RESIDENT[key]))


@functools.lru_cache(maxsize=None)
def _l2_bytes(index: int) -> int:
    return torch.cuda.get_device_properties(index).L2_cache_size


def rows_in_flight(device: torch.device, rows: int, row_bytes: int) -> int:
    """Programs of a grid that walks long rows (two passes each): as many as keep the rows in
    flight within half the L2 cache, so that the second pass reads them there, but at least one
    per SM and at most ``PROGRAMS_PER_SM`` per SM; a handful in the interpreter."""
    if device.type != "cuda":
        return max(1, min(rows, INTERPRETER_PROGRAMS))
    sms = _multiprocessors(_index(device))
    return max(1, min(rows, max(sms, min(PROGRAMS_PER_SM * sms, _l2_bytes(_index(device)) // 2 // max(1, row_bytes)))))


@triton.jit
def tile_statistics(x, mask, count):
    """Mean and sum of squared deviations of the ``count`` masked elements of a tile (any rank).
    The mean of the deviations is added back to the mean: zero in exact arithmetic, the rounding
    error of the first sum in floating point (it matters when the mean is large)."""
    inverse = 1.0 / count   # one division: a float64 division is a subroutine call
    mean = tl.sum(x) * inverse
    mean += tl.sum(tl.where(mask, x - mean, 0.0)) * inverse
    deviation = tl.where(mask, x - mean, 0.0)
    return mean, tl.sum(deviation * deviation)


@triton.jit
def chan_merge(count, mean, m2, tile_count, tile_mean, tile_m2):
    """Merge a tile's count, mean and sum of squared deviations into the running ones
    (Chan, Golub & LeVeque 1983): stable, unlike sums of squares."""
    total = count + tile_count
    delta = tile_mean - mean
    share = tile_count / total   # one division: a float64 division is a subroutine call
    return total, mean + delta * share, m2 + tile_m2 + delta * delta * count * share
