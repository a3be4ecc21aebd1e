"""Kernel benchmark: ``python -m normlib.book.bench`` (``--cpu``: the CPU paths of
``normlib.functional`` against torch, :mod:`normlib.book.cpu_bench`).

Measures, in one run, the device's copy bandwidth and then the forward and the forward+backward
time of each normalization (RMSNorm and LayerNorm over the last dimension, GroupNorm, BatchNorm in
training mode) and of each fused op (``FUSED``: DyT, a DiT block's gated residual add, LayerNorm
and modulation, per-head QK-norm with the rotary embedding read from a fused QKV projection, a
UNet's GroupNorm, scale-shift and SiLU) over a grid of shapes and dtypes, for every provider that
is installed: normlib's Triton kernels, torch eager (for a fused op, the unfused sequence of
PyTorch ops), ``torch.compile`` (on a GPU), Liger-Kernel and QuACK where they have the op.
Normalization is memory-bound, so each time is reported as effective bandwidth (the bytes the
operation must move, divided by the time), as a percentage of the measured copy bandwidth, and as
the ratio of each peer's time to normlib's (above 1: normlib is faster).

Results go to ``<out>/<device>.csv`` and ``.json`` (with the device named) and a figure to
``<out>/<device>.png``. On a machine without a GPU the kernels run in Triton's interpreter on tiny
shapes: the numbers mean nothing there, but the harness is exercised (the tests do this).

Derived in ``chapters/20_kernels.ipynb``.
"""

import argparse
import csv
import importlib.util
import json
import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch

__all__ = ["run", "goal_report", "figure", "copy_bandwidth", "fusion_traffic", "FUSION_STEPS", "main"]

GPU_ROWWISE_SHAPES = [(32768, n) for n in (256, 512, 1024, 2048, 4096, 8192, 16384)] + [(4096, 65536), (1024, 262144)]
GPU_GROUP_SHAPES = [(32, 256, 56, 56, 32), (32, 512, 28, 28, 32), (16, 128, 128, 128, 32), (8, 64, 256, 256, 32)]
GPU_BATCH_SHAPES = [(32, 64, 112, 112), (32, 256, 56, 56), (32, 512, 28, 28), (256, 2048, 7, 7)]
CPU_ROWWISE_SHAPES = [(64, 256), (8, 4097)]
CPU_GROUP_SHAPES = [(2, 8, 8, 8, 4)]
CPU_BATCH_SHAPES = [(4, 4, 8, 8)]
GPU_FUSED_SHAPES = {"dyt": [(32768, 1024), (32768, 4096)],          # (rows, features)
                    "adaln": [(32, 256, 1152), (8, 1024, 4096)],        # (batch, tokens, width): DiT-XL, larger
                    "qk_norm": [(16, 2048, 32, 128), (16, 2048, 8, 64)],  # (batch, tokens, heads, head_dim)
                    "group_norm_silu": [(2, 320, 64, 64, 32), (1, 640, 32, 32, 32)]}   # a UNet at batch 2 and 1
CPU_FUSED_SHAPES = {"dyt": [(16, 64)], "adaln": [(2, 5, 32)], "qk_norm": [(2, 3, 2, 16)],
                    "group_norm_silu": [(2, 8, 4, 4, 4)]}
FUSED = list(GPU_FUSED_SHAPES)
FAMILIES = ["rms_norm", "layer_norm", "group_norm", "batch_norm", *FUSED]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
FIELDS = ["device", "family", "shape", "dtype", "direction", "provider", "ms", "bytes", "gb_per_s",
          "percent_of_copy", "normlib_speedup"]


