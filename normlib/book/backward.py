"""Hand-derived backward passes of the normalizations, written out as the chapters derive
them. Autograd does not need them; they are here so that the derivations are executable
and tested against autograd (and they are the formulas the GPU kernels implement).
"""

from __future__ import annotations

import torch

from normlib import _validation as V

__all__ = ["batch_norm_backward", "layer_norm_backward", "rms_norm_backward", "group_norm_backward"]


def _normalized_backward(grad_xhat: torch.Tensor, xhat: torch.Tensor, rstd: torch.Tensor, dims) -> torch.Tensor:
    """Gradient through ``xhat = (x - mean) * rstd`` when mean and rstd are statistics over
    ``dims``: ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``."""
    mean_g = grad_xhat.mean(dim=dims, keepdim=True)
    mean_gx = (grad_xhat * xhat).mean(dim=dims, keepdim=True)
    return rstd * (grad_xhat - mean_g - xhat * mean_gx)


def _standardized_backward(grad_output, input, weight, stat_dims, param_dims, eps):
    """Gradients of ``y = gamma * (x - mean) * rstd + beta`` with the statistics taken over
    ``stat_dims`` and ``gamma``, ``beta`` (already shaped to broadcast) shared over ``param_dims``."""
    var, mean = torch.var_mean(input, dim=stat_dims, keepdim=True, correction=0)
    rstd = torch.rsqrt(var + eps)
    xhat = (input - mean) * rstd
    grad_xhat = grad_output * weight if weight is not None else grad_output
    grad_input = _normalized_backward(grad_xhat, xhat, rstd, stat_dims)
    if weight is None:
        return grad_input, None, None
    return grad_input, (grad_output * xhat).sum(dim=param_dims), grad_output.sum(dim=param_dims)


def batch_norm_backward(grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor | None = None,
                        eps: float = 1e-5):
    """Gradients of training-mode batch normalization of an ``(N, C, *)`` input.

    Returns ``(grad_input, grad_weight, grad_bias)``; ``grad_weight`` and ``grad_bias`` are
    ``None`` when ``weight`` is. Derived in ``chapters/02_batch_norm.ipynb``.
    """
    V.check_tensor(input, "input", min_dim=2)
    V.check_tensor(grad_output, "grad_output", min_dim=2)
    if grad_output.shape != input.shape:
        raise ValueError(f"grad_output: expected shape {tuple(input.shape)}, got {tuple(grad_output.shape)}")
    V.check_param(weight, "weight", (input.shape[1],), input)
    V.check_eps(eps)
    dims = list(V.batch_axes(input.dim()))
    if weight is not None:
        weight = V.per_channel(weight, input.dim())
    # statistics and parameters both live per channel: reduce over the same axes
    return _standardized_backward(grad_output, input, weight, dims, dims, eps)


def _last_axes(grad_output, input, normalized_shape, weight):
    """Check the arguments of a norm over the trailing ``normalized_shape`` axes; return
    those axes and the leading (batch) axes."""
    V.check_tensor(input, "input")
    shape = V.normalized_shape_tuple(normalized_shape)
    V.check_trailing_shape(input, shape)
    if grad_output.shape != input.shape:
        raise ValueError(f"grad_output: expected shape {tuple(input.shape)}, got {tuple(grad_output.shape)}")
    V.check_param(weight, "weight", shape, input)
    return tuple(range(-len(shape), 0)), tuple(range(input.dim() - len(shape)))


def layer_norm_backward(grad_output: torch.Tensor, input: torch.Tensor, normalized_shape,
                        weight: torch.Tensor | None = None, eps: float = 1e-5):
    """Gradients of layer normalization over the trailing ``normalized_shape`` axes.

    Returns ``(grad_input, grad_weight, grad_bias)``. Derived in ``chapters/03_layer_norm.ipynb``.
    """
    dims, batch_dims = _last_axes(grad_output, input, normalized_shape, weight)
    # statistics per example (over the features), parameters per feature (over the examples)
    return _standardized_backward(grad_output, input, weight, dims, batch_dims, eps)


def rms_norm_backward(grad_output: torch.Tensor, input: torch.Tensor, normalized_shape,
                      weight: torch.Tensor | None = None, eps: float | None = None):
    """Gradients of RMS normalization ``y = x * r * gamma`` with ``r = (mean(x^2) + eps)^(-1/2)``:
    ``dx = r * (g - xhat * mean(g * xhat))`` with ``g = dy * gamma`` and ``xhat = x * r``.

    ``eps=None`` is the input dtype's machine epsilon, as in :func:`normlib.functional.rms_norm`.
    Returns ``(grad_input, grad_weight)``. Derived in ``chapters/04_rms_norm.ipynb``.
    """
    dims, batch_dims = _last_axes(grad_output, input, normalized_shape, weight)
    eps = torch.finfo(input.dtype).eps if eps is None else eps
    rstd = torch.rsqrt(input.square().mean(dim=dims, keepdim=True) + eps)
    xhat = input * rstd
    grad_xhat = grad_output * weight if weight is not None else grad_output
    grad_input = rstd * (grad_xhat - xhat * (grad_xhat * xhat).mean(dim=dims, keepdim=True))
    grad_weight = (grad_output * xhat).sum(dim=batch_dims) if weight is not None else None
    return grad_input, grad_weight


def group_norm_backward(grad_output: torch.Tensor, input: torch.Tensor, num_groups: int,
                        weight: torch.Tensor | None = None, eps: float = 1e-5):
    """Gradients of group normalization of an ``(N, C, *)`` input: the statistics live per
    example and group of ``C / num_groups`` channels (all positions), ``gamma`` and ``beta`` per
    channel. ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` with ``g = dy * gamma`` and the
    means over each group.

    Returns ``(grad_input, grad_weight, grad_bias)``. Derived in ``chapters/05_group_norm.ipynb``.
    """
    V.check_tensor(input, "input", min_dim=2)
    if grad_output.shape != input.shape:
        raise ValueError(f"grad_output: expected shape {tuple(input.shape)}, got {tuple(grad_output.shape)}")
    V.check_positive_int(num_groups, "num_groups")
    if input.shape[1] % num_groups != 0:
        raise ValueError(f"num_groups: expected a divisor of the number of channels {input.shape[1]}, got {num_groups}")
    V.check_param(weight, "weight", (input.shape[1],), input)
    V.check_eps(eps)
    grouped = lambda t: t.reshape(input.shape[0], num_groups, -1)  # noqa: E731
    var, mean = torch.var_mean(grouped(input), dim=-1, keepdim=True, correction=0)
    rstd = torch.rsqrt(var + eps)
    xhat = (grouped(input) - mean) * rstd
    if weight is not None:
        weight = V.per_channel(weight, input.dim())
    grad_xhat = grad_output * weight if weight is not None else grad_output
    grad_input = _normalized_backward(grouped(grad_xhat), xhat, rstd, -1).reshape(input.shape)
    if weight is None:
        return grad_input, None, None
    param_dims = list(V.batch_axes(input.dim()))
    return grad_input, (grad_output * xhat.reshape(input.shape)).sum(param_dims), grad_output.sum(param_dims)
