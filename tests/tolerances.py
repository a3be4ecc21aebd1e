"""Tolerances the test files share, each with its reason."""

import torch

# Outputs against torch or the reference, by dtype. Half-precision outputs are rounded to
# 8 (bf16) or 11 (fp16) significant bits, so a difference of one or two units in the last
# place of a value of order 1 is expected even when both computations are exact in fp32.
TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=2e-5, rtol=1e-5),
    torch.float16: dict(atol=4e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=1.6e-2),
}
DTYPES = list(TOLERANCES)

# Running statistics (kept in float32 for half inputs, float64 for float64), by input dtype.
# float32: a mean of ~100 values of order 1 summed in a different order differs by a few ulps.
# Half inputs: both sides reduce the same rounded values in float32; torch's CPU kernel sums
# them in another order, and its variance comes out within ~1e-6 relative.
STATISTICS_TOLERANCES = {
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.float32: dict(atol=1e-6, rtol=1e-5),
    torch.float16: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=1e-5, rtol=1e-5),
}


def assert_close(actual, expected, dtype=None):
    dtype = dtype or expected.dtype
    torch.testing.assert_close(actual, expected, **TOLERANCES[dtype])