# What each fused op reads and writes, counted in activation-sized tensors (one tensor of the
# op's input shape; per-channel vectors and statistics are negligible): the unfused PyTorch
# sequence as one kernel per step, each step reading its inputs and writing its outputs once (a
# reduction of a product counted as one read of each operand, which flatters the unfused side),
# against normlib's kernels, with the steps they leave to PyTorch listed. Steps are
# (what, tensors read, tensors written).
FUSION_STEPS = {
    "DyT (replacing LayerNorm)": {
        "unfused": {"forward": [("alpha * x", 1, 1), ("tanh", 1, 1), ("* weight", 1, 1), ("+ bias", 1, 1)],
                    "backward": [("dbias = sum(dy)", 1, 0), ("dweight = sum(dy * t)", 2, 0), ("dt = dy * weight", 1, 1),
                                 ("dz = dt * (1 - t^2)", 2, 1), ("dx = dz * alpha", 1, 1),
                                 ("dalpha = sum(dz * x)", 2, 0)]},
        "normlib": {"forward": [("one kernel: x -> y", 1, 1)],
                    "backward": [("one kernel: x, dy -> dx and the parameter sums", 2, 1)]},
    },
    "adaLN-Zero: gated residual, LayerNorm, modulation": {
        "unfused": {"forward": [("gate * branch", 1, 1), ("residual + gated branch", 2, 1), ("layer_norm", 1, 1),
                                ("* (1 + scale)", 1, 1), ("+ shift", 1, 1)],
                    "backward": [("dshift = sum(dy)", 1, 0), ("dscale = sum(dy * normalized)", 2, 0),
                                 ("d normalized = dy * (1 + scale)", 1, 1), ("layer_norm backward", 2, 1),
                                 ("+ the stream's own gradient", 2, 1), ("dgate = sum(dsum * branch)", 2, 0),
                                 ("dbranch = dsum * gate", 1, 1)]},
        "normlib": {"forward": [("one kernel: branch, residual -> y, sum", 2, 2)],
                    "backward": [("one kernel: dy, sum -> d sum, dscale, dshift", 2, 1),
                                 ("+ the stream's own gradient (PyTorch)", 2, 1),
                                 ("dgate = sum(dsum * branch) (PyTorch)", 2, 0),
                                 ("dbranch = dsum * gate (PyTorch)", 1, 1)]},
    },
    "QK-norm and rotary embedding (queries or keys)": {
        "unfused": {"forward": [("rms_norm of the strided slice", 1, 1),
                                ("four half-size products with cos and sin", 2, 2), ("two half-size sums", 2, 1),
                                ("cat of the halves", 1, 1)],
                    "backward": [("four half-size products with cos and sin", 2, 2), ("a negation", 0.5, 0.5),
                                 ("each half's two gradients added", 2, 1), ("the halves' gradients assembled", 1, 1),
                                 ("rms_norm backward", 2, 1)]},
        "normlib": {"forward": [("one kernel: the slice, read in place -> y", 1, 1)],
                    "backward": [("one kernel: slice, dy -> dslice", 2, 1)]},
    },
    "GroupNorm, scale-shift and SiLU (UNet)": {
        "unfused": {"forward": [("group_norm", 1, 1), ("* (1 + scale)", 1, 1), ("+ shift", 1, 1), ("silu", 1, 1)],
                    "backward": [("silu backward", 2, 1), ("dshift = sum(dh)", 1, 0), ("dscale = sum(dh * normalized)", 2, 0),
                                 ("d normalized = dh * (1 + scale)", 1, 1), ("group_norm backward", 2, 1)]},
        "normlib": {"forward": [("one kernel: x -> y", 1, 1)],
                    "backward": [("one kernel: x, dy -> dx, dscale, dshift and the parameter sums", 2, 1)]},
    },
}


def fusion_traffic(activation_bytes: dict) -> list[dict]:
    """For each fused op of ``FUSION_STEPS`` and direction: the activation-sized tensors the
    unfused sequence and normlib move, their ratio, and the megabytes at ``activation_bytes[op]``
    bytes per tensor (a model's shape). Derived in ``chapters/20_kernels.ipynb``."""
    rows = []
    for op, variants in FUSION_STEPS.items():
        for direction in ("forward", "backward"):
            moved = {name: sum(r + w for _, r, w in steps[direction]) for name, steps in variants.items()}
            rows.append(dict(op=op, direction=direction, unfused=moved["unfused"], normlib=moved["normlib"],
                             ratio=moved["unfused"] / moved["normlib"],
                             unfused_mb=moved["unfused"] * activation_bytes[op] / 1e6,
                             normlib_mb=moved["normlib"] * activation_bytes[op] / 1e6))
    return rows


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}), Triton interpreter"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _timer(device: str):
    """Milliseconds per call of ``fn``: Triton's ``do_bench`` (median) on a GPU, a short
    ``perf_counter`` loop on a CPU."""
    if device == "cuda":
        from triton.testing import do_bench
        return lambda fn: do_bench(fn, warmup=25, rep=100, return_mode="median")

    def cpu_time(fn, repeats=3):
        fn()
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
        return 1000 * statistics.median(times)
    return cpu_time


