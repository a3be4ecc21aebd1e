"""Normalization functions with ``torch.nn.functional``-compatible signatures: normlib's public face.

Each function checks its arguments once (``normlib._validation``) and then takes the fastest
path that computes the same function:

* CUDA tensors: the fused Triton kernels of :mod:`normlib.kernels`, when
  :func:`normlib.kernels.available` is true;
* CPU tensors: torch's native op where its numerics are normlib's (float32 statistics for
  half-precision inputs, a stable variance, in the forward and the backward pass): every op for
  float32/float64 inputs, and RMSNorm and GroupNorm for half-precision ones. torch's CPU
  BatchNorm and InstanceNorm lose accuracy on half-precision inputs with a large mean, and its
  CPU LayerNorm backward on half-precision inputs gets weight and bias gradients 5-10x less
  accurate than float32 accumulation (``tests/test_conformance.py`` measures both), so those
  take the reference path;
* everything else (empty inputs, the ops torch does not have): :mod:`normlib.reference`.

``tests/test_conformance.py`` checks every path against the reference. Notation (the book's):
an input of shape ``(N, C, *)``; ``mu`` and ``sigma^2`` the mean and biased variance over the
reduced axes; ``eps`` inside the square root; ``gamma`` (``weight``) and ``beta`` (``bias``).
"""

from __future__ import annotations

import math

import torch

from normlib import _validation as V
from normlib import kernels, reference

__all__ = [
    "batch_norm",
    "ghost_batch_norm",
    "mean_only_batch_norm",
    "mixed_batch_norm",
    "batch_group_norm",
    "layer_norm",
    "rms_norm",
    "qk_norm",
    "partial_rms_norm",
    "group_norm",
    "instance_norm",
    "local_response_norm",
    "local_contrast_norm",
    "global_response_norm",
    "modulate",
    "spade",
    "adain",
    "l2_normalize",
    "scale_norm",
    "dyt",
    "weight_standardization",
    "scaled_weight_standardization",
]

_HALF = (torch.float16, torch.bfloat16)
_SHAPES = (tuple, torch.Size)


def _use_kernels(input: torch.Tensor) -> bool:
    """CUDA tensors take the Triton kernels when they are available (``normlib.kernels.backend()``)."""
    return input.is_cuda and kernels.available()


def _native(op, check, check_args, *args):
    """torch's native CPU op, which checks shapes and devices itself (so the fast path does not
    check them twice); if it refuses the arguments, ``check(*check_args)`` raises normlib's error
    naming the argument, and torch's own error stands if ``check`` finds nothing wrong."""
    try:
        return op(*args)
    except (RuntimeError, TypeError, ValueError, IndexError):
        check(*check_args)
        raise


def _native_cpu(input, eps, params=(), *, half_ok: bool = True) -> bool:
    """Whether torch's native CPU op computes what the reference does: a non-empty CPU input, a
    positive float ``eps``, parameters all of the input's dtype or all float32 beside a
    half-precision input (torch's mixed-dtype kernels); ``half_ok=False`` for ops whose
    half-precision CPU path is less accurate. False whenever in doubt, so that the validating
    path decides (and raises normlib's errors). It runs on every call, so it is written for speed:
    the common case (parameters of the input's dtype) costs one comparison per parameter."""
    if eps.__class__ is not float or not 0.0 < eps < math.inf:
        return False
    try:
        if not input.is_cpu or not input.numel():
            return False
        dtype = input.dtype
        if dtype is not torch.float32 and dtype is not torch.float64 and (dtype not in _HALF or not half_ok):
            return False
        for p in params:
            if p is not None and p.dtype is not dtype:
                return _mixed_dtypes_ok(dtype, params)
    except AttributeError:  # not a tensor
        return False
    return True


def _mixed_dtypes_ok(dtype: torch.dtype, params) -> bool:
    """torch's mixed-dtype CPU kernels: float32 parameters (all of them) beside a half input."""
    return dtype in _HALF and all(p is None or (isinstance(p, torch.Tensor) and p.dtype is torch.float32)
                                  for p in params)


def _check_per_channel_norm(input, min_dim, running_mean, running_var, weight, bias) -> None:
    """The input and per-channel tensors of BatchNorm and InstanceNorm."""
    V.check_tensor(input, "input", min_dim=min_dim)
    V.check_per_channel(input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)


