"""Normalization functions with ``torch.nn.functional``-compatible signatures.

Each function checks its inputs (see ``normlib._checks``), then computes the
normalization in a readable reference path:

* statistics are computed in float32 for float16/bfloat16 inputs (in the input dtype
  otherwise) and the result is cast back to the input dtype;
* variances come from :func:`torch.var_mean`, a numerically stable (Welford / two-pass)
  reduction, never from ``E[x^2] - E[x]^2`` on the raw input.

CUDA tensors go to the fused Triton kernels of :mod:`normlib.kernels` instead (batch, layer,
RMS, group and instance norm) when :func:`normlib.kernels.available` is true; they compute the
same function, checked against this path by ``tests/test_kernels.py``.

Notation (the book's): an input of shape ``(N, C, *)``; ``mu`` and ``sigma^2`` the mean and
biased variance over the reduced axes; ``eps`` added inside the square root; ``gamma``
(``weight``) and ``beta`` (``bias``) the optional affine parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from normlib import _checks as C
from normlib import kernels

__all__ = [
    "batch_norm",
    "ghost_batch_norm",
    "mixed_batch_norm",
    "layer_norm",
    "rms_norm",
    "partial_rms_norm",
    "group_norm",
    "instance_norm",
    "local_response_norm",
    "adain",
    "l2_normalize",
]


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half-precision inputs, the input dtype otherwise."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _standardize(x: torch.Tensor, dims, eps: float):
    """Return ``(x - mu) / sqrt(sigma^2 + eps)`` in the statistics dtype, and mu, sigma^2."""
    xs = x.to(_stats_dtype(x))
    var, mean = torch.var_mean(xs, dim=dims, keepdim=True, correction=0)
    return (xs - mean) * torch.rsqrt(var + eps), mean, var


def _channel_view(p: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a per-channel vector (C,) to broadcast against an (N, C, *) tensor."""
    return p.view(1, -1, *([1] * (ndim - 2)))


def _affine(y: torch.Tensor, weight, bias, view=lambda p: p) -> torch.Tensor:
    if weight is not None:
        y = y * view(weight).to(y.dtype)
    if bias is not None:
        y = y + view(bias).to(y.dtype)
    return y


def _check_same_device(x: torch.Tensor, name: str, other: torch.Tensor) -> None:
    if other.device != x.device:
        raise ValueError(f"{name}: expected a tensor on {x.device} like the input, got one on {other.device}")


def _check_per_channel(input: torch.Tensor, **params) -> None:
    """Each given per-channel tensor must have shape (C,) and sit on the input's device."""
    for name, p in params.items():
        C.check_param(p, name, (input.shape[1],), input)


def _use_kernels(input: torch.Tensor) -> bool:
    """CUDA tensors take the Triton kernels when they are available (``normlib.kernels.backend()``)."""
    return input.is_cuda and kernels.available()