def copy_bandwidth(device: str, timer) -> float:
    """GB/s of a device-to-device copy (bytes read plus bytes written), the yardstick of every
    other result. Derived in ``chapters/20_kernels.ipynb``."""
    n = (1 << 28) if device == "cuda" else (1 << 22)     # 1 GiB or 16 MiB of float32
    src = torch.empty(n, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def _peers(family: str, device: str) -> dict:
    """Installed implementations to compare with, as ``name -> fn(x, weight, bias)``."""
    import torch.nn.functional as TF
    eps = 1e-6
    if family == "rms_norm":
        eager = lambda x, w, b: TF.rms_norm(x, x.shape[-1:], w, eps)  # noqa: E731
    elif family == "layer_norm":
        eager = lambda x, w, b: TF.layer_norm(x, x.shape[-1:], w, b, eps)  # noqa: E731
    elif family == "group_norm":
        eager = lambda x, w, b, groups: TF.group_norm(x, groups, w, b, eps)  # noqa: E731
    else:
        eager = lambda x, w, b: TF.batch_norm(x, None, None, w, b, training=True, eps=eps)  # noqa: E731
    peers = {"torch": eager}
    if device == "cuda":
        peers["torch.compile"] = torch.compile(eager, dynamic=False)
        if family in ("rms_norm", "layer_norm") and importlib.util.find_spec("liger_kernel"):
            from liger_kernel.ops.layer_norm import LigerLayerNormFunction
            from liger_kernel.ops.rms_norm import LigerRMSNormFunction
            peers["liger"] = ((lambda x, w, b: LigerRMSNormFunction.apply(x, w, eps)) if family == "rms_norm"
                              else (lambda x, w, b: LigerLayerNormFunction.apply(x, w, b, eps)))
        if family == "rms_norm" and importlib.util.find_spec("quack"):
            from quack import rmsnorm
            peers["quack"] = lambda x, w, b: rmsnorm(x, w, eps=eps)
    return peers


def _normlib(family: str):
    from normlib.kernels import batch_norm, group_norm, rowwise
    eps = 1e-6
    return {
        "rms_norm": lambda x, w, b: rowwise.rms_norm(x, w, eps),
        "layer_norm": lambda x, w, b: rowwise.layer_norm(x, w, b, eps),
        "group_norm": lambda x, w, b, groups: group_norm.group_norm(x, groups, w, b, eps),
        "batch_norm": lambda x, w, b: batch_norm.batch_norm_training(x, w, b, eps)[0],
    }[family]


def _significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def _bytes(x: torch.Tensor, params: int, direction: str, stats: int) -> int:
    """Bytes the operation has to move: forward reads x and writes y; backward reads x and dy and
    writes dx, plus the parameters, their gradients and the saved statistics."""
    activations = x.numel() * x.element_size()
    parameters = params * 4
    forward = 2 * activations + 2 * parameters + stats * 4
    backward = 3 * activations + 4 * parameters + 2 * stats * 4
    return {"forward": forward, "backward": backward, "forward+backward": forward + backward}[direction]


def _cases(device: str, families: list[str], dtypes: list[str]):
    gpu = device == "cuda"
    for family in families:
        if family in FUSED:
            shapes = (GPU_FUSED_SHAPES if gpu else CPU_FUSED_SHAPES)[family]
        elif family in ("rms_norm", "layer_norm"):
            shapes = GPU_ROWWISE_SHAPES if gpu else CPU_ROWWISE_SHAPES
        elif family == "group_norm":
            shapes = GPU_GROUP_SHAPES if gpu else CPU_GROUP_SHAPES
        else:
            shapes = GPU_BATCH_SHAPES if gpu else CPU_BATCH_SHAPES
        for shape in shapes:
            for dtype in dtypes:
                yield family, shape, dtype


def _measure(family, shape, dtype_name, device, timer, copy_gb_s):
    dtype = DTYPES[dtype_name]
    groups = shape[-1] if family == "group_norm" else None
    tensor_shape = shape[:-1] if family == "group_norm" else shape
    channels = tensor_shape[-1] if family in ("rms_norm", "layer_norm") else tensor_shape[1]
    x = torch.randn(tensor_shape, device=device, dtype=dtype, requires_grad=True)
    weight = torch.rand(channels, device=device, dtype=dtype, requires_grad=True)
    bias = torch.randn(channels, device=device, dtype=dtype, requires_grad=True) if family != "rms_norm" else None
    dy = torch.randn_like(x)
    extra = (groups,) if groups else ()
    stats = {"rms_norm": tensor_shape[0], "layer_norm": 2 * tensor_shape[0],
             "group_norm": 2 * tensor_shape[0] * (groups or 1), "batch_norm": 2 * channels}[family]
    providers = {"normlib": _normlib(family), **_peers(family, device)}
    params = [p for p in (x, weight, bias) if p is not None]
    rows = []
    for provider, fn in providers.items():
        try:
            forward_ms = timer(lambda: fn(x, weight, bias, *extra))
            y = fn(x, weight, bias, *extra)
            backward_ms = timer(lambda: torch.autograd.grad(y, params, dy, retain_graph=True))
            total_ms = timer(lambda: torch.autograd.grad(fn(x, weight, bias, *extra), params, dy))
        except Exception as error:  # a peer that does not support a shape or dtype is reported, not fatal
            print(f"  {provider} failed on {family} {shape} {dtype_name}: {type(error).__name__}: {error}")
            continue
        for direction, ms in (("forward", forward_ms), ("backward", backward_ms), ("forward+backward", total_ms)):
            moved = _bytes(x, channels * (2 if bias is not None else 1), direction, stats)
            gb_s = moved / (ms * 1e-3) / 1e9
            rows.append(dict(device=device_name(), family=family, shape="x".join(map(str, shape)), dtype=dtype_name,
                             direction=direction, provider=provider, ms=_significant(ms), bytes=moved,
                             gb_per_s=_significant(gb_s), percent_of_copy=_significant(100 * gb_s / copy_gb_s)))
    ours = {r["direction"]: r["ms"] for r in rows if r["provider"] == "normlib"}
    for r in rows:
        r["normlib_speedup"] = _significant(r["ms"] / ours[r["direction"]]) if r["direction"] in ours else None
    return rows


def _rotary(tokens: int, d: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.arange(tokens, device=device)[:, None] * 10000.0 ** (-torch.arange(0, d, 2, device=device) / d)
    return angles.cos(), angles.sin()


def _fused_problem(family: str, shape: tuple, dtype: torch.dtype, device: str):
    """A fused op's inputs (those that take gradients first), its providers as
    ``name -> fn(*inputs)`` returning the outputs to differentiate, and the activation-sized
    tensors it must read and write forward and backward (the bytes it has to move)."""
    import torch.nn.functional as TF

    from normlib.kernels import dyt, group_norm, qk_norm, rowwise
    new = lambda *size: torch.randn(size, device=device, dtype=dtype, requires_grad=True)   # noqa: E731
    if family == "dyt":
        rows, width = shape
        inputs = (new(rows, width), new(1), new(width), new(width))
        ours = lambda x, a, w, b: dyt.dyt(x, a, w, b)   # noqa: E731
        eager = lambda x, a, w, b: w * torch.tanh(a * x) + b   # noqa: E731
        moved = (2, 3)          # x -> y; x, dy -> dx
    elif family == "adaln":
        batch, tokens, width = shape
        inputs = (new(batch, tokens, width), new(batch, tokens, width), *(new(batch, width) for _ in range(3)))
        ours = lambda x, r, g, sc, sh: rowwise.layer_norm(x, None, None, 1e-6, r, gate=g, scale=sc, shift=sh)  # noqa: E731

        def eager(x, r, g, sc, sh):
            summed = r + g[:, None] * x
            return TF.layer_norm(summed, (width,), eps=1e-6) * (1 + sc[:, None]) + sh[:, None], summed
        moved = (4, 6)          # x, r -> y, sum; dy, dsum, sum, x -> dx, dr
    elif family == "qk_norm":
        batch, tokens, heads, d = shape
        qkv = torch.randn(batch, tokens, 3 * heads * d, device=device, dtype=dtype, requires_grad=True)
        inputs = (qkv, torch.rand(d, device=device, dtype=dtype, requires_grad=True))
        cos, sin = _rotary(tokens, d, device)

        def queries(p):
            return p.view(batch, tokens, 3, heads, d)[:, :, 0]
        ours = lambda p, w: qk_norm.qk_norm(queries(p), w, 1e-6, None, cos, sin)   # noqa: E731

        def eager(p, w):
            q = TF.rms_norm(queries(p), (d,), w, 1e-6)
            first, second = q[..., : d // 2], q[..., d // 2:]
            c, s = cos[:, None].to(q.dtype), sin[:, None].to(q.dtype)
            return torch.cat([first * c - second * s, second * c + first * s], -1)
        moved = (2 / 3, 1)   # thirds of the (B, T, 3HD) projection: q -> y; q, dy -> dq
    else:   # group_norm_silu
        batch, channels, h, w_, groups = shape
        x = torch.randn(batch, channels, h, w_, device=device, dtype=dtype).to(memory_format=torch.channels_last)
        inputs = (x.requires_grad_(), new(channels), new(channels), new(batch, channels), new(batch, channels))
        ours = lambda x, w, b, sc, sh: group_norm.group_norm(x, groups, w, b, 1e-5, sc, sh, True)   # noqa: E731
        eager = lambda x, w, b, sc, sh: TF.silu(TF.group_norm(x, groups, w, b) * (1 + sc[:, :, None, None])   # noqa: E731
                                                + sh[:, :, None, None])
        moved = (2, 3)
    providers = {"normlib": ours, "torch": eager}
    if device == "cuda":
        providers["torch.compile"] = torch.compile(eager, dynamic=False)
    if family == "dyt" and device == "cuda" and importlib.util.find_spec("liger_kernel"):
        try:
            from liger_kernel.ops.dyt import LigerDyTFunction
            providers["liger"] = lambda x, a, w, b: LigerDyTFunction.apply(x, a, w, b)   # noqa: E731
        except ImportError:
            pass
    activation = inputs[0].numel() * inputs[0].element_size()
    return inputs, providers, {"forward": int(moved[0] * activation), "backward": int(moved[1] * activation)}


def _measure_fused(family, shape, dtype_name, device, timer, copy_gb_s):
    inputs, providers, moved = _fused_problem(family, shape, DTYPES[dtype_name], device)
    moved["forward+backward"] = moved["forward"] + moved["backward"]
    rows = []
    for provider, fn in providers.items():
        def outputs():
            out = fn(*inputs)
            return out if isinstance(out, tuple) else (out,)
        try:
            first = outputs()
            grads = [torch.randn_like(o) for o in first]
            leaves = [t for t in inputs if t.requires_grad]
            forward_ms = timer(outputs)
            backward_ms = timer(lambda: torch.autograd.grad(first, leaves, grads, retain_graph=True))
            total_ms = timer(lambda: torch.autograd.grad(outputs(), leaves, grads))
        except Exception as error:  # a peer that does not support a shape or dtype is reported, not fatal
            print(f"  {provider} failed on {family} {shape} {dtype_name}: {type(error).__name__}: {error}")
            continue
        for direction, ms in (("forward", forward_ms), ("backward", backward_ms), ("forward+backward", total_ms)):
            gb_s = moved[direction] / (ms * 1e-3) / 1e9
            rows.append(dict(device=device_name(), family=family, shape="x".join(map(str, shape)), dtype=dtype_name,
                             direction=direction, provider=provider, ms=_significant(ms), bytes=moved[direction],
                             gb_per_s=_significant(gb_s), percent_of_copy=_significant(100 * gb_s / copy_gb_s)))
    ours = {r["direction"]: r["ms"] for r in rows if r["provider"] == "normlib"}
    for r in rows:
        r["normlib_speedup"] = _significant(r["ms"] / ours[r["direction"]]) if r["direction"] in ours else None
    return rows


def run(out: Path, families: list[str], dtypes: list[str]) -> dict:
    """Run the benchmark and write ``<out>/<device>.{csv,json,png}``; returns the JSON document.
    Derived in ``chapters/20_kernels.ipynb``."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")   # before normlib.kernels imports triton
    timer = _timer(device)
    copy_gb_s = copy_bandwidth(device, timer)
    print(f"{device_name()}: copy bandwidth {copy_gb_s:.1f} GB/s")
    rows = []
    for family, shape, dtype in _cases(device, families, dtypes):
        measure = _measure_fused if family in FUSED else _measure
        measured = measure(family, shape, dtype, device, timer, copy_gb_s)
        rows += measured
        for r in measured:
            print(f"  {family:10s} {r['shape']:>16s} {dtype} {r['direction']:16s} {r['provider']:13s} "
                  f"{r['gb_per_s']:9.4g} GB/s {r['percent_of_copy']:6.4g}% of copy, "
                  f"normlib speedup {r['normlib_speedup']}")
    out.mkdir(parents=True, exist_ok=True)
    stem = out / _slug(device_name())
    document = {"device": device_name(), "torch": torch.__version__, "triton": _triton_version(),
                "copy_gb_per_s": round(copy_gb_s, 2), "results": rows}
    stem.with_suffix(".json").write_text(json.dumps(document, indent=1) + "\n")
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    figure(document).savefig(stem.with_suffix(".png"), bbox_inches="tight")
    print(f"wrote {stem}.csv, .json, .png")
    return document


def _triton_version():
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


def figure(document: dict):
    """Effective bandwidth of every provider, one panel per kernel family and direction, with the
    measured copy bandwidth as a dotted line. Derived in ``chapters/20_kernels.ipynb``."""
    import matplotlib
    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from normlib.book import plot
    plot.use_style()
    rows = document["results"]
    families = list(dict.fromkeys(r["family"] for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    directions = ["forward", "backward", "forward+backward"]
    fig, axes = plt.subplots(len(directions), len(families), figsize=(3.6 * len(families), 8.5), squeeze=False)
    for j, family in enumerate(families):
        for i, direction in enumerate(directions):
            ax = axes[i, j]
            selected = [r for r in rows if r["family"] == family and r["direction"] == direction]
            shapes = list(dict.fromkeys(r["shape"] for r in selected))
            for provider, dtype in dict.fromkeys((r["provider"], r["dtype"]) for r in selected):
                values = {r["shape"]: r["gb_per_s"] for r in selected if r["provider"] == provider and r["dtype"] == dtype}
                present = [s for s in shapes if s in values]
                ax.plot(present, [values[s] for s in present], "o-" if dtype == "bf16" else "s--", ms=4,
                        color=plot.PALETTE[providers.index(provider) % len(plot.PALETTE)], label=f"{provider} {dtype}")
            ax.axhline(document["copy_gb_per_s"], color="k", ls=":", lw=1)
            ax.set_title(f"{family}, {direction}", fontsize=9)
            ax.tick_params(axis="x", labelrotation=60, labelsize=7)
            if j == 0:
                ax.set_ylabel("effective GB/s")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{document['device']} (dotted: copy bandwidth {document['copy_gb_per_s']:.0f} GB/s)", fontsize=10)
    fig.tight_layout()
    return fig


def goal_report(document: dict) -> list[dict]:
    """The goals of normlib's kernels (on an H100), each with the value this document measured
    and whether it is met: bandwidth as a share of the copy bandwidth for RMSNorm and LayerNorm
    in bfloat16 at N >= 1024, the time ratio to the fastest installed peer and to torch eager.
    Derived in ``chapters/20_kernels.ipynb``."""
    rows = document["results"]

    def rowwise(direction, dtype="bf16"):
        return [r for r in rows if r["family"] in ("rms_norm", "layer_norm") and r["provider"] == "normlib"
                and r["direction"] == direction and r["dtype"] == dtype and int(r["shape"].split("x")[1]) >= 1024]

    def worst_ratio(families, direction, peers):
        ratios = [r["normlib_speedup"] for r in rows if r["family"] in families and r["direction"] == direction
                  and r["provider"] in peers]
        return min(ratios) if ratios else None

    peers = [p for p in dict.fromkeys(r["provider"] for r in rows) if p not in ("normlib", "torch")]
    goals = []

    def add(goal, value, threshold):
        goals.append({"goal": goal, "measured": value, "threshold": threshold,
                      "met": None if value is None else value >= threshold})

    share = lambda selected: min((r["percent_of_copy"] for r in selected), default=None)  # noqa: E731
    add("RMS/LayerNorm forward, bf16, N >= 1024: lowest % of copy bandwidth", share(rowwise("forward")), 90)
    add("RMS/LayerNorm backward, bf16, N >= 1024: lowest % of copy bandwidth", share(rowwise("backward")), 80)
    add("RMS/LayerNorm, any N >= 1024, bf16 and fp32: lowest % of copy bandwidth",
        share(rowwise("forward") + rowwise("backward") + rowwise("forward", "fp32") + rowwise("backward", "fp32")), 70)
    for direction in ("forward", "backward"):
        add(f"RMS/LayerNorm {direction}: lowest speedup over the fastest peer ({', '.join(peers) or 'none installed'})",
            worst_ratio(("rms_norm", "layer_norm"), direction, peers), 1.0)
    add("RMS/LayerNorm forward+backward: lowest speedup over torch eager",
        worst_ratio(("rms_norm", "layer_norm"), "forward+backward", ["torch"]), 1.5)
    add("GroupNorm forward+backward: lowest speedup over torch eager", worst_ratio(("group_norm",), "forward+backward", ["torch"]), 2.0)
    add("BatchNorm training forward+backward: lowest speedup over torch eager",
        worst_ratio(("batch_norm",), "forward+backward", ["torch"]), 1.2)
    add(f"Fused ops ({', '.join(FUSED)}) forward+backward: lowest speedup over the unfused PyTorch sequence",
        worst_ratio(tuple(FUSED), "forward+backward", ["torch"]), 1.5)
    add("Fused ops forward+backward: lowest speedup over torch.compile of the sequence",
        worst_ratio(tuple(FUSED), "forward+backward", ["torch.compile"]), 1.0)
    return goals


def main(argv=None) -> None:
    """The command line: ``python -m normlib.book.bench [--out DIR] [--families ...] [--dtypes ...]``,
    or ``--cpu [--tiny]`` for the CPU table. Derived in ``chapters/20_kernels.ipynb``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for CSV, JSON and PNG")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--dtypes", default="bf16,fp32")
    parser.add_argument("--cpu", action="store_true", help="the CPU table: normlib.functional, its reference and torch")
    parser.add_argument("--tiny", action="store_true", help="with --cpu: tiny shapes and few rounds (a smoke test)")
    args = parser.parse_args(argv)
    if args.cpu:
        from normlib.book import cpu_bench
        cpu_bench.main(args.out, tiny=args.tiny)
        return
    families = args.families.split(",")
    unknown = [f for f in families if f not in FAMILIES]
    dtypes = args.dtypes.split(",")
    if unknown or any(d not in DTYPES for d in dtypes):
        parser.error(f"--families: expected some of {','.join(FAMILIES)}; --dtypes: some of "
                     f"{','.join(DTYPES)}; got {args.families!r}, {args.dtypes!r}")
    run(args.out, families, dtypes)


if __name__ == "__main__":
    main()
