"""Weight re-parametrizations: spectral normalization (Miyato et al. 2018), with its power
iteration, and weight normalization (Salimans & Kingma 2016), with its data-dependent
initialization.

``W_SN = W / sigma(W)`` where ``sigma(W)`` is the largest singular value, estimated by
power iteration with a persistent vector (one step per training forward pass, re-using the
previous step's vectors: the "memoization" that makes it cheap).

Derived in ``chapters/08_spectral_norm.ipynb`` and ``chapters/09_weight_norm.ipynb``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF
from torch import nn
from torch.nn.utils import parametrize

from normlib import _validation as V

__all__ = ["power_iteration", "spectral_norm", "spectral_norm_estimates", "weight_norm", "data_dependent_init_"]

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
    V.check_tensor(W, "W", min_dim=2, max_dim=2)
    V.check_tensor(u, "u", min_dim=1, max_dim=1)
    V.check_positive_int(n_iter, "n_iter")
    V.check_eps(eps)
    if u.shape[0] != W.shape[0]:
        raise ValueError(f"u: expected shape ({W.shape[0]},) to match the rows of W, got {tuple(u.shape)}")
    if u.device != W.device:
        raise ValueError(f"u: expected a tensor on {W.device} like W, got one on {u.device}")
    with torch.no_grad():
        u = u.to(W.dtype)
        for _ in range(n_iter):
            v = TF.normalize(W.mT @ u, dim=0, eps=eps)
            u = TF.normalize(W @ v, dim=0, eps=eps)
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
            u = TF.normalize(torch.randn(matrix.shape[0], dtype=weight.dtype, device=weight.device), dim=0, eps=eps)
            _, u, v = power_iteration(matrix, u, _INIT_ITERATIONS, eps)
            self.register_buffer("_u", u)
            self.register_buffer("_v", v)

    def _as_matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """Move ``dim`` to the front and flatten the rest: ``(out, in * kh * kw)`` for conv."""
        return weight.movedim(self.dim, 0).flatten(1)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.dim() == 1:  # a vector's spectral norm is its Euclidean norm
            return TF.normalize(weight, dim=0, eps=self.eps)
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


def _tensor_to_parametrize(module: nn.Module, name: str) -> torch.Tensor:
    """``module.<name>``, checked to be a tensor that a parametrization can replace."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"name: module {type(module).__name__} has no tensor parameter {name!r}")
    V.check_tensor(weight, f"module.{name}")
    return weight


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
    weight = _tensor_to_parametrize(module, name)
    V.check_positive_int(n_power_iterations, "n_power_iterations")
    V.check_eps(eps)
    if dim is None:
        transposed = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
        dim = 1 if isinstance(module, transposed) else 0
    if weight.dim() > 1 and not -weight.dim() <= dim < weight.dim():
        raise ValueError(f"dim: expected an int in [{-weight.dim()}, {weight.dim() - 1}], got {dim}")
    parametrize.register_parametrization(module, name, _SpectralNorm(weight, n_power_iterations, dim, eps))
    return module


def spectral_norm_estimates(module: nn.Module) -> list[tuple[str, float, float]]:
    """For every spectrally normalized weight in ``module``: ``(name, tracked, exact)``, where
    ``tracked`` is the estimate the next training forward pass divides by (one power-iteration
    step from the stored vector, on the current weight; the stored vectors are left as they are)
    and ``exact`` the largest singular value of the un-normalized weight (``torch.linalg.svdvals``).
    Used in ``chapters/08_spectral_norm.ipynb`` to measure how closely one round per update tracks sigma."""
    rows = []
    for name, sub in module.named_modules():
        for tensor_name, stack in getattr(sub, "parametrizations", {}).items():
            norm = next((p for p in stack if isinstance(p, _SpectralNorm)), None)
            if norm is None or not hasattr(norm, "_u"):
                continue
            with torch.no_grad():
                matrix = norm._as_matrix(stack.original)
                tracked, _, _ = power_iteration(matrix, norm._u, norm.n_power_iterations, norm.eps)
                exact = torch.linalg.svdvals(matrix.float())[0]
            rows.append((f"{name}.{tensor_name}" if name else tensor_name, tracked.item(), exact.item()))
    return rows


