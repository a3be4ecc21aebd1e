"""Reference implementations: each normalization written out plainly in PyTorch, as the chapters
derive it. They are what every other path is tested against (as ``torch._refs`` is to ATen):
:mod:`normlib.functional` validates its arguments and then runs either torch's native CPU op
(where its numerics are these), the Triton kernels (CUDA), or these functions.

The numerics every path shares:

* statistics are computed in float32 for float16/bfloat16/float32 inputs (float64 for float64),
  and the result is cast back to the input's dtype;
* variances come from :func:`torch.var_mean`, a stable (two-pass) reduction, never from
  ``E[x^2] - E[x]^2`` on the raw input;
* an empty batch gives an empty result (and leaves running statistics alone), as in torch.

These functions do not check their arguments: call :mod:`normlib.functional` for that.
Notation (the book's): input ``(N, C, *)``; ``mu``, ``sigma^2`` the mean and biased variance over
the reduced axes; ``eps`` inside the square root; ``gamma`` (``weight``), ``beta`` (``bias``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as TF

from normlib._validation import batch_axes, per_channel, spatial_axes, stats_dtype

__all__ = ["standardize", "batch_norm", "mean_only_batch_norm", "layer_norm", "rms_norm", "partial_rms_norm", "group_norm",
           "instance_norm", "local_response_norm", "adain", "l2_normalize", "scale_norm", "dyt", "weight_standardization",
           "scaled_weight_standardization", "gaussian_window", "local_contrast_statistics",
           "local_contrast_norm", "global_response_norm", "modulate", "per_condition", "residual_add", "qk_norm", "rotate_halves"]


def standardize(x: torch.Tensor, dims, eps: float):
    """``(x - mu) / sqrt(sigma^2 + eps)`` over ``dims`` in the statistics dtype, with mu and sigma^2.
    Derived in ``chapters/02_batch_norm.ipynb``."""
    xs = x.to(stats_dtype(x.dtype))
    if xs.numel() == 0:  # nothing to normalize (and no statistics worth a warning from var_mean)
        zeros = xs.sum(dim=dims, keepdim=True)
        return xs, zeros, zeros
    var, mean = torch.var_mean(xs, dim=dims, keepdim=True, correction=0)
    return (xs - mean) * torch.rsqrt(var + eps), mean, var


def _affine(y: torch.Tensor, weight, bias, view=lambda p: p) -> torch.Tensor:
    if weight is not None:
        y = y * view(weight).to(y.dtype)
    if bias is not None:
        y = y + view(bias).to(y.dtype)
    return y


def _update_running(running: torch.Tensor | None, batch_stat: torch.Tensor, momentum: float) -> None:
    """``running = (1 - momentum) * running + momentum * batch_stat``, in place, without grad."""
    if running is not None:
        with torch.no_grad():
            running.mul_(1 - momentum).add_(batch_stat.detach().to(running.dtype), alpha=momentum)


def _unbiased(var: torch.Tensor, count: int) -> torch.Tensor:
    return var * (count / (count - 1))


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5) -> torch.Tensor:
    """Batch normalization of ``(N, C, *)``: per channel over the batch and positions (training:
    batch statistics, running ones updated with the unbiased variance; evaluation: running ones).
    Derived in ``chapters/02_batch_norm.ipynb``."""
    view = lambda p: per_channel(p, input.dim())  # noqa: E731
    if not training:
        sd = stats_dtype(input.dtype)
        y = (input.to(sd) - view(running_mean.to(sd))) * torch.rsqrt(view(running_var.to(sd)) + eps)
    else:
        y, mean, var = standardize(input, batch_axes(input.dim()), eps)
        count = input.numel() // input.shape[1] if input.shape[1] else 0
        if count > 1:
            _update_running(running_mean, mean.flatten(), momentum)
            _update_running(running_var, _unbiased(var.flatten(), count), momentum)
    return _affine(y, weight, bias, view).to(input.dtype)


def mean_only_batch_norm(input, running_mean, bias=None, training=False, momentum=0.1) -> torch.Tensor:
    """Mean-only batch normalization of ``(N, C, *)``: ``x - mu + beta`` per channel, with the
    batch mean in training (the running mean updated) and the running mean in evaluation; no
    division by a standard deviation. Derived in ``chapters/09_weight_norm.ipynb``."""
    view = lambda p: per_channel(p, input.dim())  # noqa: E731
    xs = input.to(stats_dtype(input.dtype))
    if training:
        mean = xs.mean(dim=batch_axes(input.dim()), keepdim=True) if xs.numel() else 0.0
        if xs.numel():
            _update_running(running_mean, mean.flatten(), momentum)
    else:
        mean = view(running_mean.to(xs.dtype))
    return _affine(xs - mean, None, bias, view).to(input.dtype)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, weight_offset=0.0, casting_mode="fp32",
               out_dtype=None) -> torch.Tensor:
    """Layer normalization over the trailing ``normalized_shape`` axes of each example, with
    gain ``weight_offset + weight``, rounded where ``casting_mode`` says (``_gain``).
    Derived in ``chapters/03_layer_norm.ipynb``."""
    dims = tuple(range(-len(normalized_shape), 0))
    if casting_mode == "none":
        var, mean = torch.var_mean(input.to(stats_dtype(input.dtype)), dim=dims, keepdim=True, correction=0)
        xhat = (input - mean.to(input.dtype)) * torch.rsqrt(var + eps).to(input.dtype)
    else:
        xhat, _, _ = standardize(input, dims, eps)
    return _gain(xhat, input.dtype, weight, bias, weight_offset, casting_mode, out_dtype)


def rms_norm(input, normalized_shape, weight=None, eps=None, *, weight_offset=0.0, casting_mode="fp32",
             out_dtype=None) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * (weight_offset + gamma)`` over the trailing axes; ``eps=None``
    is the input dtype's machine epsilon; rounded where ``casting_mode`` says (``_gain``).
    Derived in ``chapters/04_rms_norm.ipynb``."""
    eps = torch.finfo(input.dtype).eps if eps is None else eps
    dims = tuple(range(-len(normalized_shape), 0))
    xs = input.to(stats_dtype(input.dtype))
    rstd = torch.rsqrt(xs.square().mean(dim=dims, keepdim=True) + eps)
    xhat = input * rstd.to(input.dtype) if casting_mode == "none" else xs * rstd
    return _gain(xhat, input.dtype, weight, None, weight_offset, casting_mode, out_dtype)


