import os

import pytest
import torch

# Without a GPU, the kernel tests run Triton in its CPU interpreter. Triton reads TRITON_INTERPRET
# when it is first imported (its own library functions are interpreted or compiled from then on),
# and torch may import it early, so the variable is set here, before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
