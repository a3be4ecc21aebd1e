"""Fused Triton kernels for the normalizations (GPU), with the same results as the reference path.

* :mod:`normlib.kernels.rowwise`: LayerNorm and RMSNorm over the last dimension (one kernel family
  with a flag), with the models' options (offset gain, casting modes, mixed dtypes, strided rows,
  a memory-light backward), an optional fused residual add (adaLN-Zero's gated one too) and
  adaLN's modulation.
* :mod:`normlib.kernels.dyt`: Dynamic Tanh, both layouts.
* :mod:`normlib.kernels.qk_norm`: per-head QK-norm read in place from a fused QKV projection,
  with the rotary embedding in the same kernel.
* :mod:`normlib.kernels.group_norm`: GroupNorm (InstanceNorm is ``num_groups = C``), contiguous and
  channels_last inputs.
* :mod:`normlib.kernels.batch_norm`: BatchNorm training (per-channel statistics over the batch and
  positions) and inference.
* :mod:`normlib.kernels.check`: every launch configuration compiled for sm_80 and sm_90 on a
  CPU (registers, spills, load width), ``python -m normlib.kernels.check``.

Each is a ``torch.library`` custom op with autograd, so it works under ``torch.compile``.
:mod:`normlib.functional` dispatches CUDA tensors to them when :func:`available` is true and
falls back to its PyTorch reference path otherwise. Importing this package does not import
Triton; the kernel modules do. On a CPU, the kernels run in Triton's interpreter when
``TRITON_INTERPRET=1`` is set before they are imported (the tests do this).

Derived in ``chapters/20_kernels.ipynb``.
"""

import functools
import importlib.util
import os

import torch

__all__ = ["available", "backend"]


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.lru_cache(maxsize=None)
def backend() -> str:
    """Which path CUDA tensors take: ``"triton"`` (kernels on the GPU), ``"interpreter"`` (kernels
    on the CPU under ``TRITON_INTERPRET=1``, for testing), or ``"reference: <reason>"``.
    Decided once per process, from the environment at the first call
    (``backend.cache_clear()`` decides again). Derived in ``chapters/20_kernels.ipynb``."""
    if os.environ.get("NORMLIB_DISABLE_KERNELS") == "1":
        return "reference: NORMLIB_DISABLE_KERNELS=1"
    if not _triton_installed():
        return "reference: triton is not installed (pip install normlib[gpu])"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "interpreter"
    if not torch.cuda.is_available():
        return "reference: no CUDA device"
    return "triton"


def available() -> bool:
    """True when :mod:`normlib.functional` sends CUDA tensors to the Triton kernels.
    Derived in ``chapters/20_kernels.ipynb``."""
    return backend() == "triton"