def _update_running(running: torch.Tensor | None, batch_stat: torch.Tensor, momentum: float) -> None:
    """``running = (1 - momentum) * running + momentum * batch_stat``, in place, without grad."""
    if running is not None:
        with torch.no_grad():
            running.mul_(1 - momentum).add_(batch_stat.detach().to(running.dtype), alpha=momentum)


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Batch normalization over the batch and spatial axes of an ``(N, C, *)`` input.

    In training mode each channel is normalized with the mean and biased variance of the
    current batch, and the running statistics (if given) are updated in place:
    ``running = (1 - momentum) * running + momentum * batch_stat``, where the variance
    stored is the unbiased one (as in PyTorch). In evaluation mode the running statistics
    are used instead. Same signature and semantics as
    :func:`torch.nn.functional.batch_norm`; the module :class:`normlib.nn.BatchNorm1d`
    adds ``momentum=None`` (a cumulative average).

    Derived in ``chapters/02_batch_norm.ipynb``.
    """
    C.check_tensor(input, "input", min_dim=2)
    _check_per_channel(input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    C.check_eps(eps)
    C.check_momentum(momentum)
    dims = [0, *range(2, input.dim())]
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean, running_var: expected tensors in evaluation mode (training=False), got None")
        if _use_kernels(input):
            from normlib.kernels.batch_norm import batch_norm_inference
            return batch_norm_inference(input, running_mean, running_var, weight, bias, eps)
        sd = _stats_dtype(input)
        mean = _channel_view(running_mean.to(sd), input.dim())
        var = _channel_view(running_var.to(sd), input.dim())
        y = (input.to(sd) - mean) * torch.rsqrt(var + eps)
    else:
        count = input.numel() // input.shape[1]
        if count <= 1:
            raise ValueError(
                f"input: expected more than 1 value per channel when training, got input of shape "
                f"{tuple(input.shape)} (use a batch of at least 2, or evaluation mode)"
            )
        if _use_kernels(input):
            from normlib.kernels.batch_norm import batch_norm_training
            y, mean, var = batch_norm_training(input, weight, bias, eps)
            _update_running(running_mean, mean, momentum)
            _update_running(running_var, var * (count / (count - 1)), momentum)  # unbiased
            return y
        y, mean, var = _standardize(input, dims, eps)
        _update_running(running_mean, mean.flatten(), momentum)
        _update_running(running_var, var.flatten() * (count / (count - 1)), momentum)  # unbiased
    view = lambda p: _channel_view(p, input.dim())  # noqa: E731
    return _affine(y, weight, bias, view).to(input.dtype)


def ghost_batch_norm(
    input: torch.Tensor,
    ghost_batch_size: int,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Ghost batch normalization (Hoffer et al. 2017): in training mode the batch is split
    into consecutive "ghost" batches of ``ghost_batch_size`` examples (the last may be
    smaller), each normalized with its own statistics. The running statistics take one
    momentum step towards the average of the ghost batches' means and unbiased variances.
    In evaluation mode it is :func:`batch_norm`. Per-device BatchNorm in data-parallel
    training is ghost batch normalization with the per-device batch as the ghost batch.

    Derived in ``chapters/02_batch_norm.ipynb``.
    """
    C.check_tensor(input, "input", min_dim=2)
    C.check_positive_int(ghost_batch_size, "ghost_batch_size")
    if not training:
        return batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    chunks = input.split(ghost_batch_size)
    means, variances = [], []
    outputs = []
    for chunk in chunks:
        chunk_mean = torch.zeros(input.shape[1], dtype=_stats_dtype(input), device=input.device)
        chunk_var = torch.ones_like(chunk_mean)
        # With momentum 1, batch_norm writes the chunk's mean and unbiased variance into these
        # buffers; it also rejects a chunk with one value per channel.
        outputs.append(batch_norm(chunk, chunk_mean, chunk_var, weight, bias, True, 1.0, eps))
        means.append(chunk_mean)
        variances.append(chunk_var)
    _update_running(running_mean, torch.stack(means).mean(0), momentum)
    _update_running(running_var, torch.stack(variances).mean(0), momentum)
    return torch.cat(outputs)


def mixed_batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    alpha: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Inference-time batch normalization with statistics mixed between the current batch
    and the population (Summers & Dinneen 2020, "inference example weighing"):
    ``mu = alpha * mu_B + (1 - alpha) * mu_pop`` and ``sigma^2`` the variance of the same
    mixture, ``alpha * var_B + (1 - alpha) * var_pop + alpha (1 - alpha) (mu_B - mu_pop)^2``
    (the second moments mixed, written without subtracting squares). ``alpha = 0`` is
    evaluation-mode :func:`batch_norm`; ``alpha = 1`` uses the batch alone.

    Derived in ``chapters/02_batch_norm.ipynb``.
    """
    C.check_tensor(input, "input", min_dim=2)
    _check_per_channel(input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    if running_mean is None or running_var is None:
        raise ValueError("running_mean, running_var: expected tensors, got None")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    C.check_eps(eps)
    sd = _stats_dtype(input)
    dims = [0, *range(2, input.dim())]
    batch_var, batch_mean = torch.var_mean(input.to(sd), dim=dims, correction=0)
    pop_mean, pop_var = running_mean.to(sd), running_var.to(sd)
    mean = alpha * batch_mean + (1 - alpha) * pop_mean
    var = alpha * batch_var + (1 - alpha) * pop_var + alpha * (1 - alpha) * (batch_mean - pop_mean) ** 2
    return batch_norm(input, mean, var, weight, bias, False, 0.0, eps)


def layer_norm(
    input: torch.Tensor,
    normalized_shape,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Layer normalization over the trailing ``normalized_shape`` axes of each example.

    The same computation at training and test time. Same signature and semantics as
    :func:`torch.nn.functional.layer_norm`.

    Derived in ``chapters/03_layer_norm.ipynb``.
    """
    C.check_tensor(input, "input")
    shape = C.normalized_shape_tuple(normalized_shape)
    C.check_trailing_shape(input, shape)
    C.check_param(weight, "weight", shape, input)
    C.check_param(bias, "bias", shape, input)
    C.check_eps(eps)
    if _use_kernels(input):
        from normlib.kernels.rowwise import layer_norm as fused_layer_norm
        return _over_flattened_trailing_axes(fused_layer_norm, input, shape, weight, bias, eps=eps)
    dims = tuple(range(-len(shape), 0))
    y, _, _ = _standardize(input, dims, eps)
    return _affine(y, weight, bias).to(input.dtype)


