"""normlib: normalization layers for PyTorch, readable, tested and fast. Needs torch alone.

The library (what a model imports); imports flow one way, top to bottom:

* :mod:`normlib.nn` ``nn.Module`` layers, ``state_dict``-compatible with ``torch.nn``;
* :mod:`normlib.functional` the public functions, ``torch.nn.functional`` signatures: they validate
  their arguments once and dispatch (CUDA: Triton kernels; CPU: torch's native op where its numerics
  are normlib's; else the reference);
* :mod:`normlib.reference` readable implementations, what every other path is tested against;
* :mod:`normlib.kernels` fused Triton kernels as ``torch.library`` ops (Triton imported on first use);
* :mod:`normlib.spectral` spectral and weight normalization (parametrizations);
* :mod:`normlib.clipping` adaptive gradient clipping (AGC), unit by unit relative to the weights;
* :mod:`normlib.gradnorm` GradNorm, the loss weights of a multitask network balanced by the
  sizes of the tasks' gradients;
* :mod:`normlib.distributed` the statistics of SyncBatchNorm across processes;
* :mod:`normlib.scaling` feature scalers for numpy arrays, scikit-learn estimators (imported on
  first use; needs the ``scaling`` extra: numpy and scikit-learn).

The book's workshop, :mod:`normlib.book` (models, the training loop, data, plots), is not
imported here and needs the ``book`` extra. Each public docstring names the chapter of normbook
that derives it.
"""

import importlib

from normlib import clipping, distributed, functional, gradnorm, kernels, nn, reference, spectral

__version__ = "0.1.0"
__all__ = ["functional", "nn", "reference", "kernels", "spectral", "clipping", "gradnorm", "distributed", "scaling", "__version__"]


def __getattr__(name: str):
    # numpy and scikit-learn are not needed to normalize tensors: load the scalers on first use
    if name == "scaling":
        return importlib.import_module("normlib.scaling")
    raise AttributeError(f"module 'normlib' has no attribute {name!r}")
