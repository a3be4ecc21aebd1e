"""Adaptive gradient clipping (AGC; Brock et al. 2021, NFNets): each unit's gradient clipped
relative to the size of its weights, so that one step changes no unit by more than a fraction
``clip_factor`` of its norm.

For a unit ``i`` (one output row of a weight: a ``Linear`` row, a convolution's filter; a
whole vector or scalar parameter, such as a bias or a gain, is one unit), with weights ``W_i``
and gradient ``G_i``::

    if ||G_i|| > clip_factor * max(||W_i||, eps):
        G_i <- clip_factor * max(||W_i||, eps) * G_i / ||G_i||

``eps`` lets units whose weights start at zero move at all. Plain gradient-norm clipping
caps one global norm; AGC caps the ratio of update to weight per unit, which is what makes a
large step harmful. The paper leaves the final linear layer unclipped: pass the parameters
without it.

Derived in ``chapters/11_normalizer_free.ipynb``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from normlib import _validation as V

__all__ = ["adaptive_grad_clip_", "unitwise_norm"]


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """The Euclidean norm of each unit of ``x``, in float32 (float64 for float64 tensors), in a
    shape that broadcasts against ``x``: over all dimensions but the first for tensors of two
    or more dimensions (``(out, 1, ...)``), over the whole tensor for vectors and scalars.
    Derived in ``chapters/11_normalizer_free.ipynb``."""
    V.check_tensor(x, "x", min_dim=0)
    xs = x.to(V.stats_dtype(x.dtype))
    if x.dim() <= 1:
        return torch.linalg.vector_norm(xs)
    return torch.linalg.vector_norm(xs, dim=tuple(range(1, x.dim())), keepdim=True)


@torch.no_grad()
def adaptive_grad_clip_(parameters: torch.Tensor | Iterable[torch.Tensor], clip_factor: float = 0.01,
                        eps: float = 1e-3) -> torch.Tensor:
    """Clip the gradients of ``parameters`` in place, unit by unit, to at most ``clip_factor``
    times ``max(||W_i||, eps)`` (like :func:`torch.nn.utils.clip_grad_norm_`, parameters
    without a gradient are skipped). Returns how many units were clipped, as a tensor (no
    synchronization with the device). The paper's defaults: ``clip_factor`` 0.01 at batch
    4096 (larger batches need smaller values), ``eps`` 1e-3.

    Derived in ``chapters/11_normalizer_free.ipynb``.
    """
    V.check_number(clip_factor, "clip_factor", low=0.0, open_low=True)
    V.check_eps(eps)
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    clipped = torch.zeros((), dtype=torch.int64)
    for i, p in enumerate(parameters):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"parameters: expected tensors, got {type(p).__name__} at position {i}")
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise ValueError(f"parameters: expected dense gradients, got a sparse one at position {i}")
        max_norm = unitwise_norm(p.detach()).clamp(min=eps) * clip_factor
        grad_norm = unitwise_norm(p.grad)
        too_large = grad_norm > max_norm
        # grad_norm > max_norm >= clip_factor * eps > 0 wherever the factor is used
        factor = torch.where(too_large, max_norm / grad_norm.clamp(min=torch.finfo(grad_norm.dtype).tiny), 1.0)
        p.grad.mul_(factor.to(p.grad.dtype))
        clipped = clipped.to(too_large.device) + too_large.sum()
    return clipped
