"""Where the kernel tests run: natively on a GPU, else in Triton's interpreter on the CPU
(``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` before anything imports Triton). Triton is a
test dependency on Linux x86_64, so its absence fails there rather than skips."""

import os
import platform

import pytest
import torch

GPU = torch.cuda.is_available()
if platform.system() == "Linux" and platform.machine() == "x86_64":
    import triton  # noqa: F401
else:
    pytest.importorskip("triton")
assert GPU or os.environ.get("TRITON_INTERPRET") == "1", "without a GPU the kernels need TRITON_INTERPRET=1"
DEVICE = "cuda" if GPU else "cpu"
