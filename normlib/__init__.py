"""normlib: normalization layers for deep learning, readable, tested and fast.

Layers of the package (imports flow one way):

* :mod:`normlib.functional` pure functions with ``torch.nn.functional`` signatures;
* :mod:`normlib.nn` ``nn.Module`` layers on top of them, ``state_dict``-compatible with torch;
* :mod:`normlib.spectral` power iteration, the spectral-norm and weight-norm parametrizations;
* :mod:`normlib.gan` small GANs, their alternating objective and sample-quality metrics;
* :mod:`normlib.scaling` feature scalers for numpy arrays (scikit-learn API);
* :mod:`normlib.data` checksummed loaders for the book's datasets;
* :mod:`normlib.plot` the book's figure style and shared figures (imports matplotlib lazily).

Each public function's docstring names the chapter of normbook that derives it.
"""

from normlib import functional, nn, scaling, spectral

__version__ = "0.1.0"
__all__ = ["functional", "nn", "scaling", "spectral", "__version__"]
