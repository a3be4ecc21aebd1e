"""What the compiler makes of the kernels, without a GPU: ``python -m normlib.kernels.check``.

Triton's compiler and the ``ptxas`` it ships run on a CPU. This module runs the kernels'
own dispatchers (:func:`~normlib.kernels.rowwise.layer_norm`, ...) on small CPU tensors with
Triton pointed at a compile target (sm_80, sm_90) instead of a device: every launch compiles
the variant a GPU would compile for those arguments (the same constexprs, warps and integer
and alignment specializations), and nothing is launched. Each compiled variant is then read
with the ``cuobjdump`` Triton ships: registers, spilled bytes (stack and local memory),
shared memory, the widest global load (from the PTX), and the programs per SM that
registers, warps and shared memory allow.

The check fails on a compile error, on any spill, on a contiguous path whose loads are not
128 bits wide where the row length allows it, and on a kernel that compiles more than one
variant as only the batch size changes. Correctness is the interpreter tests' job
(``tests/test_kernels.py``); this is about registers, spills and vector width.

Derived in ``chapters/20_kernels.ipynb``.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterator, Optional

import torch

from normlib.kernels._common import programs_per_sm

ARCHS = (80, 90)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
BATCH_SIZES = (1, 2, 3, 5, 8, 16, 17, 31, 32, 48, 64, 100, 127, 128, 256, 333, 512, 1000, 1024, 4096)


@dataclasses.dataclass
class Launch:
    """One compiled kernel variant and what the compiler made of it."""
    kernel: str
    case: str
    arch: int
    num_warps: int
    constexprs: str
    registers: int
    spilled_bytes: int         # stack + local memory per thread: spills (and local arrays)
    shared_bytes: int
    widest_load_bits: int
    programs_per_sm: int
    needs_128_bit_loads: bool


@dataclasses.dataclass
class Case:
    """A call of a dispatcher: ``run()`` builds CPU tensors and calls it; launches compile only.
    ``contiguous_bytes`` is the length in bytes of the contiguous runs the kernels read (a row,
    a channel's positions); 128-bit loads are expected where it is a multiple of 16, for
    16- and 32-bit dtypes (a float64 element is 64 bits; two per load are not required)."""
    name: str
    run: Callable[[], None]
    contiguous_bytes: int
    dtype: str = "bf16"


class _CompileOnlyDriver:
    """Stands in for Triton's CUDA driver: a compile target and no device."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget
        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return f"sm_{self.arch}"   # the key of the kernels' per-device caches

    def get_current_stream(self, device=None):
        return None


@contextlib.contextmanager
def compile_only(arch: int) -> Iterator[list]:
    """Within the block, every kernel launch compiles for ``sm_<arch>`` and launches nothing;
    yields the list of ``(jit function, compiled kernel)`` it appends to."""
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    from normlib.kernels import _common
    compiled = []
    run, previous = JITFunction.run, driver._active

    def compile_run(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((self, kernel))
        return kernel

    JITFunction.run = compile_run
    driver.set_active(_CompileOnlyDriver(arch))
    _common.COMPILE_ONLY = True
    try:
        yield compiled
    finally:
        JITFunction.run, driver._active, _common.COMPILE_ONLY = run, previous, False


def _cuobjdump() -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _read_cubin(cubin: bytes) -> tuple[int, int]:
    """(registers, stack + local bytes per thread) from ``cuobjdump -res-usage``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", usage))
    return int(fields["REG"]), int(fields["STACK"]) + int(fields["LOCAL"])


def widest_global_load(ptx: str) -> int:
    """Bits of the widest global load in the PTX (``ld.global.v4.b32`` is 128, which ptxas
    emits as ``LDG.E.128``; reading the PTX is much faster than disassembling the cubin)."""
    widest = 0
    for token in re.findall(r"\bld\.global[\w.:]*", ptx):
        parts = token.split(".")
        lanes = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d", p)), 1)
        bits = next((int(p[1:]) for p in reversed(parts) if re.fullmatch(r"[bfsu]\d+", p)), 0)
        widest = max(widest, lanes * bits)
    return widest


def _describe(jit_fn, kernel) -> tuple[str, str]:
    names = [p.name for p in jit_fn.params]
    constexprs = {names[path[0]]: value for path, value in kernel.src.constants.items()}
    shown = ", ".join(f"{k}={getattr(v, 'name', v)}" for k, v in constexprs.items())
    return f"{jit_fn.__module__.rsplit('.', 1)[-1]}.{jit_fn.__name__}", shown


def compile_case(case: Case, arch: int) -> list[Launch]:
    """Compile one case for ``sm_<arch>`` and read every kernel variant it launched."""
    launches, seen = [], set()
    with compile_only(arch) as compiled:
        case.run()
    for jit_fn, kernel in compiled:
        if id(kernel) in seen:
            continue
        seen.add(id(kernel))
        name, constexprs = _describe(jit_fn, kernel)
        registers, spilled = _read_cubin(kernel.asm["cubin"])
        widest = widest_global_load(kernel.asm["ptx"])
        shared = kernel.metadata.shared
        warps = kernel.metadata.num_warps
        launches.append(Launch(name, case.name, arch, warps, constexprs, registers, spilled, shared, widest,
                               programs_per_sm(registers, warps, shared, arch),
                               case.contiguous_bytes % 16 == 0 and case.dtype != "fp64"))
    return launches


def variants_across_batch_sizes(make_case: Callable[[int], Case], arch: int = 90) -> dict[str, int]:
    """The most variants any one configuration (kernel, constexprs, warps) of each kernel
    compiled when only the batch size changes (one call per size in ``BATCH_SIZES``): 1 when
    no argument that scales with the batch is specialized."""
    variants: dict[tuple, set] = {}
    with compile_only(arch) as compiled:
        for size in BATCH_SIZES:
            make_case(size).run()
    for jit_fn, kernel in compiled:
        name, constexprs = _describe(jit_fn, kernel)
        variants.setdefault((name, constexprs, kernel.metadata.num_warps), set()).add(id(kernel))
    most: dict[str, int] = {}
    for (name, _, _), ids in variants.items():
        most[name] = max(most.get(name, 0), len(ids))
    return most


# ---------------------------------------------------------------- the cases
def _tensor(shape, dtype, channels_last=False, grad=True):
    x = torch.randn(shape, dtype=torch.float32).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x.requires_grad_(grad)


def _backward(y):
    y.backward(torch.ones_like(y))


def rowwise_case(n: int, dtype: str, rms: bool = False, affine: bool = True, residual: bool = False,
                 rows: int = 64, weight_dtype: Optional[str] = None, strided: bool = False, modulated: bool = False,
                 **options) -> Case:
    """One row-wise configuration; ``weight_dtype`` for mixed dtypes (float32 weights, and then a
    float32 residual stream), ``strided`` rows read from a slice of a wider tensor, ``modulated``
    adaLN-Zero's gate, scale and shift (two examples), ``options`` the keyword options of
    :func:`normlib.kernels.rowwise.layer_norm`."""
    from normlib.kernels import rowwise
    t = DTYPES[dtype]
    wt = DTYPES[weight_dtype or dtype]
    name = f"{'rms' if rms else 'layer'}_norm N={n} {dtype}" + ("" if affine else " no affine") + \
        (" +residual" if residual else "") + (f" rows={rows}" if rows != 64 else "") + \
        (f" {weight_dtype} weight" if weight_dtype else "") + (" strided" if strided else "") + \
        (" modulated" if modulated else "") + \
        "".join(f" {k}={v}" for k, v in options.items())

    def run():
        x = _tensor((rows, 3 * n), t)[:, n:2 * n] if strided else _tensor((rows, n), t)
        w = _tensor((n,), wt) if affine else None
        r = _tensor((rows, n), wt if weight_dtype else t) if residual else None
        if modulated:
            x, r = x.reshape(2, rows // 2, n), r.reshape(2, rows // 2, n)
            options.update(zip(("gate", "scale", "shift"), (_tensor((2, n), t) for _ in range(3))))
        if rms:
            y = rowwise.rms_norm(x, w, residual=r, **options)
        else:
            y = rowwise.layer_norm(x, w, _tensor((n,), wt) if affine else None, residual=r, **options)
        _backward(y[0] + y[1] if residual else y)
    return Case(name, run, n * t.itemsize, dtype)


def dyt_case(shape: tuple, dtype: str, channels_last: bool = True) -> Case:
    from normlib.kernels import dyt
    t = DTYPES[dtype]
    name = f"dyt {'x'.join(map(str, shape))} {dtype}" + ("" if channels_last else " channels-first")

    def run():
        channels = shape[-1] if channels_last else shape[1]
        _backward(dyt.dyt(_tensor(shape, t), _tensor((1,), t), _tensor((channels,), t), _tensor((channels,), t),
                          channels_last))
    return Case(name, run, shape[-1] * t.itemsize, dtype)


def qk_norm_case(d: int, dtype: str, rms: bool = True, rotary: bool = True, heads: int = 8, tokens: int = 64) -> Case:
    from normlib.kernels import qk_norm
    t = DTYPES[dtype]
    name = f"qk_norm D={d} {dtype}" + ("" if rms else " layer_norm") + (" rotary" if rotary else "")

    def run():
        qkv = _tensor((2, tokens, 3 * heads * d), t)
        keys = qkv.view(2, tokens, 3, heads, d)[:, :, 1]          # read in place from the projection
        w = _tensor((d,), t)
        cos, sin = (torch.rand(tokens, d // 2), torch.rand(tokens, d // 2)) if rotary else (None, None)
        _backward(qk_norm.qk_norm(keys, w, None, None if rms else _tensor((d,), t), cos, sin, rms))
    return Case(name, run, d * t.itemsize, dtype)


def group_norm_case(channels: int, groups: int, positions: tuple[int, int], dtype: str, channels_last: bool = False,
                    affine: bool = True, batch: int = 2, modulated: bool = False, silu: bool = False) -> Case:
    """One GroupNorm configuration; ``modulated`` and ``silu``: a UNet's scale-shift and SiLU fused."""
    from normlib.kernels import group_norm
    t = DTYPES[dtype]
    name = f"group_norm C={channels} G={groups} HW={positions[0]}x{positions[1]} {dtype}" + \
        (" channels_last" if channels_last else "") + ("" if affine else " no affine") + \
        (f" N={batch}" if batch != 2 else "") + (" modulated" if modulated else "") + (" silu" if silu else "")

    def run():
        x = _tensor((batch, channels, *positions), t, channels_last)
        w, b = (_tensor((channels,), t), _tensor((channels,), t)) if affine else (None, None)
        scale, shift = (_tensor((batch, channels), t), _tensor((batch, channels), t)) if modulated else (None, None)
        _backward(group_norm.group_norm(x, groups, w, b, 1e-5, scale, shift, silu))
    run_bytes = (channels // groups if channels_last else positions[0] * positions[1]) * t.itemsize
    return Case(name, run, run_bytes, dtype)


def batch_norm_case(channels: int, positions: tuple[int, ...], dtype: str, channels_last: bool = False,
                    affine: bool = True, batch: int = 8) -> Case:
    from normlib.kernels import batch_norm
    t = DTYPES[dtype]
    spatial = "x".join(map(str, positions)) or "-"
    name = f"batch_norm C={channels} HW={spatial} {dtype}" + (" channels_last" if channels_last else "") + \
        ("" if affine else " no affine") + (f" N={batch}" if batch != 8 else "")

    def run():
        x = _tensor((batch, channels, *positions), t, channels_last)
        w, b = (_tensor((channels,), t), _tensor((channels,), t)) if affine else (None, None)
        y, mean, var = batch_norm.batch_norm_training(x, w, b)
        _backward(y)
        with torch.no_grad():
            batch_norm.batch_norm_inference(x, mean, var, w, b)
    size = 1
    for p in positions:
        size *= p
    return Case(name, run, (channels if channels_last or not positions else size) * t.itemsize, dtype)


def cases() -> list[Case]:
    """The launch configurations the dispatchers can choose, as calls: in bfloat16 and float32
    each row length that changes a block size or a warp count (powers of two, 1 to 16,384)
    and the chunked path; float16 and float64 at six lengths (float16 compiles as bfloat16
    does, with other conversions); with and without the affine parameters and the residual;
    GroupNorm and BatchNorm in both layouts, training and inference."""
    from normlib.kernels import rowwise
    found = []
    every_length = [2 ** k for k in range(15)] + [65536, 262144]   # every block size, then the chunked path
    some_lengths = [64, 1024, 4096, 8192, 16384, 65536]              # float16 compiles as bfloat16 does
    for dtype, lengths in (("bf16", every_length), ("fp32", every_length), ("fp16", some_lengths),
                           ("fp64", some_lengths)):
        for n in lengths:
            for rms in (False, True):
                found.append(rowwise_case(n, dtype, rms, rows=min(64, max(2, 2 ** 22 // n // 64))))
    for n in (1000, 4097, rowwise.max_fused_n(torch.bfloat16) + 1234):   # lengths not multiples of 16
        found.append(rowwise_case(n, "bf16"))
    for n in (64, 4096, 16384, 65536):                          # the other flags
        for dtype in ("bf16", "fp32"):
            found.append(rowwise_case(n, dtype, affine=False))
            found.append(rowwise_case(n, dtype, residual=True))
            found.append(rowwise_case(n, dtype, rms=True, residual=True))
    for n in (64, 4096, 8192, 16384, 65536):   # the options: casting, offset gain, mixed dtypes, strides
        for rms in (False, True):
            found.append(rowwise_case(n, "bf16", rms, casting_mode="llama", weight_offset=1.0))
            found.append(rowwise_case(n, "bf16", rms, casting_mode="none"))
            found.append(rowwise_case(n, "bf16", rms, memory_efficient=True))
            found.append(rowwise_case(n, "fp32", rms, memory_efficient=True))
            found.append(rowwise_case(n, "bf16", rms, residual=True, weight_dtype="fp32", strided=True))
            found.append(rowwise_case(n, "bf16", rms, residual=True, modulated=True))
    for dtype in DTYPES:   # per-head QK-norm, with and without the rotary embedding
        for d in (64, 128, 256, 4096):
            for rms, rotary in ((True, True), (True, False), (False, True)):
                found.append(qk_norm_case(d, dtype, rms, rotary, heads=8 if d <= 256 else 1))
    for dtype in DTYPES:   # DyT, both layouts
        for shape in ((64, 4096), (64, 1000), (8, 64, 32, 32), (8, 3, 7, 7)):
            found.append(dyt_case(shape, dtype, channels_last=len(shape) == 2))
    for dtype in DTYPES:
        for channels_last in (False, True):
            for channels, groups, hw in ((32, 32, (32, 32)), (64, 32, (16, 16)), (320, 32, (16, 16)),
                                         (128, 8, (8, 8)), (2048, 32, (7, 7)), (64, 1, (4, 4))):
                found.append(group_norm_case(channels, groups, hw, dtype, channels_last))
        found.append(group_norm_case(64, 32, (16, 16), dtype, affine=False))
        for channels_last in (False, True):   # one group: its positions split across programs
            found.append(group_norm_case(64, 1, (64, 64), dtype, channels_last, batch=1))
            # a diffusion UNet's norm, scale-shift and SiLU, at batch 2 and (sliced) 1
            found.append(group_norm_case(320, 32, (16, 16), dtype, channels_last, modulated=True, silu=True))
            found.append(group_norm_case(320, 32, (32, 32), dtype, channels_last, batch=1, modulated=True,
                                         silu=True))
            found.append(group_norm_case(64, 32, (16, 16), dtype, channels_last, silu=True))
        for channels_last in (False, True):
            for channels, hw in ((64, (32, 32)), (256, (7, 7)), (3, (5, 5))):
                found.append(batch_norm_case(channels, hw, dtype, channels_last))
        found.append(batch_norm_case(512, (), dtype))            # BatchNorm1d on (N, C)
        found.append(batch_norm_case(64, (16,), dtype))           # (N, C, L)
        found.append(batch_norm_case(64, (32, 32), dtype, affine=False))
    return found


def batch_size_cases() -> dict[str, Callable[[int], Case]]:
    """The families whose variants must not depend on the batch size, as functions of it."""
    return {
        "rowwise (N=4096)": lambda m: rowwise_case(4096, "bf16", rows=m),
        "rowwise, long rows (N=65536)": lambda m: rowwise_case(65536, "bf16", rows=min(m, 64)),
        "group_norm": lambda m: group_norm_case(64, 32, (8, 8), "bf16", batch=m),
        "batch_norm": lambda m: batch_norm_case(64, (7, 7), "bf16", batch=m),
        "batch_norm channels_last": lambda m: batch_norm_case(64, (7, 7), "bf16", channels_last=True, batch=m),
    }


# ---------------------------------------------------------------- the check
def problems(launches: list[Launch]) -> list[str]:
    """What fails: spills, and narrow loads on contiguous paths whose runs allow 128 bits."""
    found = []
    for launch in launches:
        where = f"{launch.kernel} [{launch.case}] sm_{launch.arch}"
        if launch.spilled_bytes:
            found.append(f"{where}: {launch.spilled_bytes} bytes spilled per thread ({launch.registers} registers)")
        if launch.needs_128_bit_loads and launch.widest_load_bits < 128:
            found.append(f"{where}: widest global load {launch.widest_load_bits} bits, 128 expected")
    return found


def _compile_all(arch: int, names: Optional[list[str]]) -> tuple[list[Launch], list[str]]:
    launches, errors = [], []
    for case in cases():
        if names and case.name not in names:
            continue
        try:
            launches += compile_case(case, arch)
        except Exception as error:   # a compile error is a finding, reported with its case
            errors.append(f"[{case.name}] sm_{arch}: {type(error).__name__}: {str(error).splitlines()[0][:300]}")
    return launches, errors


def run_check(archs=ARCHS, names: Optional[list[str]] = None) -> tuple[list[Launch], list[str], dict]:
    """Compile every case for each arch (one process per arch) and count variants across batch
    sizes. Returns (launches, problems, variants)."""
    launches, found = [], []
    with ProcessPoolExecutor(max_workers=min(len(archs), os.cpu_count() or 1)) as pool:
        for arch_launches, errors in pool.map(_compile_all, archs, [names] * len(archs)):
            launches += arch_launches
            found += errors
    found += problems(launches)
    variants = {}
    for family, make_case in batch_size_cases().items():
        variants[family] = variants_across_batch_sizes(make_case)
        for kernel, count in variants[family].items():
            if count != 1:
                found.append(f"{family}: {kernel} compiled {count} variants for {len(BATCH_SIZES)} batch sizes")
    return launches, found, variants


def table(launches: list[Launch]) -> str:
    """The launches as a Markdown table."""
    head = "| kernel | case | arch | warps | constexprs | registers | spilled bytes | shared bytes | widest load | programs/SM |"
    lines = [head, "|" + "---|" * 10]
    for x in launches:
        lines.append(f"| {x.kernel} | {x.case} | sm_{x.arch} | {x.num_warps} | {x.constexprs} | {x.registers} | "
                     f"{x.spilled_bytes} | {x.shared_bytes} | {x.widest_load_bits} | {x.programs_per_sm} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "compile"),
                        help="folder for compile_check.json and compile_check.md (default: %(default)s)")
    parser.add_argument("--arch", type=int, action="append", help="80 or 90 (default both)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("TRITON_INTERPRET=1 is set: the check needs Triton's compiler, not its interpreter")
    start = time.time()
    launches, found, variants = run_check(tuple(args.arch or ARCHS))
    out = args.out
    os.makedirs(out, exist_ok=True)
    import triton
    record = dict(triton=triton.__version__, seconds=round(time.time() - start, 1), problems=found,
                  variants_across_batch_sizes=variants, launches=[dataclasses.asdict(x) for x in launches])
    with open(os.path.join(out, "compile_check.json"), "w") as f:
        json.dump(record, f, indent=1)
    with open(os.path.join(out, "compile_check.md"), "w") as f:
        f.write(table(launches))
    print(f"{len(launches)} kernel variants compiled in {record['seconds']} s; written to {os.path.abspath(out)}")
    for line in found:
        print("FAIL", line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