class _WeightNorm(nn.Module):
    """The parametrization ``(g, v) -> g * v / ||v||`` (norms over every dim but ``dim``)."""

    def __init__(self, dim: int | None):
        super().__init__()
        self.dim = dim

    def _norm(self, v: torch.Tensor) -> torch.Tensor:
        if self.dim is None:
            return torch.linalg.vector_norm(v)
        dims = [d for d in range(v.dim()) if d != self.dim % v.dim()]
        return torch.linalg.vector_norm(v, dim=dims, keepdim=True)

    def forward(self, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v * (g / self._norm(v))

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._norm(weight), weight


def weight_norm(module: nn.Module, name: str = "weight", dim: int | None = 0) -> nn.Module:
    """Register weight normalization (Salimans & Kingma 2016) on ``module.<name>``: the weight
    becomes ``g * v / ||v||`` with the norm taken per slice along ``dim`` (per output unit for
    the default ``dim=0``; ``None`` for one norm over the whole tensor). ``g`` starts at the
    initial norms and ``v`` at the initial weight, so the layer computes the same function.

    Same state-dict keys (``parametrizations.<name>.original0`` for ``g``, ``original1`` for
    ``v``) as :func:`torch.nn.utils.parametrizations.weight_norm`.

    Derived in ``chapters/09_weight_norm.ipynb``; compared with spectral normalization in
    ``chapters/08_spectral_norm.ipynb``. :func:`data_dependent_init_` sets ``g`` and the bias
    from a batch of data.
    """
    weight = _tensor_to_parametrize(module, name)
    if dim is not None and not (isinstance(dim, int) and -weight.dim() <= dim < weight.dim()):
        raise ValueError(f"dim: expected None or an int in [{-weight.dim()}, {weight.dim() - 1}], got {dim!r}")
    parametrize.register_parametrization(module, name, _WeightNorm(dim), unsafe=True)
    return module


_UNIT_AXIS = {nn.Linear: -1, nn.Conv1d: 1, nn.Conv2d: 1, nn.Conv3d: 1}  # where a layer's outputs keep their units


def _unit_axis(module: nn.Module) -> int | None:
    # isinstance, not type: a parametrized layer's class is a subclass made at registration
    return next((axis for cls, axis in _UNIT_AXIS.items() if isinstance(module, cls)), None)


def _weight_normalized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layers = []
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module, "weight"):
            continue
        norms = [p for p in module.parametrizations.weight if isinstance(p, _WeightNorm)]
        if not norms:
            continue
        if _unit_axis(module) is None or norms[0].dim is None or norms[0].dim % module.weight.dim() != 0:
            raise ValueError(f"model: expected weight normalization per output unit (dim=0) of Linear or "
                             f"ConvNd layers, got {type(module).__name__} {name!r} with dim={norms[0].dim}")
        layers.append((name, module))
    return layers


def data_dependent_init_(model: nn.Module, *inputs, init_scale: float = 1.0, eps: float = 1e-10) -> nn.Module:
    """Salimans & Kingma's data-dependent initialization of every layer of ``model`` under
    :func:`weight_norm` (per output unit): one forward pass of ``model(*inputs)`` in which each
    such layer, in the order the pass reaches it, rescales its gains ``g`` and shifts its bias
    so that each of its output units has mean 0 and standard deviation ``init_scale`` over the
    batch (and positions, for convolutions). A layer without a bias (one followed by a
    mean-only batch norm) gets the scale only. The pass continues with the re-initialized
    outputs, so each layer sees its inputs as the layers below it now produce them.

    In formulas, with ``t`` a unit's current output, mean ``mu`` and standard deviation
    ``sigma`` over the batch: ``g <- g * s`` and ``b <- (b - mu) * s`` with
    ``s = init_scale / sqrt(sigma^2 + eps)``, so the new output is ``(t - mu) * s``. The
    paper's rule (``g = 1 / sigma``, ``b = -mu / sigma`` for ``t = v.x / ||v||``) is the case
    ``g = 1``, ``b = 0`` before the call.

    The pass runs without gradients in the model's current mode; buffers (a batch norm's
    running statistics) are restored afterwards, and everything if the pass fails. Returns
    ``model``.

    Derived in ``chapters/09_weight_norm.ipynb``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    V.check_number(init_scale, "init_scale", 0, open_low=True)
    V.check_eps(eps)
    layers = _weight_normalized_layers(model)
    if not layers:
        raise ValueError(f"model: expected at least one layer under weight_norm, got none in {type(model).__name__}")

    def initialize(name):
        def hook(module, args, output):
            axis = _unit_axis(module) % output.dim()
            units = output.shape[axis]
            if output.numel() // max(units, 1) < 2:
                raise ValueError(f"inputs: expected more than one value per unit at layer {name!r} "
                                 f"(output shape {tuple(output.shape)})")
            dims = [d for d in range(output.dim()) if d != axis]
            t = output.to(V.stats_dtype(output.dtype))
            var, mean = torch.var_mean(t, dim=dims, keepdim=True, correction=0)
            scale = init_scale * torch.rsqrt(var + eps)
            g = module.parametrizations.weight.original0
            g.mul_(scale.flatten().view_as(g).to(g.dtype))
            if module.bias is None:
                return (t * scale).to(output.dtype)
            module.bias.sub_(mean.flatten().to(module.bias.dtype)).mul_(scale.flatten().to(module.bias.dtype))
            return ((t - mean) * scale).to(output.dtype)
        return hook

    saved = {name: value.clone() for name, value in model.state_dict().items()}
    buffers = {name for name, _ in model.named_buffers()}
    handles = [module.register_forward_hook(initialize(name)) for name, module in layers]
    try:
        with torch.no_grad():
            model(*inputs)
    except BaseException:
        model.load_state_dict(saved)  # a failed pass leaves the model as it found it
        raise
    finally:
        for handle in handles:
            handle.remove()
    model.load_state_dict({name: saved[name] for name in buffers & saved.keys()}, strict=False)
    return model
