"""The benchmark harness, on tiny shapes (on a CPU the kernels run in Triton's interpreter)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_table_runs_and_reports_every_row(tmp_path):
    """The CPU benchmark on tiny shapes (its timings mean nothing there; no timing is asserted)."""
    result = subprocess.run([sys.executable, "-m", "normlib.book.bench", "--cpu", "--tiny", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (document,) = (tmp_path / "cpu").glob("*.json")
    rows = json.loads(document.read_text())["rows"]
    ops = {"layer_norm", "rms_norm", "group_norm", "instance_norm", "batch_norm_train", "batch_norm_eval"}
    assert {r["op"] for r in rows} == ops and len(rows) == 2 * len(ops)
    for r in rows:
        assert r["normlib_us"] > 0 and r["torch_us"] > 0
        assert r["normlib_ratio"] > 0 and r["reference_ratio"] > 0
    assert "worst normlib.functional / torch ratio" in result.stdout and "| layer_norm |" in result.stdout


needs_triton = pytest.mark.skipif(not __import__("importlib").util.find_spec("triton"), reason="needs triton")


@needs_triton
def test_benchmark_writes_csv_json_and_figure(tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-m", "normlib.book.bench", "--out", str(tmp_path), "--dtypes", "fp32,bf16"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (document_path,) = tmp_path.glob("*.json")
    document = json.loads(document_path.read_text())
    assert document["device"] and document["copy_gb_per_s"] > 0
    rows = document["results"]
    with open(document_path.with_suffix(".csv")) as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert document_path.with_suffix(".png").stat().st_size > 10_000
    assert {r["family"] for r in rows} == {"rms_norm", "layer_norm", "group_norm", "batch_norm", "dyt", "adaln",
                                           "qk_norm", "group_norm_silu"}
    assert {r["provider"] for r in rows} >= {"normlib", "torch"}
    for r in rows:
        assert r["ms"] > 0 and r["gb_per_s"] > 0
        assert r["percent_of_copy"] == pytest.approx(100 * r["gb_per_s"] / document["copy_gb_per_s"], rel=1e-2)
        if r["provider"] == "normlib":
            assert r["normlib_speedup"] == 1.0
    # each (family, shape, dtype) has the three directions for each provider
    keys = {(r["family"], r["shape"], r["dtype"], r["provider"]) for r in rows}
    assert len(rows) == 3 * len(keys)
    assert {r["direction"] for r in rows} == {"forward", "backward", "forward+backward"}


def test_benchmark_rejects_unknown_options():
    result = subprocess.run([sys.executable, "-m", "normlib.book.bench", "--families", "softmax"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "--families" in result.stderr


def test_goal_report_checks_each_goal_against_its_threshold():
    from normlib.book.bench import goal_report

    def row(family, shape, direction, provider, percent, speedup, dtype="bf16"):
        return dict(family=family, shape=shape, dtype=dtype, direction=direction, provider=provider,
                    percent_of_copy=percent, normlib_speedup=speedup)
    rows = [row("rms_norm", "32768x4096", "forward", "normlib", 95, 1.0),
            row("rms_norm", "32768x256", "forward", "normlib", 40, 1.0),      # N < 1024: not part of the goal
            row("rms_norm", "32768x4096", "backward", "normlib", 75, 1.0),
            row("rms_norm", "32768x4096", "forward", "liger", 90, 1.2),
            row("rms_norm", "32768x4096", "backward", "liger", 80, 0.9),
            row("rms_norm", "32768x4096", "forward+backward", "torch", 30, 2.5),
            row("group_norm", "32x256x56x56x32", "forward+backward", "torch", 30, 2.1),
            row("adaln", "32x256x1152", "forward+backward", "torch", 30, 2.0),
            row("qk_norm", "16x2048x32x128", "forward+backward", "torch", 30, 1.4),
            row("dyt", "32768x1024", "forward+backward", "torch.compile", 30, 1.1)]
    report = goal_report({"results": rows})
    met = [g["met"] for g in report]
    # forward 95 >= 90; backward 75 < 80; any shape 75 >= 70; forward vs liger 1.2; backward vs liger 0.9;
    # eager 2.5 >= 1.5; group norm 2.1 >= 2; batch norm not measured; fused ops over their unfused
    # sequence: the worst, 1.4 < 1.5; over torch.compile 1.1 >= 1
    assert met == [True, False, True, True, False, True, True, None, False, True], report


def test_fusion_traffic_counts_the_listed_steps():
    from normlib.book.bench import FUSION_STEPS, fusion_traffic
    rows = fusion_traffic({op: 2e6 for op in FUSION_STEPS})
    assert len(rows) == 2 * len(FUSION_STEPS)
    for r in rows:
        steps = FUSION_STEPS[r["op"]]
        assert r["unfused"] == sum(a + b for _, a, b in steps["unfused"][r["direction"]])
        assert r["normlib"] == sum(a + b for _, a, b in steps["normlib"][r["direction"]])
        assert r["unfused_mb"] == pytest.approx(2 * r["unfused"]) and r["ratio"] > 1
    dyt = {r["direction"]: r for r in rows if r["op"].startswith("DyT")}
    # four elementwise passes of read + write against one: 8 tensors against 2
    assert (dyt["forward"]["unfused"], dyt["forward"]["normlib"]) == (8, 2)