def _momentum_ok(momentum) -> bool:
    return type(momentum) is float and 0.0 <= momentum <= 1.0


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
    :func:`torch.nn.functional.batch_norm`, an empty batch included; the module
    :class:`normlib.nn.BatchNorm1d` adds ``momentum=None`` (a cumulative average).

    Derived in ``chapters/02_batch_norm.ipynb``.
    """
    params = (running_mean, running_var, weight, bias)
    if (_native_cpu(input, eps, params, half_ok=False) and _momentum_ok(momentum) and input.dim() >= 2
            and (training or running_mean is not None and running_var is not None)):
        if training:
            V.check_values_per_channel(input, input.numel() // input.shape[1])
        return _native(torch.batch_norm, _check_per_channel_norm, (input, 2, *params), input, weight, bias,
                       running_mean, running_var, training, momentum, eps, False)
    V.check_eps(eps)
    V.check_momentum(momentum)
    if not training and (running_mean is None or running_var is None):
        raise ValueError("running_mean, running_var: expected tensors in evaluation mode (training=False), got None")
    _check_per_channel_norm(input, 2, *params)
    count = input.numel() // input.shape[1] if input.shape[1] else 0
    if training:
        V.check_values_per_channel(input, count)
    if _use_kernels(input) and input.numel():
        from normlib.kernels import batch_norm as kernel
        if not training:
            return kernel.batch_norm_inference(input, running_mean, running_var, weight, bias, eps)
        y, mean, var = kernel.batch_norm_training(input, weight, bias, eps)
        reference._update_running(running_mean, mean, momentum)
        reference._update_running(running_var, reference._unbiased(var, count), momentum)
        return y
    return reference.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


def mean_only_batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
) -> torch.Tensor:
    """Mean-only batch normalization (Salimans & Kingma 2016): ``y = x - mu + beta`` per
    channel of an ``(N, C, *)`` input, where ``mu`` is the mean over the batch and positions in
    training mode (and ``running_mean``, if given, is updated in place as in
    :func:`batch_norm`) and ``running_mean`` in evaluation mode. Nothing is divided: it is the
    companion of weight normalization, which fixes the scale of each unit's weights, while
    this removes the mean shift that weight normalization leaves. The mean is taken in float32
    for half-precision inputs; an empty batch gives an empty result.

    Derived in ``chapters/09_weight_norm.ipynb``.
    """
    V.check_momentum(momentum)
    V.check_tensor(input, "input", min_dim=2)
    V.check_per_channel(input, running_mean=running_mean, bias=bias)
    if not isinstance(training, bool):
        raise TypeError(f"training: expected a bool, got {type(training).__name__}")
    if training:
        V.check_values_per_channel(input, input.numel() // input.shape[1] if input.shape[1] else 0)
    elif running_mean is None:
        raise ValueError("running_mean: expected a tensor in evaluation mode (training=False), got None")
    return reference.mean_only_batch_norm(input, running_mean, bias, training, momentum)


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
    V.check_tensor(input, "input", min_dim=2)
    V.check_positive_int(ghost_batch_size, "ghost_batch_size")
    if not training:
        return batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    chunks = input.split(ghost_batch_size)
    means, variances = [], []
    outputs = []
    for chunk in chunks:
        chunk_mean = torch.zeros(input.shape[1], dtype=V.stats_dtype(input.dtype), device=input.device)
        chunk_var = torch.ones_like(chunk_mean)
        # With momentum 1, batch_norm writes the chunk's mean and unbiased variance into these
        # buffers; it also rejects a chunk with one value per channel.
        outputs.append(batch_norm(chunk, chunk_mean, chunk_var, weight, bias, True, 1.0, eps))
        means.append(chunk_mean)
        variances.append(chunk_var)
    reference._update_running(running_mean, torch.stack(means).mean(0), momentum)
    reference._update_running(running_var, torch.stack(variances).mean(0), momentum)
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
    V.check_tensor(input, "input", min_dim=2)
    V.check_per_channel(input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    if running_mean is None or running_var is None:
        raise ValueError("running_mean, running_var: expected tensors, got None")
    V.check_number(alpha, "alpha", 0, 1)
    V.check_eps(eps)
    sd = V.stats_dtype(input.dtype)
    batch_var, batch_mean = torch.var_mean(input.to(sd), dim=V.batch_axes(input.dim()), correction=0)
    pop_mean, pop_var = running_mean.to(sd), running_var.to(sd)
    mean = alpha * batch_mean + (1 - alpha) * pop_mean
    var = alpha * batch_var + (1 - alpha) * pop_var + alpha * (1 - alpha) * (batch_mean - pop_mean) ** 2
    # the mixed statistics depend on the batch, so gradients flow through them: the reference path
    return reference.batch_norm(input, mean, var, weight, bias, False, 0.0, eps)



def batch_group_norm(
    input: torch.Tensor,
    num_groups: int,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Batch normalization combined with group normalization, our reading of Summers &
    Dinneen (2020, whose abstract proposes combining the two for very small batches): each
    statistic pools the batch, the positions and a group of ``C / num_groups`` channels, so
    that a batch of a few examples still gives ``N * C / num_groups * positions`` values per
    statistic. ``num_groups = C`` is :func:`batch_norm`; a batch of one example in training
    mode is :func:`group_norm`. The running statistics have one entry per group, shape
    ``(num_groups,)``, updated and used as :func:`batch_norm` uses its per-channel ones;
    ``weight`` and ``bias`` are per channel.

    Used in ``chapters/02_batch_norm.ipynb``.
    """
    _check_group_norm(input, num_groups, weight, bias)
    n, channels = input.shape[:2]
    per_group = channels // num_groups * math.prod(input.shape[2:])
    # a group of channels is one "channel" of batch_norm: the same statistics, running
    # averages and numerics, then the per-channel affine map on the original layout
    y = batch_norm(input.reshape(n, num_groups, per_group), running_mean, running_var, None, None, training,
                   momentum, eps).reshape(input.shape)
    view = lambda p: V.per_channel(p, input.dim())  # noqa: E731
    return reference._affine(y, weight, bias, view)


