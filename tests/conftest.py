import os

import pytest
import torch

# Without a GPU, the kernel tests run Triton in its CPU interpreter. Triton reads TRITON_INTERPRET
# when it is first imported (its own library functions are interpreted or compiled from then on),
# and torch may import it early, so the variable is set here, before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Per-dtype tolerances for agreement with torch. Half-precision outputs are rounded to
# 8 (bf16) or 11 (fp16) significant bits, so a difference of one or two units in the last
# place of a value of order 1 is expected even when both computations are exact in fp32.
TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=2e-5, rtol=1e-5),
    torch.float16: dict(atol=4e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=1.6e-2),
}
DTYPES = list(TOLERANCES)


def assert_close(actual, expected, dtype=None):
    dtype = dtype or expected.dtype
    torch.testing.assert_close(actual, expected, **TOLERANCES[dtype])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