def _gain(xhat, dtype, weight, bias, weight_offset, casting_mode, out_dtype) -> torch.Tensor:
    """``xhat * (weight_offset + weight) + bias`` for a normalized input ``xhat`` (float32 or
    wider, or already in the input dtype for "none"), rounded where the models do:

    * ``"fp32"``: gain and shift in float32, one rounding to the input dtype (Gemma, T5, torch);
    * ``"llama"``: ``xhat`` rounded to the input dtype, then the gain and shift in torch's
      promotion of it with the parameters (Llama, Mistral, Qwen2); ``"none"`` likewise, its
      ``xhat`` computed in the input dtype from rounded statistics.

    ``out_dtype`` (default: the input's for "fp32", the promoted one otherwise) rounds last."""
    if casting_mode == "fp32":
        if weight is not None and weight_offset:
            weight = weight_offset + weight.to(xhat.dtype)
        return _affine(xhat, weight, bias).to(out_dtype or dtype)
    y = xhat.to(dtype)
    if weight is not None:
        y = (weight_offset + weight if weight_offset else weight) * y
    if bias is not None:
        y = y + bias
    return y if out_dtype is None else y.to(out_dtype)


def qk_norm(input, weight=None, eps=None, bias=None, cos=None, sin=None, rms=True) -> torch.Tensor:
    """Per-head QK-norm: RMSNorm (or LayerNorm, ``rms=False``) over the last axis (the head
    dimension D) of ``(..., T, H, D)``, then, with ``cos``/``sin`` of shape ``(T, D/2)``, the
    rotary embedding (GPT-NeoX's half rotation: ``(a, b) -> (a cos - b sin, b cos + a sin)`` on the
    halves), all in float32 (or wider), rounded once. Derived in ``chapters/14_attention_norms.ipynb``."""
    wide = stats_dtype(input.dtype)
    if rms:
        y = rms_norm(input, (input.shape[-1],), weight, eps, out_dtype=wide)
    else:
        y = layer_norm(input, (input.shape[-1],), weight, bias, 1e-5 if eps is None else eps, out_dtype=wide)
    return (rotate_halves(y, cos, sin) if cos is not None else y).to(input.dtype)