def _trailing_arguments(input, normalized_shape, weight=None, bias=None) -> tuple[int, ...]:
    """Check the input and the per-feature tensors of a norm over the trailing axes; return
    ``normalized_shape`` as a tuple."""
    V.check_tensor(input, "input")
    shape = V.normalized_shape_tuple(normalized_shape)
    V.check_trailing_shape(input, shape)
    V.check_param(weight, "weight", shape, input)
    V.check_param(bias, "bias", shape, input)
    return shape


def layer_norm(
    input: torch.Tensor,
    normalized_shape,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    residual: torch.Tensor | None = None,
    weight_offset: float = 0.0,
    casting_mode: str = "fp32",
    out_dtype: torch.dtype | None = None,
    residual_dtype: torch.dtype | None = None,
    memory_efficient: bool = False,
    gate: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
):
    """Layer normalization over the trailing ``normalized_shape`` axes of each example.

    The same computation at training and test time. Same signature and semantics as
    :func:`torch.nn.functional.layer_norm`, plus the options of the models people run
    (keyword-only, the same on every path):

    * ``residual``: normalize ``input + residual`` (added in float32, rounded once to
      ``residual_dtype``, by default the residual's: ``torch.float32`` keeps a float32 residual
      stream beside half-precision activations) and return ``(y, input + residual)``;
    * ``weight_offset``: the gain is ``weight_offset + weight`` (Gemma's ``1 + w``, Transformer
      Engine's ``zero_centered_gamma``);
    * ``casting_mode``: where the result is rounded to the input dtype, as each family's own
      module does: ``"fp32"`` once, after the gain (Gemma; normlib's default), ``"llama"`` the
      normalized input before the gain (Llama, Mistral, Qwen2), ``"none"`` also the statistics
      and every step (a module written without casts);
    * ``out_dtype``: the output's dtype (default: the input's for ``"fp32"``, else torch's
      promotion with the parameters, as the models return);
    * ``memory_efficient``: on the kernel path, the backward recovers the normalized input from
      the output (Apex's option): the input need not be kept; the gain must have no zeros;
    * ``scale``, ``shift``: adaLN's modulation, ``y * (1 + scale) + shift`` in float32 before the
      one rounding, per example (``(B, N)`` for an input ``(B, ..., N)``) or per token;
    * ``gate``: adaLN-Zero's gated residual, ``input + residual`` becomes
      ``residual + gate * input`` (per example or per token).

    One fused kernel on CUDA tensors does all of it: a DiT block's
    ``x = x + gate * attn(...); h = modulate(norm(x), shift, scale)`` is
    ``h, x = layer_norm(attn(...), (d,), residual=x, gate=gate, scale=scale, shift=shift)``.

    Derived in ``chapters/03_layer_norm.ipynb``; the options in ``chapters/20_kernels.ipynb``.
    """
    shape = (normalized_shape,) if type(normalized_shape) is int else normalized_shape
    if (residual is None and residual_dtype is None and not weight_offset and casting_mode == "fp32"
            and out_dtype is None and memory_efficient is False and scale is None and shift is None
            and gate is None and type(shape) in _SHAPES
            and _native_cpu(input, eps, (weight, bias), half_ok=False)):
        return _native(torch.layer_norm, _trailing_arguments, (input, normalized_shape, weight, bias), input, shape,
                       weight, bias, eps, False)
    V.check_eps(eps)
    shape = _trailing_arguments(input, normalized_shape, weight, bias)
    V.check_norm_options(input, weight, weight_offset, casting_mode, out_dtype, residual, residual_dtype,
                         memory_efficient)
    V.check_modulation(input, residual, gate, scale, shift, memory_efficient)
    return _rowwise_norm("layer_norm", input, shape, weight, bias, eps, residual, residual_dtype, memory_efficient,
                         (gate, scale, shift), weight_offset=weight_offset, casting_mode=casting_mode,
                         out_dtype=out_dtype)


