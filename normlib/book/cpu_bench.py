"""CPU benchmark of normlib's paths: ``python -m normlib.book.bench --cpu``.

For LayerNorm, RMSNorm, GroupNorm, InstanceNorm and BatchNorm (training and evaluation), at a
large and a small size, it times the forward and the forward+backward pass of
``normlib.functional`` (the public face: validation and dispatch), of ``normlib.reference`` (the
readable layer the chapters derive) and of ``torch.nn.functional``, side by side in one run:
every round times each provider once, in a shuffled order. A provider's time is its median over
the rounds; a ratio is the median over the rounds of that round's ratio, so that a slow phase of
the machine (on a shared 2-core VM the same call can take twice as long for a few seconds) falls
on both sides of each ratio alike. Goal: ``normlib.functional`` within 1.1x of torch on every row.

Used for the table on the API page (``chapters/api.md``).
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as TF

from normlib import functional as NF
from normlib import reference

__all__ = ["CASES", "TINY_CASES", "cpu_table", "markdown"]

CASES = [
    ("layer_norm", (4096, 512)), ("layer_norm", (64, 64)),
    ("rms_norm", (4096, 512)), ("rms_norm", (64, 64)),
    ("group_norm", (32, 64, 32, 32)), ("group_norm", (4, 16, 8, 8)),
    ("instance_norm", (32, 64, 32, 32)), ("instance_norm", (4, 16, 8, 8)),
    ("batch_norm_train", (32, 64, 32, 32)), ("batch_norm_train", (64, 64)),
    ("batch_norm_eval", (32, 64, 32, 32)), ("batch_norm_eval", (64, 64)),
]
TINY_CASES = [(op, (4, 8, 3, 3) if op in ("group_norm", "instance_norm") else (4, 8)) for op in dict(CASES)]
GROUPS = 8
EPS = 1e-5


def _providers(op: str, shape) -> dict:
    """``name -> fn(x, weight, bias, running_mean, running_var)`` for the three providers."""
    n = shape[-1]
    calls = {
        "layer_norm": lambda f, x, w, b, m, v: f.layer_norm(x, (n,), w, b, EPS),
        "rms_norm": lambda f, x, w, b, m, v: f.rms_norm(x, (n,), w, EPS),
        "group_norm": lambda f, x, w, b, m, v: f.group_norm(x, GROUPS, w, b, EPS),
        "instance_norm": lambda f, x, w, b, m, v: f.instance_norm(x, None, None, w, b, True, 0.1, EPS),
        "batch_norm_train": lambda f, x, w, b, m, v: f.batch_norm(x, m, v, w, b, True, 0.1, EPS),
        "batch_norm_eval": lambda f, x, w, b, m, v: f.batch_norm(x, m, v, w, b, False, 0.1, EPS),
    }
    call = calls[op]
    return {name: (lambda *args, _f=module: call(_f, *args))
            for name, module in (("normlib", NF), ("reference", reference), ("torch", TF))}


def _inputs(op: str, shape, backward: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    features = shape[-1] if op in ("layer_norm", "rms_norm") else shape[1]
    w, b = torch.rand(features, generator=g) + 0.5, torch.randn(features, generator=g)
    stats = torch.zeros(shape[1]), torch.ones(shape[1])
    if backward:
        x, w, b = (t.requires_grad_() for t in (x, w, b))
    return x, w, b, stats


def _sample(fn, inner: int) -> float:
    begin = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - begin) / inner


def cpu_table(cases=CASES, rounds: int = 25, min_sample_s: float = 2e-2, seed: int = 0) -> list[dict]:
    """One row per (op, shape, direction): median microseconds of each provider and the median
    per-round ratios ``normlib / torch`` and ``reference / torch``. Each sample repeats a call enough times to last
    ``min_sample_s`` (at least 3 calls): the clock's resolution does not matter for small sizes,
    and the allocator's state left by the previous provider (whose large temporaries can make the
    next allocation page-fault) is paid once per sample, not once per call."""
    order = random.Random(seed)
    rows = []
    for op, shape in cases:
        for direction in ("forward", "forward+backward"):
            backward = direction != "forward"
            x, w, b, (m, v) = _inputs(op, shape, backward)
            dy = torch.randn(shape)

            def run(fn):
                if not backward:
                    with torch.no_grad():
                        return fn(x, w, b, m, v)
                fn(x, w, b, m, v).backward(dy)

            steps = {name: (lambda _fn=fn: run(_fn)) for name, fn in _providers(op, shape).items()}
            for step in steps.values():  # warm-up, and the number of calls per sample
                step()
            inner = max(3, int(min_sample_s / max(_sample(steps["torch"], 3), 1e-7)))
            samples = {name: [] for name in steps}
            names = list(steps)
            for _ in range(rounds):
                order.shuffle(names)
                for name in names:
                    samples[name].append(_sample(steps[name], inner))
            us = {name: 1e6 * statistics.median(values) for name, values in samples.items()}
            ratio = {name: statistics.median(a / t for a, t in zip(samples[name], samples["torch"]))
                     for name in ("normlib", "reference")}
            rows.append({"op": op, "shape": "x".join(map(str, shape)), "direction": direction,
                         "normlib_us": us["normlib"], "reference_us": us["reference"], "torch_us": us["torch"],
                         "normlib_ratio": ratio["normlib"], "reference_ratio": ratio["reference"]})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| op | shape | direction | torch (µs) | normlib.functional (µs) | ratio | reference (µs) | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['shape']} | {r['direction']} | {r['torch_us']:.1f} | {r['normlib_us']:.1f} | "
                     f"{r['normlib_ratio']:.2f} | {r['reference_us']:.1f} | {r['reference_ratio']:.2f} |")
    return "\n".join(lines)


def main(out: Path | None, tiny: bool = False) -> list[dict]:
    """Run the table (tiny shapes and few rounds with ``tiny``, for the tests), print it, and
    write it as JSON to ``out/cpu/<machine>-<cores>-cores.json`` with the machine named (a folder
    of its own: the kernels chapter reads the GPU results in ``out``)."""
    rows = cpu_table(TINY_CASES, rounds=3, min_sample_s=1e-4) if tiny else cpu_table()
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"CPU: {machine}\n\n{markdown(rows)}")
    worst = max(r["normlib_ratio"] for r in rows)
    print(f"\nworst normlib.functional / torch ratio: {worst:.2f} (goal: 1.10)")
    if out is not None:
        folder = out / "cpu"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{platform.machine()}-{os.cpu_count()}-cores.json"
        (folder / name).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    return rows