def rotate_halves(y, cos, sin) -> torch.Tensor:
    """The rotary embedding of ``(..., T, H, D)``: each position's halves ``(a, b)`` of every head
    rotated to ``(a cos - b sin, b cos + a sin)``, ``cos``/``sin`` of shape ``(T, D/2)``, in
    ``y``'s dtype. Derived in ``chapters/14_attention_norms.ipynb``."""
    first, second = y.chunk(2, dim=-1)
    cos, sin = cos.to(y.dtype)[:, None, :], sin.to(y.dtype)[:, None, :]   # (T, 1, D/2): over the heads
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def residual_add(input, residual, residual_dtype, gate=None) -> torch.Tensor:
    """``residual + input`` (or adaLN-Zero's gated ``residual + gate * input``, the gate per
    example or per token) computed in float32 (or wider) and rounded once to ``residual_dtype``:
    the stream a pre-norm block adds to and normalizes. Derived in ``chapters/20_kernels.ipynb``."""
    wide = stats_dtype(torch.promote_types(input.dtype, residual.dtype))
    branch = input.to(wide) if gate is None else input.to(wide) * per_condition(gate, input.to(wide))
    return (branch + residual.to(wide)).to(residual_dtype)


def partial_rms_norm(input, normalized_shape, fraction, weight=None, eps=None) -> torch.Tensor:
    """pRMSNorm: the RMS estimated from the first ``ceil(fraction * n)`` of the ``n`` normalized
    features (row-major order), every feature divided by it. Derived in ``chapters/04_rms_norm.ipynb``."""
    eps = torch.finfo(input.dtype).eps if eps is None else eps
    n = math.prod(normalized_shape)
    k = max(1, math.ceil(fraction * n))
    xs = input.to(stats_dtype(input.dtype))
    flat = xs.reshape(*input.shape[: input.dim() - len(normalized_shape)], n)
    mean_square = flat[..., :k].square().mean(dim=-1, keepdim=True)
    y = (flat * torch.rsqrt(mean_square + eps)).reshape(input.shape)
    return _affine(y, weight, None).to(input.dtype)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, scale=None, shift=None,
               silu=False) -> torch.Tensor:
    """Per example, statistics over each group of ``C / num_groups`` channels and all positions;
    then, optionally, a diffusion UNet's ``y * (1 + scale) + shift`` (``(N, C)``, per example)
    and SiLU, in float32 (or wider), rounded once. Derived in ``chapters/05_group_norm.ipynb``."""
    if scale is not None or silu:
        y = group_norm(input.to(stats_dtype(input.dtype)), num_groups, weight, bias, eps)   # the same statistics
        if scale is not None:
            y = y * (1 + per_condition(scale, y, channels_last=False)) + per_condition(shift, y, channels_last=False)
        return (TF.silu(y) if silu else y).to(input.dtype)
    n, channels = input.shape[:2]
    # explicit sizes: a -1 cannot be inferred for an empty batch
    group_size = (channels // num_groups) * math.prod(input.shape[2:])
    y, _, _ = standardize(input.reshape(n, num_groups, group_size), -1, eps)
    return _affine(y.reshape(input.shape), weight, bias, lambda p: per_channel(p, input.dim())).to(input.dtype)


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5) -> torch.Tensor:
    """Each channel of each example over its positions; running statistics (if given) track the
    batch average of the per-instance ones. Derived in ``chapters/06_instance_norm.ipynb``."""
    view = lambda p: per_channel(p, input.dim())  # noqa: E731
    if not use_input_stats:
        sd = stats_dtype(input.dtype)
        y = (input.to(sd) - view(running_mean.to(sd))) * torch.rsqrt(view(running_var.to(sd)) + eps)
        return _affine(y, weight, bias, view).to(input.dtype)
    y, mean, var = standardize(input, spatial_axes(input.dim()), eps)
    count = math.prod(input.shape[2:])
    if input.shape[0] > 0 and count > 1:
        _update_running(running_mean, mean.flatten(1).mean(0), momentum)
        _update_running(running_var, _unbiased(var.flatten(1), count).mean(0), momentum)
    return _affine(y, weight, bias, view).to(input.dtype)