def rms_norm(
    input: torch.Tensor,
    normalized_shape,
    weight: torch.Tensor | None = None,
    eps: float | None = None,
    *,
    residual: torch.Tensor | None = None,
    weight_offset: float = 0.0,
    casting_mode: str = "fp32",
    out_dtype: torch.dtype | None = None,
    residual_dtype: torch.dtype | None = None,
    memory_efficient: bool = False,
    gate: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
):
    """Root-mean-square normalization: ``x / sqrt(mean(x^2) + eps) * gamma``.

    LayerNorm without re-centering. ``eps`` sits inside the square root, as in
    :func:`torch.nn.functional.rms_norm`; ``eps=None`` means ``torch.finfo(input.dtype).eps``
    (PyTorch's default, and normlib's everywhere: modules, kernels and the book's backward).
    The keyword options are :func:`layer_norm`'s: with ``weight_offset=1.0`` it is Gemma's
    RMSNorm, with ``casting_mode="llama"`` Llama's, bit for bit.

    Derived in ``chapters/04_rms_norm.ipynb``; the options in ``chapters/20_kernels.ipynb``.
    """
    shape = (normalized_shape,) if type(normalized_shape) is int else normalized_shape
    # torch's CPU kernel applies the gain in float32 before rounding, as the reference does,
    # when input and weight share a dtype (with mixed dtypes it falls back to a slower composite)
    if (residual is None and residual_dtype is None and not weight_offset and casting_mode == "fp32"
            and out_dtype is None and memory_efficient is False and scale is None and shift is None
            and gate is None and type(shape) in _SHAPES
            and _native_cpu(input, 1.0 if eps is None else eps, (weight,))
            and (weight is None or weight.dtype is input.dtype)):
        return _native(torch.rms_norm, _trailing_arguments, (input, normalized_shape, weight), input, shape, weight,
                       eps)
    V.check_eps(eps, allow_none=True)
    shape = _trailing_arguments(input, normalized_shape, weight)
    V.check_norm_options(input, weight, weight_offset, casting_mode, out_dtype, residual, residual_dtype,
                         memory_efficient)
    V.check_modulation(input, residual, gate, scale, shift, memory_efficient)
    return _rowwise_norm("rms_norm", input, shape, weight, None, eps, residual, residual_dtype, memory_efficient,
                         (gate, scale, shift), weight_offset=weight_offset, casting_mode=casting_mode,
                         out_dtype=out_dtype)


def _rowwise_norm(name, input, shape, weight, bias, eps, residual, residual_dtype, memory_efficient, conditions,
                  **options):
    """LayerNorm or RMSNorm (``name``) over the trailing ``shape`` axes, checked: the kernels on
    CUDA tensors (the trailing axes flattened into one), else the reference; ``conditions`` is
    ``(gate, scale, shift)``; with a residual, ``(y, residual + [gate *] input)``."""
    params = (weight,) if name == "rms_norm" else (weight, bias)
    gate, scale, shift = conditions
    n = math.prod(shape)
    if _use_kernels(input) and input.numel():
        from normlib.kernels import rowwise
        rows = input.shape[: input.dim() - len(shape)]
        out = getattr(rowwise, name)(
            input.reshape(*rows, n), *(p.reshape(n) if p is not None else None for p in params), eps=eps,
            residual=residual.reshape(*rows, n) if residual is not None else None, residual_dtype=residual_dtype,
            memory_efficient=memory_efficient, gate=gate, scale=scale, shift=shift, **options)
        return (out[0].reshape(input.shape), out[1].reshape(input.shape)) if residual is not None else out.reshape(input.shape)
    norm = getattr(reference, name)
    out_dtype = V.norm_output_dtype(input, weight, bias, options["casting_mode"], options["out_dtype"],
                                    (residual_dtype or residual.dtype) if residual is not None else None)
    summed = reference.residual_add(input, residual, residual_dtype or residual.dtype, gate) if residual is not None else None
    normalized = summed if residual is not None else input
    if scale is None:
        y = norm(normalized, shape, *params, eps, **dict(options, out_dtype=out_dtype))
    else:   # the modulation in float32 (or wider), one rounding at the end (as the kernel does)
        flat = norm(normalized, shape, *params, eps, **dict(options, out_dtype=V.stats_dtype(out_dtype)))
        flat = flat.reshape(*input.shape[: input.dim() - len(shape)], n)
        y = reference.modulate(flat, shift, scale).to(out_dtype).reshape(input.shape)
    return (y, summed) if residual is not None else y


