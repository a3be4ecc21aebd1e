import os

import pytest
import torch

# Without a GPU, the kernel tests run Triton in its CPU interpreter. Triton reads TRITON_INTERPRET
# when it is first imported (its own library functions are interpreted or compiled from then on),
# and torch may import it early, so the variable is set here, before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _round_bfloat16_to_nearest_even() -> None:
    """Triton's interpreter (3.x) converts float32 to bfloat16 by truncation, where the GPU
    rounds to nearest even (``cvt.rn.bf16.f32``): make the interpreter round as the GPU does, so
    that bfloat16 results, and the casting modes' roundings, can be compared bit for bit."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    convert = interpreter._convert_float
    if getattr(convert, "rounds_to_nearest", False):
        return

    def rounded(data, input_dtype, output_dtype, rounding_mode):
        if (input_dtype == tl.float32 and output_dtype == tl.bfloat16
                and rounding_mode != interpreter._ir.ROUNDING_MODE.RTZ):
            values = torch.from_numpy(np.array(data, dtype=np.float32))
            return values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).reshape(np.shape(data))
        return convert(data, input_dtype, output_dtype, rounding_mode)

    rounded.rounds_to_nearest = True
    interpreter._convert_float = rounded


if os.environ.get("TRITON_INTERPRET") == "1":
    try:
        _round_bfloat16_to_nearest_even()
    except ImportError:   # no Triton: the kernel tests skip or fail on their own
        pass

@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