def local_response_norm(input, size, alpha=1e-4, beta=0.75, k=1.0) -> torch.Tensor:
    """``x_c / (k + alpha / size * sum_{c' near c} x_{c'}^2) ** beta`` over a zero-padded window of
    ``size`` channels centred on ``c``. Derived in ``chapters/17_local_norms.ipynb``."""
    xs = input.to(stats_dtype(input.dtype))
    # F.pad lists (before, after) pairs from the last dimension backwards; only channels are padded
    pad = [0, 0] * (input.dim() - 2) + [size // 2, (size - 1) // 2]
    padded, channels = TF.pad(xs.square(), pad), input.shape[1]
    window_sum = sum(padded[:, j:j + channels] for j in range(size))  # channel c sums c .. c + size - 1
    return (xs / (k + alpha / size * window_sum).pow(beta)).to(input.dtype)


def gaussian_window(kernel_size: int, sigma: float, channels: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """A ``(1, channels, kernel_size, kernel_size)`` averaging window: a Gaussian of standard
    deviation ``sigma`` (pixels) over the positions, uniform over the channels, summing to 1.
    Derived in ``chapters/17_local_norms.ipynb``."""
    offsets = torch.arange(kernel_size, dtype=dtype, device=device) - (kernel_size - 1) / 2
    profile = torch.exp(-offsets.square() / (2 * sigma ** 2))
    window = profile[:, None] * profile[None, :]
    return (window / (window.sum() * channels)).expand(1, channels, kernel_size, kernel_size)


def local_contrast_statistics(input, kernel_size=9, sigma=2.0):
    """The pieces of :func:`local_contrast_norm`, in float32 (or wider): the input minus its
    local mean ``v``, the local standard deviation ``s`` (``(N, 1, H, W)``) and its mean over
    each image ``s_bar`` (``(N, 1, 1, 1)``). Derived in ``chapters/17_local_norms.ipynb``."""
    xs = input.to(stats_dtype(input.dtype))
    window = gaussian_window(kernel_size, sigma, input.shape[1], xs.dtype, xs.device)
    pad = kernel_size // 2

    def local_mean(t):  # the window's average, renormalized to the part inside the image
        return TF.conv2d(t, window, padding=pad)

    mass = local_mean(torch.ones_like(xs[:1]))
    v = xs - local_mean(xs) / mass
    local_std = (local_mean(v.square()) / mass).sqrt()
    return v, local_std, local_std.mean(dim=(2, 3), keepdim=True)


def local_contrast_norm(input, kernel_size=9, sigma=2.0, eps=1e-4) -> torch.Tensor:
    """Local contrast normalization (Jarrett et al. 2009) of ``(N, C, H, W)`` images or feature
    maps, with a :func:`gaussian_window` ``w`` (over the positions and all channels, summing to
    1 over both):

    * subtractive: ``v = x - w * x`` (``*`` a convolution, the same local mean for every
      channel);
    * divisive: ``y = v / max(s_bar, s, eps)`` with the local standard deviation
      ``s = sqrt(w * v^2)`` and ``s_bar`` its mean over the positions of each image.

    Near the borders the window is renormalized to the part that lies inside the image, so
    ``w`` always sums to 1 and ``y(a x + b) = y(x)`` for any ``a > 0`` and ``b`` (exactly, where
    ``a * max(s_bar, s)`` stays above ``eps``). Computed in float32 (or wider).
    Derived in ``chapters/17_local_norms.ipynb``."""
    if input.numel() == 0:
        return input.clone()
    v, local_std, image_std = local_contrast_statistics(input, kernel_size, sigma)
    return (v / torch.maximum(local_std, image_std).clamp(min=eps)).to(input.dtype)


def global_response_norm(input, weight=None, bias=None, eps=1e-6, channels_last=True) -> torch.Tensor:
    """GRN, ``weight * (x * n) + bias + x`` with ``n_c = g_c / (mean_c' g_c' + eps)`` and
    ``g_c`` channel ``c``'s L2 norm over the positions of its example: aggregate each channel
    globally, normalize the aggregates divisively across channels, calibrate. Computed in
    float32 (or wider). Derived in ``chapters/18_global_response_norm.ipynb``."""
    xs = input.to(stats_dtype(input.dtype))
    channel_axis = -1 if channels_last else 1
    positions = tuple(range(1, xs.dim() - 1)) if channels_last else tuple(range(2, xs.dim()))
    energy = torch.linalg.vector_norm(xs, dim=positions, keepdim=True)
    share = energy / (energy.mean(dim=channel_axis, keepdim=True) + eps)
    view = [1] * xs.dim()
    view[channel_axis] = -1
    out = xs * share
    if weight is not None:
        out = out * weight.to(xs.dtype).reshape(view)
    if bias is not None:
        out = out + bias.to(xs.dtype).reshape(view)
    return (out + xs).to(input.dtype)


def modulate(input, shift, scale, channels_last=True) -> torch.Tensor:
    """``x * (1 + scale) + shift``, ``shift`` and ``scale`` per example and channel (``(N, C)``,
    broadcast over the positions) or per element. Computed in float32 (or wider), rounded once.
    Derived in ``chapters/19_conditional_norms.ipynb``."""
    xs = input.to(stats_dtype(input.dtype))
    return (xs * (1 + per_condition(scale, xs, channels_last)) + per_condition(shift, xs, channels_last)).to(input.dtype)


def per_condition(p, like, channels_last=True) -> torch.Tensor:
    """A per-example ``(N, C)`` tensor viewed to broadcast over ``like``'s positions
    (``(N, 1, ..., 1, C)``, or ``(N, C, 1, ..., 1)`` channels-first), in ``like``'s dtype; a
    tensor of ``like``'s shape (per element) as it is. Derived in ``chapters/19_conditional_norms.ipynb``."""
    p = p.to(like.dtype)
    if p.shape == like.shape:
        return p
    ones = [1] * (like.dim() - 2)
    return p.reshape(p.shape[0], *ones, p.shape[1]) if channels_last else p.reshape(*p.shape, *ones)


def adain(content, style, eps=1e-5) -> torch.Tensor:
    """``sigma(y) (x - mu(x)) / sigma(x) + mu(y)``, per-instance, per-channel statistics over the
    positions, ``sigma = sqrt(var + eps)``; ``style`` is the feature map ``y`` or its statistics
    ``(mu(y), sigma(y))``, each ``(N, C)``. Derived in ``chapters/07_adain.ipynb``."""
    dims = spatial_axes(content.dim())
    normalized, _, _ = standardize(content, dims, eps)
    if isinstance(style, tuple):
        style_mean, style_std = (s.to(normalized.dtype).reshape(*s.shape, *[1] * len(dims)) for s in style)
    else:
        style_var, style_mean = torch.var_mean(style.to(normalized.dtype), dim=dims, keepdim=True, correction=0)
        style_std = torch.sqrt(style_var + eps)
    return (normalized * style_std + style_mean).to(content.dtype)


def l2_normalize(x, dim=-1, eps=1e-12) -> torch.Tensor:
    """``x / max(||x||, eps)`` along ``dim``. Derived in ``chapters/16_ngpt.ipynb``."""
    xs = x.to(stats_dtype(x.dtype))
    norm = torch.linalg.vector_norm(xs, dim=dim, keepdim=True)
    return (xs / norm.clamp_min(eps)).to(x.dtype)


def scale_norm(input, scale, eps=1e-5) -> torch.Tensor:
    """ScaleNorm, ``g * x / max(||x||, eps)`` over the last axis with one scalar ``g``
    (``scale``): an L2 normalization to a learned length. Computed in float32 for half-precision
    inputs and rounded once. Derived in ``chapters/14_attention_norms.ipynb``."""
    xs = input.to(stats_dtype(input.dtype))
    return (scale.to(xs.dtype) * l2_normalize(xs, -1, eps)).to(input.dtype)


def dyt(input, alpha, weight=None, bias=None, channels_last=True) -> torch.Tensor:
    """Dynamic Tanh, ``gamma * tanh(alpha * x) + beta``: one scalar ``alpha``, a per-feature gain
    and shift over the last axis (``channels_last``) or axis 1 (``(N, C, *)``). No statistics:
    each element is squashed on its own. Computed in float32 for half-precision inputs.
    Derived in ``chapters/15_dyt.ipynb``."""
    xs = input.to(stats_dtype(input.dtype))
    y = torch.tanh(alpha.to(xs.dtype) * xs)
    view = (lambda p: p) if channels_last else (lambda p: per_channel(p, input.dim()))
    return _affine(y, weight, bias, view).to(input.dtype)


def weight_standardization(weight, eps=1e-6) -> torch.Tensor:
    """Each output channel's weights (``weight[o]``, over the fan-in ``C_in * k * k``)
    standardized: ``(W - mu) / sqrt(sigma^2 + eps)`` with the biased variance, statistics in
    float32 (or wider). Derived in ``chapters/10_weight_standardization.ipynb``."""
    return _standardize_filters(weight, eps)


def scaled_weight_standardization(weight, gain=None, gamma=1.0, eps=1e-6) -> torch.Tensor:
    """Scaled weight standardization of NF-ResNets: the standardized filter of
    :func:`weight_standardization` times ``gain[o] * gamma / sqrt(fan_in)``, so that a filter
    applied to unit-variance, uncorrelated inputs gives outputs of variance ``(gain * gamma)^2``.
    ``gain`` holds one value per output channel (any shape with that many elements; ``None``
    for 1), ``gamma`` undoes the activation's variance loss. Computed in float32 (or wider).
    Derived in ``chapters/11_normalizer_free.ipynb``."""
    if weight.numel() == 0:
        return weight.clone()
    factor = gamma / math.sqrt(weight[0].numel())
    if gain is not None:
        factor = factor * gain.to(stats_dtype(weight.dtype)).reshape(-1)
    return _standardize_filters(weight, eps, factor)


def _standardize_filters(weight, eps, factor=None) -> torch.Tensor:
    """``(W[o] - mu[o]) / sqrt(var[o] + eps) * factor[o]`` (biased variance, float32 or wider),
    cast back to the weight's dtype once at the end."""
    w = weight.to(stats_dtype(weight.dtype))
    if w.numel() == 0:  # no filters: nothing to standardize
        return weight.clone()
    view = (-1,) + (1,) * (weight.dim() - 1)
    var, mean = torch.var_mean(w.flatten(1), dim=1, correction=0)
    scale = torch.rsqrt(var + eps)
    if factor is not None:
        scale = scale * factor
    return ((w - mean.view(view)) * scale.view(view)).to(weight.dtype)