def qk_norm(
    input: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float | None = None,
    *,
    bias: torch.Tensor | None = None,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    rms: bool = True,
) -> torch.Tensor:
    """Per-head QK-norm (Henry et al. 2020; Dehghani et al. 2023): RMSNorm (``rms=False``:
    LayerNorm, with ``bias``) over the head dimension of queries or keys ``(..., T, H, D)``,
    one gain of shape ``(D,)`` shared by the heads, optionally followed by the rotary embedding
    (``cos``/``sin`` of shape ``(T, D/2)``, GPT-NeoX's half rotation, as Llama's and Qwen's
    ``rotate_half``). Statistics, gain and rotation in float32 (or wider), one rounding.

    ``eps=None`` is the input dtype's machine epsilon for RMSNorm, 1e-5 for LayerNorm. On CUDA
    tensors one kernel does it all and reads ``input`` in place when its leading axes collapse
    into one token axis: ``qk_norm(qkv.view(B, T, 3, H, D)[:, :, 0], w)`` normalizes the
    queries of a fused projection without a copy. The output is contiguous.

    Derived in ``chapters/14_attention_norms.ipynb``; the kernel in ``chapters/20_kernels.ipynb``.
    """
    V.check_tensor(input, "input", min_dim=3 if cos is not None else 1)
    d = input.shape[-1]
    V.check_param(weight, "weight", (d,), input)
    V.check_param(bias, "bias", (d,), input)
    V.check_eps(eps, allow_none=True)
    if not isinstance(rms, bool):
        raise TypeError(f"rms: expected a bool, got {type(rms).__name__}")
    if rms and bias is not None:
        raise ValueError("bias: RMSNorm has no shift; pass rms=False for LayerNorm")
    if (cos is None) != (sin is None):
        raise ValueError("cos, sin: expected both (the rotary embedding) or neither")
    if cos is not None:
        if d % 2:
            raise ValueError(f"input: the rotary embedding rotates pairs, so the head dimension must be even, got {d}")
        for name, t in (("cos", cos), ("sin", sin)):
            V.check_param(t, name, (input.shape[-3], d // 2), input)
    if _use_kernels(input) and input.numel() and d % 2 == 0:
        from normlib.kernels import qk_norm as kernel
        if d <= kernel.MAX_D:
            return kernel.qk_norm(input, weight, eps, bias, cos, sin, rms)
    if input.dtype in (torch.float32, torch.float64) and _native_cpu(input, 1e-5 if eps is None else float(eps),
                                                                      (weight, bias)):
        # float32 or wider on a CPU: torch's native norm computes what the reference's does, and the
        # rotation then runs in the input dtype, as the reference's (one rounding either way)
        norm = (torch.rms_norm(input, (d,), weight, eps) if rms
                else torch.layer_norm(input, (d,), weight, bias, 1e-5 if eps is None else eps))
        return reference.rotate_halves(norm, cos, sin) if cos is not None else norm
    return reference.qk_norm(input, weight, eps, bias, cos, sin, rms)


def partial_rms_norm(
    input: torch.Tensor,
    normalized_shape,
    fraction: float,
    weight: torch.Tensor | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    """pRMSNorm (Zhang & Sennrich 2019): RMSNorm whose root mean square is estimated from
    the first ``ceil(fraction * n)`` of the ``n`` normalized features (flattened in row-major
    order), ``0 < fraction <= 1``; ``fraction = 1`` is :func:`rms_norm`. All features are then
    divided by that estimate.

    Derived in ``chapters/04_rms_norm.ipynb``.
    """
    shape = _trailing_arguments(input, normalized_shape, weight)
    V.check_eps(eps, allow_none=True)
    V.check_number(fraction, "fraction", 0, 1, open_low=True)
    return reference.partial_rms_norm(input, shape, fraction, weight, eps)


def group_norm(
    input: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    silu: bool = False,
) -> torch.Tensor:
    """Group normalization: per example, statistics over a group of channels and all
    spatial positions. ``num_groups=1`` is LayerNorm over ``(C, *)``; ``num_groups=C`` is
    InstanceNorm. Same signature and semantics as :func:`torch.nn.functional.group_norm`.

    Keyword-only, what a diffusion UNet's residual block does next (Dhariwal & Nichol's
    scale-shift norm): ``scale``, ``shift`` of shape ``(N, C)`` (from the time embedding) give
    ``y * (1 + scale) + shift``, and ``silu=True`` applies SiLU after that; computed in float32
    (or wider), rounded once, and fused into one kernel on CUDA tensors.

    Derived in ``chapters/05_group_norm.ipynb``; the fused kernel in ``chapters/20_kernels.ipynb``.
    """
    if (scale is None and shift is None and silu is False and type(num_groups) is int and num_groups > 0
            and _native_cpu(input, eps, (weight, bias))):
        return _native(torch.group_norm, _check_group_norm, (input, num_groups, weight, bias), input, num_groups,
                       weight, bias, eps, False)
    V.check_eps(eps)
    _check_group_norm(input, num_groups, weight, bias)
    if (scale is None) != (shift is None):
        raise ValueError("scale, shift: expected both or neither")
    if scale is not None:
        for name, t in (("scale", scale), ("shift", shift)):
            V.check_param(t, name, tuple(input.shape[:2]), input)
    if not isinstance(silu, bool):
        raise TypeError(f"silu: expected a bool, got {type(silu).__name__}")
    if _use_kernels(input) and input.numel():
        from normlib.kernels import group_norm as kernel
        return kernel.group_norm(input, num_groups, weight, bias, eps, scale, shift, silu)
    return reference.group_norm(input, num_groups, weight, bias, eps, scale=scale, shift=shift, silu=silu)


def _check_group_norm(input, num_groups, weight, bias) -> None:
    V.check_positive_int(num_groups, "num_groups")
    V.check_tensor(input, "input", min_dim=2)
    channels = input.shape[1]
    if channels % num_groups != 0:
        raise ValueError(f"num_groups: expected a divisor of the number of channels {channels}, got {num_groups}")
    V.check_per_channel(input, weight=weight, bias=bias)


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
    params = (running_mean, running_var, weight, bias)
    native = (_native_cpu(input, eps, params, half_ok=False) and _momentum_ok(momentum) and input.dim() >= 3
              and (use_input_stats or running_mean is not None and running_var is not None))
    if not native:
        V.check_eps(eps)
        V.check_momentum(momentum)
        if not use_input_stats and (running_mean is None or running_var is None):
            raise ValueError("running_mean, running_var: expected tensors when use_input_stats=False, got None")
        _check_per_channel_norm(input, 3, *params)
    if use_input_stats:
        V.check_values_per_channel(input, math.prod(input.shape[2:]), "spatial element per channel", "")
    if native:
        return _native(torch.instance_norm, _check_per_channel_norm, (input, 3, *params), input, weight, bias,
                       running_mean, running_var, use_input_stats, momentum, eps, False)
    if use_input_stats and _use_kernels(input) and input.numel() and running_mean is None and running_var is None:
        from normlib.kernels import group_norm as kernel
        return kernel.group_norm(input, input.shape[1], weight, bias, eps)   # one channel per group
    return reference.instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)


def local_response_norm(
    input: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> torch.Tensor:
    """Local response normalization across channels (AlexNet):
    ``x_c / (k + alpha / size * sum_{c' near c} x_{c'}^2) ** beta``, the window of ``size``
    channels centred on ``c`` and zero-padded at the edges. Same signature and semantics as
    :func:`torch.nn.functional.local_response_norm`.

    Derived in ``chapters/17_local_norms.ipynb``.
    """
    V.check_tensor(input, "input", min_dim=3)
    V.check_positive_int(size, "size")
    V.check_number(k, "k", 0)
    return reference.local_response_norm(input, size, alpha, beta, k)


def local_contrast_norm(input: torch.Tensor, kernel_size: int = 9, sigma: float = 2.0,
                        eps: float = 1e-4) -> torch.Tensor:
    """Local contrast normalization (Jarrett et al. 2009) of ``(N, C, H, W)`` images or feature
    maps: subtract the local mean (a Gaussian window of standard deviation ``sigma`` pixels over
    ``kernel_size`` x ``kernel_size`` positions and all channels), then divide by the local
    standard deviation over the same window, or by its mean over the image where that is
    larger (flat regions are not amplified), and at least by ``eps``. The window is
    renormalized at the borders, so the output is unchanged by ``x -> a x + b`` for ``a > 0``.
    Statistics in float32 for half-precision inputs.

    Derived in ``chapters/17_local_norms.ipynb``.
    """
    V.check_tensor(input, "input", min_dim=4, max_dim=4)
    V.check_odd_positive_int(kernel_size, "kernel_size")
    V.check_number(sigma, "sigma", low=0.0, open_low=True)
    V.check_eps(eps)
    return reference.local_contrast_norm(input, kernel_size, sigma, eps)


def global_response_norm(input: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                         eps: float = 1e-6, channels_last: bool = True) -> torch.Tensor:
    """Global response normalization (ConvNeXt V2, Woo et al. 2023):
    ``weight * (x * n) + bias + x`` with each channel's energy ``g_c = ||x_c||_2`` over the
    positions of its example and ``n_c = g_c / (mean_c' g_c' + eps)``, its share relative to
    the average channel. ``input`` is ``(N, *positions, C)`` (``channels_last``, the layout of
    the authors' ``GRN`` and timm's default) or ``(N, C, *positions)``; ``weight`` and
    ``bias`` hold one value per channel in any shape with ``C`` elements (``(C,)``, or the
    ``(1, 1, 1, C)`` and ``(1, C, 1, 1)`` of timm's ``GlobalResponseNorm`` and the authors'
    code), ``None`` meaning 1 and 0. The statistics are per example (the authors' sparse GRN
    for pre-training pools the visible positions of the whole batch instead). Statistics in
    float32 for half-precision inputs.

    Derived in ``chapters/18_global_response_norm.ipynb``.
    """
    V.check_tensor(input, "input", min_dim=3)
    V.check_eps(eps)
    if not isinstance(channels_last, bool):
        raise TypeError(f"channels_last: expected a bool, got {type(channels_last).__name__}")
    channels = input.shape[-1] if channels_last else input.shape[1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        V.check_tensor(p, name, min_dim=0)
        V.check_same_device(p, name, input)
        if p.numel() != channels:
            raise ValueError(f"{name}: expected one value per channel ({channels}), got shape {tuple(p.shape)}")
    return reference.global_response_norm(input, weight, bias, eps, channels_last)


def modulate(input: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """Conditional modulation, ``input * (1 + scale) + shift``: DiT's ``modulate`` (adaLN), FiLM
    (``scale = gamma - 1``) and SPADE's output, with ``shift`` and ``scale`` predicted from a
    condition. Each is ``(N, C)``, one value per example and channel, broadcast over the
    positions of an ``(N, *positions, C)`` input (``channels_last``) or an ``(N, C, *positions)``
    one; or the input's own shape (per token or per pixel, as SPADE's maps). Computed in float32
    (float64 for float64 inputs) whatever the dtypes of ``shift`` and ``scale``, and returned
    in the input's dtype.

    Derived in ``chapters/19_conditional_norms.ipynb``.
    """
    V.check_tensor(input, "input", min_dim=2)
    if not isinstance(channels_last, bool):
        raise TypeError(f"channels_last: expected a bool, got {type(channels_last).__name__}")
    channels = input.shape[-1] if channels_last else input.shape[1]
    for name, p in (("shift", shift), ("scale", scale)):
        V.check_tensor(p, name, min_dim=2)
        V.check_same_device(p, name, input)
        if tuple(p.shape) not in ((input.shape[0], channels), tuple(input.shape)):
            raise ValueError(f"{name}: expected shape ({input.shape[0]}, {channels}) or {tuple(input.shape)}, "
                             f"got {tuple(p.shape)}")
    return reference.modulate(input, shift, scale, channels_last)


def spade(input: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, running_mean: torch.Tensor | None = None,
          running_var: torch.Tensor | None = None, training: bool = True, momentum: float = 0.1,
          eps: float = 1e-5) -> torch.Tensor:
    """Spatially-adaptive normalization (SPADE, Park et al. 2019): batch normalization of an
    ``(N, C, H, W)`` input without affine parameters (:func:`batch_norm`'s statistics and
    running averages), then ``* (1 + gamma) + beta`` with ``gamma`` and ``beta`` maps of the
    input's shape (predicted from a segmentation map) or ``(N, C)``.

    Derived in ``chapters/19_conditional_norms.ipynb``.
    """
    V.check_tensor(input, "input", min_dim=4, max_dim=4)
    normalized = batch_norm(input, running_mean, running_var, None, None, training, momentum, eps)
    return modulate(normalized, beta, gamma, channels_last=False)


def adain(content: torch.Tensor, style: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
          eps: float = 1e-5) -> torch.Tensor:
    """Adaptive instance normalization (Huang & Belongie 2017).

    ``AdaIN(x, y) = sigma(y) * (x - mu(x)) / sigma(x) + mu(y)`` with per-instance,
    per-channel statistics over the spatial axes, ``sigma = sqrt(var + eps)`` from the
    biased variance. ``content`` is ``(N, C, *)``; ``style`` is ``(N, C, *')`` or
    ``(1, C, *')`` (one style for the whole batch); the spatial sizes may differ.
    ``style`` may also be its statistics, a pair ``(mu(y), sigma(y))`` of ``(N, C)`` or
    ``(1, C)`` tensors (computed once for many images, or predicted from a style code).

    Derived in ``chapters/07_adain.ipynb``.
    """
    V.check_tensor(content, "content", min_dim=3)
    V.check_eps(eps)
    V.check_values_per_channel(content, math.prod(content.shape[2:]), "spatial element per channel", "")
    if isinstance(style, tuple):
        if len(style) != 2:
            raise ValueError(f"style: expected a feature map or a (mean, std) pair, got a tuple of {len(style)}")
        for name, t in zip(("style[0] (mean)", "style[1] (std)"), style):
            V.check_tensor(t, name)
            V.check_same_device(t, name, content, "the content")
            if t.dim() != 2 or t.shape[1] != content.shape[1] or t.shape[0] not in (1, content.shape[0]):
                raise ValueError(f"{name}: expected shape (1, {content.shape[1]}) or "
                                 f"({content.shape[0]}, {content.shape[1]}), got {tuple(t.shape)}")
        return reference.adain(content, style, eps)
    V.check_tensor(style, "style", min_dim=3)
    V.check_same_device(style, "style", content, "the content")
    if style.dim() != content.dim() or style.shape[1] != content.shape[1]:
        raise ValueError(
            f"style: expected {content.dim()} dimensions and {content.shape[1]} channels like the content, "
            f"got shape {tuple(style.shape)}"
        )
    if style.shape[0] not in (1, content.shape[0]):
        raise ValueError(f"style: expected batch size 1 or {content.shape[0]}, got {style.shape[0]}")
    V.check_values_per_channel(style, math.prod(style.shape[2:]), "spatial element per channel", "")
    return reference.adain(content, style, eps)


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """Scale vectors along ``dim`` to unit Euclidean norm: ``x / max(||x||, eps)``.

    The norm is computed in float32 for half-precision inputs. nGPT keeps every embedding,
    hidden state and weight row on the unit sphere with this function.

    Derived in ``chapters/16_ngpt.ipynb``.
    """
    V.check_tensor(x, "x")
    V.check_eps(eps)
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim: expected an int in [{-x.dim()}, {x.dim() - 1}], got {dim!r}")
    return reference.l2_normalize(x, dim, eps)


def scale_norm(input: torch.Tensor, scale: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """ScaleNorm (Nguyen & Salazar 2019), ``scale * input / max(||input||, eps)`` over the last
    axis: every vector is projected onto the sphere of radius ``scale``, one learned scalar.

    ``scale`` is a one-element tensor; ``eps`` bounds the norm from below (a clamp, as in the
    authors' code, not a term added under a square root). Computed in float32 for
    half-precision inputs. ``scale_norm(x, g) == rms_norm(x, weight=g / sqrt(d))`` up to where
    ``eps`` enters.

    Derived in ``chapters/14_attention_norms.ipynb``.
    """
    V.check_tensor(input, "input")
    V.check_scalar_param(scale, "scale", input)
    V.check_eps(eps)
    return reference.scale_norm(input, scale, eps)


def dyt(
    input: torch.Tensor,
    alpha: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    channels_last: bool = True,
) -> torch.Tensor:
    """Dynamic Tanh (Zhu et al. 2025), ``weight * tanh(alpha * input) + bias``: the drop-in
    replacement for LayerNorm in transformers without normalization.

    ``alpha`` is a one-element tensor (a learned scalar); ``weight`` and ``bias`` are per-feature
    tensors over the last axis (``channels_last=True``, tokens ``(N, T, C)``) or over axis 1
    (``channels_last=False``, images ``(N, C, H, W)``), as in the authors' ``DynamicTanh``.
    Computed in float32 for half-precision inputs.

    Derived in ``chapters/15_dyt.ipynb``.
    """
    V.check_tensor(input, "input", min_dim=1 if channels_last else 2)
    V.check_scalar_param(alpha, "alpha", input)
    if not isinstance(channels_last, bool):
        raise TypeError(f"channels_last: expected a bool, got {type(channels_last).__name__}")
    features = (input.shape[-1] if channels_last else input.shape[1],)
    V.check_param(weight, "weight", features, input)
    V.check_param(bias, "bias", features, input)
    if _use_kernels(input) and input.numel():
        from normlib.kernels import dyt as kernel
        return kernel.dyt(input, alpha, weight, bias, channels_last)
    return reference.dyt(input, alpha, weight, bias, channels_last)


def weight_standardization(weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Weight standardization (Qiao et al. 2019): each output channel's weights standardized
    over its fan-in, ``(W[o] - mean(W[o])) / sqrt(var(W[o]) + eps)`` with the biased variance
    (the numerics of timm's ``StdConv2d``; the authors' code divides by the unbiased standard
    deviation plus 1e-5). ``weight`` has the output channels in dim 0 and at least two
    dimensions (a ``Linear`` or ``Conv`` weight); the statistics are float32 for half-precision
    weights, and an ``eps`` below the statistics dtype's smallest normal number (1.2e-38 for
    float32) rounds to 0 there.

    Derived in ``chapters/10_weight_standardization.ipynb``.
    """
    _check_filters(weight, eps)
    return reference.weight_standardization(weight, eps)


def _check_filters(weight: torch.Tensor, eps) -> None:
    """A weight with output channels in dim 0 and a fan-in of at least 2, and a valid eps."""
    V.check_tensor(weight, "weight", min_dim=2)
    V.check_eps(eps)
    if weight.shape[0] and weight[0].numel() < 2:  # one value standardizes to 0 whatever it is
        raise ValueError(f"weight: expected a fan-in of at least 2 values per output channel, got shape "
                         f"{tuple(weight.shape)}")


def scaled_weight_standardization(weight: torch.Tensor, gain: torch.Tensor | None = None, gamma: float = 1.0,
                                  eps: float = 1e-6) -> torch.Tensor:
    """Scaled weight standardization (Brock et al. 2021, NF-ResNets): each output channel's
    weights standardized over the fan-in as in :func:`weight_standardization`, then multiplied
    by ``gain[o] * gamma / sqrt(fan_in)`` (timm's ``ScaledStdConv2d``). On inputs of zero mean,
    unit variance and no correlation, each output then has variance ``(gain[o] * gamma)^2``;
    ``gamma`` is the activation's correction (``sqrt(2 / (1 - 1/pi))`` = 1.7129 after a ReLU).
    ``gain`` has one value per output channel in any shape (``(C_out,)`` or timm's
    ``(C_out, 1, 1, 1)``), or is ``None``. Statistics in float32 for half-precision weights.

    Derived in ``chapters/11_normalizer_free.ipynb``.
    """
    _check_filters(weight, eps)
    V.check_number(gamma, "gamma", low=0.0, open_low=True)
    if gain is not None:
        V.check_tensor(gain, "gain", min_dim=0)
        V.check_same_device(gain, "gain", weight, "weight")
        if gain.numel() != weight.shape[0]:
            raise ValueError(f"gain: expected one value per output channel ({weight.shape[0]}), got shape "
                             f"{tuple(gain.shape)}")
    return reference.scaled_weight_standardization(weight, gain, gamma, eps)
