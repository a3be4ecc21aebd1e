"""Spectral normalization (Miyato et al. 2018): power iteration and a parametrization.

``W_SN = W / sigma(W)`` where ``sigma(W)`` is the largest singular value, estimated by
power iteration with a persistent vector (one step per training forward pass, re-using the
previous step's vectors: the "memoization" that makes it cheap).

Derived in ``chapters/08_spectral_norm.ipynb``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from normlib import _checks as C

__all__ = ["power_iteration", "spectral_norm"]

_INIT_ITERATIONS = 15  # at registration, so sigma is already accurate at the first forward


def power_iteration(W: torch.Tensor, u: torch.Tensor, n_iter: int = 1, eps: float = 1e-12):
    """Estimate the largest singular value of the matrix ``W`` (shape ``(m, n)``).

    Starting from ``u`` (shape ``(m,)``), each iteration computes
    ``v = W^T u / ||W^T u||`` then ``u = W v / ||W v||``. Returns ``(sigma, u, v)`` with
    ``sigma = u^T W v``. The vectors are computed without gradient; ``sigma`` is
    differentiable with respect to ``W``, with ``d sigma / d W = u v^T``.
    Each iteration multiplies by ``W^T W``, so the vectors' error shrinks like
    ``(sigma_2 / sigma_1)^(2 k)`` after ``k`` iterations, and that of ``sigma`` (quadratic
    in the vectors' error) like ``(sigma_2 / sigma_1)^(4 k)``.

    Derived in ``chapters/08_spectral_norm.ipynb``.
    """
    C.check_tensor(W, "W", min_dim=2, max_dim=2)
    C.check_tensor(u, "u", min_dim=1, max_dim=1)
    C.check_positive_int(n_iter, "n_iter")
    C.check_eps(eps)
    if u.shape[0] != W.shape[0]:
        raise ValueError(f"u: expected shape ({W.shape[0]},) to match the rows of W, got {tuple(u.shape)}")
    if u.device != W.device:
        raise ValueError(f"u: expected a tensor on {W.device} like W, got one on {u.device}")
    with torch.no_grad():
        u = u.to(W.dtype)
        for _ in range(n_iter):
            v = F.normalize(W.mT @ u, dim=0, eps=eps)
            u = F.normalize(W @ v, dim=0, eps=eps)
    sigma = torch.dot(u, W @ v)
    return sigma, u, v


class _SpectralNorm(nn.Module):
    """The parametrization ``W -> W / sigma(W)`` with persistent ``_u`` and ``_v`` buffers
    (the names torch uses, so state dicts load either way)."""

    def __init__(self, weight: torch.Tensor, n_power_iterations: int, dim: int, eps: float):
        super().__init__()
        self.n_power_iterations, self.eps = n_power_iterations, eps
        self.dim = dim % weight.dim() if weight.dim() > 0 else 0
        if weight.dim() > 1:
            matrix = self._as_matrix(weight.detach())
            u = F.normalize(torch.randn(matrix.shape[0], dtype=weight.dtype, device=weight.device), dim=0, eps=eps)
            _, u, v = power_iteration(matrix, u, _INIT_ITERATIONS, eps)
            self.register_buffer("_u", u)
            self.register_buffer("_v", v)

    def _as_matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """Move ``dim`` to the front and flatten the rest: ``(out, in * kh * kw)`` for conv."""
        return weight.movedim(self.dim, 0).flatten(1)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.dim() == 1:  # a vector's spectral norm is its Euclidean norm
            return F.normalize(weight, dim=0, eps=self.eps)
        matrix = self._as_matrix(weight)
        if self.training:
            _, u, v = power_iteration(matrix.detach(), self._u, self.n_power_iterations, self.eps)
            with torch.no_grad():
                self._u.copy_(u)
                self._v.copy_(v)
        # clone: the buffers are updated in place at the next step, after autograd saved them
        u, v = self._u.clone(), self._v.clone()
        sigma = torch.dot(u, matrix @ v)
        return weight / sigma


def spectral_norm(module: nn.Module, name: str = "weight", n_power_iterations: int = 1,
                  eps: float = 1e-12, dim: int | None = None) -> nn.Module:
    """Register spectral normalization on ``module.<name>`` as a parametrization.

    Same arguments, state-dict keys (``parametrizations.<name>.original``, ``..._u``,
    ``..._v``) and train/eval behaviour as
    :func:`torch.nn.utils.parametrizations.spectral_norm`: in training mode every forward
    pass runs ``n_power_iterations`` steps from the stored vectors; in eval mode the stored
    vectors are used as they are. ``dim`` defaults to 1 for transposed convolutions (their
    output channels are dim 1) and 0 otherwise.

    Derived in ``chapters/08_spectral_norm.ipynb``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"name: module {type(module).__name__} has no tensor parameter {name!r}")
    C.check_tensor(weight, f"module.{name}")
    C.check_positive_int(n_power_iterations, "n_power_iterations")
    C.check_eps(eps)
    if dim is None:
        transposed = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
        dim = 1 if isinstance(module, transposed) else 0
    if weight.dim() > 1 and not -weight.dim() <= dim < weight.dim():
        raise ValueError(f"dim: expected an int in [{-weight.dim()}, {weight.dim() - 1}], got {dim}")
    parametrize.register_parametrization(module, name, _SpectralNorm(weight, n_power_iterations, dim, eps))
    return module
