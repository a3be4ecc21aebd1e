"""What the compiler makes of the kernels (``normlib.kernels.check``), on a CPU: every launch
configuration compiled for sm_80 and sm_90 with Triton's compiler and ptxas, no GPU needed.

The check runs once, in a subprocess (the other kernel tests run Triton's interpreter, which
this process has switched on), and the tests read its JSON record.
"""

import json
import os
import platform
import subprocess
import sys

import pytest

if platform.system() != "Linux" or platform.machine() != "x86_64":
    pytest.skip("Triton ships ptxas and cuobjdump for Linux x86_64", allow_module_level=True)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile_check")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(out / "triton-cache")   # compile afresh: nothing cached hides a failure
    done = subprocess.run([sys.executable, "-m", "normlib.kernels.check", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=1500)
    assert (out / "compile_check.json").exists(), done.stdout + done.stderr
    result = json.loads((out / "compile_check.json").read_text())
    result["returncode"], result["output"] = done.returncode, done.stdout + done.stderr
    result["table"] = (out / "compile_check.md").read_text()
    return result


def _problems(record, family):
    return [p for p in record["problems"] if p.split(".", 1)[0].split(" ", 1)[0].startswith(family)
            or f"[{family}" in p]


def test_every_configuration_compiles_for_sm80_and_sm90(record):
    errors = [p for p in record["problems"] if "Error" in p]
    assert not errors, "\n".join(errors)
    archs = {launch["arch"] for launch in record["launches"]}
    kernels = {launch["kernel"] for launch in record["launches"]}
    assert archs == {80, 90}
    for name in ("rowwise._forward_kernel", "rowwise._backward_kernel", "rowwise._forward_chunked_kernel",
                 "rowwise._backward_chunked_kernel", "rowwise._weight_gradient_kernel",
                 "group_norm._forward_kernel", "group_norm._backward_kernel",
                 "batch_norm._partial_statistics_kernel", "batch_norm._normalize_kernel",
                 "batch_norm._partial_gradient_sums_kernel", "batch_norm._input_gradient_kernel",
                 "dyt._forward_kernel", "dyt._backward_kernel", "qk_norm._forward_kernel", "qk_norm._backward_kernel"):
        assert name in kernels, f"{name} was never compiled"
    assert record["table"].count("\n") == len(record["launches"]) + 2


@pytest.mark.parametrize("family", ["rowwise", "group_norm", "batch_norm", "dyt", "qk_norm"])
def test_no_spills_full_width_loads_and_one_variant_per_configuration(record, family):
    found = _problems(record, family)
    assert not found, "\n".join(found)
    assert any(launch["kernel"].startswith(family) and launch["needs_128_bit_loads"]
               and launch["widest_load_bits"] == 128 for launch in record["launches"])
    assert record["variants_across_batch_sizes"] and all(
        count == 1 for family_counts in record["variants_across_batch_sizes"].values() for count in family_counts.values())


def test_the_check_catches_a_spill_and_narrow_loads(tmp_path):
    # a kernel that must spill (a 16K-element float32 tile on one warp) and loads 16 bits at a time
    code = r"""
import torch, triton, triton.language as tl
from normlib.kernels import check

@triton.jit
def spills(X, Y, BLOCK: tl.constexpr):
    x = tl.load(X + tl.arange(0, BLOCK) * 3)
    tl.store(Y + tl.arange(0, BLOCK), x * tl.sum(x.to(tl.float32), axis=0))

def run():
    x = torch.zeros(3 * 16384, dtype=torch.bfloat16)
    spills[(1,)](x, x, BLOCK=16384, num_warps=1)

launches = check.compile_case(check.Case("spills", run, contiguous_bytes=32), 90)
print(check.problems(launches))
"""
    script = tmp_path / "spills.py"   # a file: Triton reads a kernel's source from it
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "bytes spilled per thread" in done.stdout and "widest global load 16 bits" in done.stdout, done.stdout


def test_load_width_and_occupancy_arithmetic():
    from normlib.kernels import check
    ptx = "@%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];\nld.global.b16 %rs1, [ %rd2 ];"
    assert check.widest_global_load(ptx) == 128
    assert check.widest_global_load("ld.global.L1::evict_last.v2.b64 { %rd3, %rd4 }, [ %rd1 ];") == 128
    assert check.widest_global_load("ld.global.b16 %rs1, [ %rd2 ];") == 16
    # 128 registers x 512 threads = all 65,536 registers of an SM: one program
    assert check.programs_per_sm(128, 16, 0, 90) == 1
    # 40 registers, 8 warps: 40 x 32 = 1280 per warp, 10,240 per program -> 6; warps allow 8
    assert check.programs_per_sm(40, 8, 0, 90) == 6
    # shared memory bounds it too: 100 KB per program fits twice on sm_90 (228 KB), once on sm_80 (164 KB)
    assert check.programs_per_sm(32, 4, 100 * 1024, 90) == 2
    assert check.programs_per_sm(32, 4, 100 * 1024, 80) == 1