def _over_flattened_trailing_axes(norm, input, shape, *params, **kwargs) -> torch.Tensor:
    """Apply a norm over the last axis to ``input`` with its trailing ``shape`` axes flattened into one."""
    n = math.prod(shape)
    flat = input.reshape(*input.shape[: input.dim() - len(shape)], n)
    return norm(flat, *(p.reshape(n) if p is not None else None for p in params), **kwargs).reshape(input.shape)


def rms_norm(
    input: torch.Tensor,
    normalized_shape,
    weight: torch.Tensor | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    """Root-mean-square normalization: ``x / sqrt(mean(x^2) + eps) * gamma``.

    LayerNorm without re-centering. ``eps`` sits inside the square root, as in
    :func:`torch.nn.functional.rms_norm`; ``eps=None`` means ``torch.finfo(input.dtype).eps``
    (PyTorch's default).

    Derived in ``chapters/04_rms_norm.ipynb``.
    """
    shape, eps = _rms_arguments(input, normalized_shape, weight, eps)
    if _use_kernels(input):
        from normlib.kernels.rowwise import rms_norm as fused_rms_norm
        return _over_flattened_trailing_axes(fused_rms_norm, input, shape, weight, eps=eps)
    dims = tuple(range(-len(shape), 0))
    xs = input.to(_stats_dtype(input))
    y = xs * torch.rsqrt(xs.square().mean(dim=dims, keepdim=True) + eps)
    return _affine(y, weight, None).to(input.dtype)


def _rms_arguments(input, normalized_shape, weight, eps) -> tuple[tuple[int, ...], float]:
    """Check the arguments shared by the RMSNorm variants; ``eps=None`` becomes the dtype's machine epsilon."""
    C.check_tensor(input, "input")
    shape = C.normalized_shape_tuple(normalized_shape)
    C.check_trailing_shape(input, shape)
    C.check_param(weight, "weight", shape, input)
    C.check_eps(eps, allow_none=True)
    return shape, torch.finfo(input.dtype).eps if eps is None else eps


def partial_rms_norm(
    input: torch.Tensor,
    normalized_shape,
    p: float,
    weight: torch.Tensor | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    """pRMSNorm (Zhang & Sennrich 2019): RMSNorm whose root mean square is estimated from
    the first ``ceil(p * n)`` of the ``n`` normalized features (flattened in row-major
    order), ``0 < p <= 1``; ``p = 1`` is :func:`rms_norm`. All features are then divided by
    that estimate.

    Derived in ``chapters/04_rms_norm.ipynb``.
    """
    shape, eps = _rms_arguments(input, normalized_shape, weight, eps)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ValueError(f"p: expected a fraction in (0, 1], got {p!r}")
    n = math.prod(shape)
    k = max(1, math.ceil(p * n))
    xs = input.to(_stats_dtype(input))
    flat = xs.reshape(*input.shape[: input.dim() - len(shape)], n)
    mean_square = flat[..., :k].square().mean(dim=-1, keepdim=True)
    y = (flat * torch.rsqrt(mean_square + eps)).reshape(input.shape)
    return _affine(y, weight, None).to(input.dtype)


def group_norm(
    input: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Group normalization: per example, statistics over a group of channels and all
    spatial positions. ``num_groups=1`` is LayerNorm over ``(C, *)``; ``num_groups=C`` is
    InstanceNorm. Same signature and semantics as :func:`torch.nn.functional.group_norm`.

    Derived in ``chapters/05_group_norm.ipynb``.
    """
    C.check_tensor(input, "input", min_dim=2)
    C.check_positive_int(num_groups, "num_groups")
    channels = input.shape[1]
    if channels % num_groups != 0:
        raise ValueError(
            f"num_groups: expected a divisor of the number of channels {channels}, got {num_groups}"
        )
    _check_per_channel(input, weight=weight, bias=bias)
    C.check_eps(eps)
    if _use_kernels(input):
        from normlib.kernels.group_norm import group_norm as fused_group_norm
        return fused_group_norm(input, num_groups, weight, bias, eps)
    n = input.shape[0]
    grouped = input.reshape(n, num_groups, -1)
    y, _, _ = _standardize(grouped, -1, eps)
    y = y.reshape(input.shape)
    view = lambda p: _channel_view(p, input.dim())  # noqa: E731
    return _affine(y, weight, bias, view).to(input.dtype)


def instance_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Instance normalization: each channel of each example is normalized over its spatial
    positions. With ``use_input_stats=True`` the running statistics (if given) are updated
    with the batch average of the per-instance statistics; with ``False`` they are used to
    normalize. Same signature and semantics as :func:`torch.nn.functional.instance_norm`.

    Derived in ``chapters/06_instance_norm.ipynb``.
    """
    C.check_tensor(input, "input", min_dim=3)
    _check_per_channel(input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    C.check_eps(eps)
    C.check_momentum(momentum)
    dims = tuple(range(2, input.dim()))
    view = lambda p: _channel_view(p, input.dim())  # noqa: E731
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean, running_var: expected tensors when use_input_stats=False, got None")
        sd = _stats_dtype(input)
        y = (input.to(sd) - view(running_mean.to(sd))) * torch.rsqrt(view(running_var.to(sd)) + eps)
        return _affine(y, weight, bias, view).to(input.dtype)
    count = input[0, 0].numel()
    if count <= 1:
        raise ValueError(
            f"input: expected more than 1 spatial element per channel, got input of shape {tuple(input.shape)}"
        )
    if _use_kernels(input) and running_mean is None and running_var is None:
        from normlib.kernels.group_norm import group_norm as fused_group_norm
        return fused_group_norm(input, input.shape[1], weight, bias, eps)   # one channel per group
    y, mean, var = _standardize(input, dims, eps)
    _update_running(running_mean, mean.flatten(1).mean(0), momentum)
    _update_running(running_var, (var.flatten(1) * (count / (count - 1))).mean(0), momentum)
    return _affine(y, weight, bias, view).to(input.dtype)


def local_response_norm(
    input: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> torch.Tensor:
    """Local response normalization across channels (AlexNet):
    ``x_c / (k + alpha / size * sum_{c' near c} x_{c'}^2) ** beta``, the window of ``size``
    channels centred on ``c`` and zero-padded at the edges. Same signature and semantics as
    :func:`torch.nn.functional.local_response_norm`.

    Described in ``chapters/00_introduction.ipynb``.
    """
    C.check_tensor(input, "input", min_dim=3)
    C.check_positive_int(size, "size")
    if not isinstance(k, (int, float)) or k < 0:
        raise ValueError(f"k: expected a non-negative number, got {k!r}")
    xs = input.to(_stats_dtype(input))
    squares = xs.square()
    # F.pad lists (before, after) pairs from the last dimension backwards; only the
    # channel axis (dim 1) is padded.
    pad = [0, 0] * (input.dim() - 2) + [size // 2, (size - 1) // 2]
    window_sum = F.pad(squares, pad).unfold(1, size, 1).sum(-1)
    return (xs / (k + alpha / size * window_sum).pow(beta)).to(input.dtype)


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Adaptive instance normalization (Huang & Belongie 2017).

    ``AdaIN(x, y) = sigma(y) * (x - mu(x)) / sigma(x) + mu(y)`` with per-instance,
    per-channel statistics over the spatial axes, ``sigma = sqrt(var + eps)`` from the
    biased variance. ``content`` is ``(N, C, *)``; ``style`` is ``(N, C, *')`` or
    ``(1, C, *')`` (one style for the whole batch); the spatial sizes may differ.

    Derived in ``chapters/07_adain.ipynb``.
    """
    C.check_tensor(content, "content", min_dim=3)
    C.check_tensor(style, "style", min_dim=3)
    C.check_eps(eps)
    _check_same_device(content, "style", style)
    if style.dim() != content.dim() or style.shape[1] != content.shape[1]:
        raise ValueError(
            f"style: expected {content.dim()} dimensions and {content.shape[1]} channels like the content, "
            f"got shape {tuple(style.shape)}"
        )
    if style.shape[0] not in (1, content.shape[0]):
        raise ValueError(f"style: expected batch size 1 or {content.shape[0]}, got {style.shape[0]}")
    dims = tuple(range(2, content.dim()))
    for name, t in (("content", content), ("style", style)):
        if t[0, 0].numel() <= 1:
            raise ValueError(f"{name}: expected more than 1 spatial element per channel, got shape {tuple(t.shape)}")
    normalized, _, _ = _standardize(content, dims, eps)
    ys = style.to(_stats_dtype(style))
    style_var, style_mean = torch.var_mean(ys, dim=dims, keepdim=True, correction=0)
    out = normalized * torch.sqrt(style_var + eps).to(normalized.dtype) + style_mean.to(normalized.dtype)
    return out.to(content.dtype)


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """Scale vectors along ``dim`` to unit Euclidean norm: ``x / max(||x||, eps)``.

    The norm is computed in float32 for half-precision inputs. nGPT keeps every embedding,
    hidden state and weight row on the unit sphere with this function.

    Derived in ``chapters/09_ngpt.ipynb``.
    """
    C.check_tensor(x, "x")
    C.check_eps(eps)
    if not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim: expected an int in [{-x.dim()}, {x.dim() - 1}], got {dim!r}")
    xs = x.to(_stats_dtype(x))
    norm = torch.linalg.vector_norm(xs, dim=dim, keepdim=True)
    return (xs / norm.clamp_min(eps)).to(x.dtype)
