"""One home for what every layer of normlib checks and shares: input validation, the dtype of
statistics, and the axes and broadcast views of an ``(N, C, *)`` tensor.

Every check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape
or value) with a message that names the argument and says what was expected, so a mistake is
reported where it is made rather than deep inside a kernel. Empty tensors pass wherever torch
accepts them: a batch of zero examples is valid input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_HALF = (torch.float16, torch.bfloat16)


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are float32 for float16/bfloat16/float32 inputs and float64 for float64 ones:
    never the half-precision input dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_tensor(x, name: str, *, min_dim: int = 1, max_dim: int | None = None,
                 nonempty: bool = False) -> None:
    """A floating-point tensor with ``min_dim`` to ``max_dim`` dimensions (non-empty if asked)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating-point tensor (float16, bfloat16, float32 or "
                        f"float64), got dtype {x.dtype}")
    if x.dim() < min_dim or (max_dim is not None and x.dim() > max_dim):
        want = f"at least {min_dim}" if max_dim is None else f"{min_dim} to {max_dim}"
        raise ValueError(f"{name}: expected {want} dimensions, got shape {tuple(x.shape)}")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(x.shape)}")


def check_number(value, name: str, low: float | None = None, high: float | None = None, *,
                 open_low: bool = False, open_high: bool = False) -> None:
    """A finite real number (not a bool) in the interval from ``low`` to ``high``; each end is
    closed unless ``open_low`` / ``open_high``; ``None`` leaves that side unbounded."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (low is None or (value > low if open_low else value >= low))
          and (high is None or (value < high if open_high else value <= high)))
    if not ok:
        left = "(-inf" if low is None else ("(" if open_low else "[") + f"{low:g}"
        right = "inf)" if high is None else f"{high:g}" + (")" if open_high else "]")
        raise ValueError(f"{name}: expected a number in {left}, {right}, got {value!r}")


def check_eps(eps, name: str = "eps", *, allow_none: bool = False) -> None:
    """A positive finite number (or ``None`` where the dtype's machine epsilon is the default)."""
    if eps is None and allow_none:
        return
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {eps!r}")


def check_momentum(momentum) -> None:
    check_number(momentum, "momentum", 0, 1)


def check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")


def check_odd_positive_int(value, name: str) -> None:
    """A window size with a centre: a positive odd integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f"{name}: expected a positive odd integer, got {value!r}")


def check_same_device(x: torch.Tensor, name: str, like: torch.Tensor, like_name: str = "the input") -> None:
    if x.device != like.device:
        raise ValueError(f"{name}: expected a tensor on {like.device} like {like_name}, got one on {x.device}")


def check_scalar_param(p, name: str, like: torch.Tensor) -> None:
    """A learned scalar: a floating-point tensor with one element, on the input's device."""
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor with one element, got {type(p).__name__}")
    if p.numel() != 1 or p.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}: expected a floating-point tensor with one element, got shape "
                         f"{tuple(p.shape)} and dtype {p.dtype}")
    check_same_device(p, name, like)


def check_param(p, name: str, shape: Sequence[int], like: torch.Tensor) -> None:
    """An optional per-feature tensor (weight, bias, running statistics) matching ``like``."""
    if p is None:
        return
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or None, got {type(p).__name__}")
    if p.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {p.dtype}")
    if p.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} to match the input, got {tuple(p.shape)}")
    check_same_device(p, name, like)


def check_per_channel(input: torch.Tensor, **params) -> None:
    """Each given per-channel tensor has shape ``(C,)`` and sits on the input's device."""
    for name, p in params.items():
        check_param(p, name, (input.shape[1],), input)


def check_channels(input: torch.Tensor, channels: int) -> None:
    """A module built for ``channels`` channels gets an input with that many in dim 1."""
    if input.dim() < 2 or input.shape[1] != channels:
        raise ValueError(f"input: expected {channels} channels in dim 1, got shape {tuple(input.shape)}")


def check_values_per_channel(input: torch.Tensor, count: int, what: str = "value per channel when training",
                             hint: str = " (use a batch of at least 2, or evaluation mode)") -> None:
    """Statistics from a single value are meaningless (the variance is 0): torch rejects a count
    of exactly one too. An empty batch (count 0) is allowed, as in torch."""
    if count == 1:
        raise ValueError(f"input: expected more than 1 {what}, got input of shape {tuple(input.shape)}{hint}")


def normalized_shape_tuple(normalized_shape) -> tuple[int, ...]:
    # the common cases first, cheaply: this runs on every call of a norm
    if type(normalized_shape) is int and normalized_shape > 0:
        return (normalized_shape,)
    if type(normalized_shape) in (tuple, torch.Size) and normalized_shape and all(
            type(s) is int and s > 0 for s in normalized_shape):
        return tuple(normalized_shape)
    if isinstance(normalized_shape, int) and not isinstance(normalized_shape, bool):
        shape = (normalized_shape,)
    elif isinstance(normalized_shape, (Sequence, torch.Size)) and all(
        isinstance(s, int) and not isinstance(s, bool) for s in normalized_shape
    ):
        shape = tuple(normalized_shape)
    else:
        raise TypeError(f"normalized_shape: expected an int or a sequence of ints, got {normalized_shape!r}")
    if len(shape) == 0 or any(s <= 0 for s in shape):
        raise ValueError(f"normalized_shape: expected one or more positive sizes, got {shape}")
    return shape


def single_size(normalized_shape, what: str) -> int:
    """The one size of a layer that normalizes over one axis: an int, or LayerNorm's
    one-element tuple of it (so a LayerNorm's ``normalized_shape`` can be passed on)."""
    shape = normalized_shape_tuple(normalized_shape)
    if len(shape) != 1:
        raise ValueError(f"normalized_shape: expected the number of {what} (an int or a one-element "
                         f"tuple), got {normalized_shape!r}")
    return shape[0]


def check_trailing_shape(x: torch.Tensor, shape: tuple[int, ...]) -> None:
    if x.shape[-len(shape):] != shape or x.dim() < len(shape):
        raise ValueError(
            f"normalized_shape: expected the input to end with {shape}, got input of shape {tuple(x.shape)}"
        )


def batch_axes(ndim: int) -> tuple[int, ...]:
    """The axes BatchNorm reduces over in an ``(N, C, *)`` tensor: all but the channels."""
    return (0, *range(2, ndim))


def spatial_axes(ndim: int) -> tuple[int, ...]:
    """The axes InstanceNorm (and AdaIN) reduce over in an ``(N, C, *)`` tensor."""
    return tuple(range(2, ndim))


def per_channel(p: torch.Tensor, ndim: int) -> torch.Tensor:
    """A ``(C,)`` vector viewed to broadcast against an ``(N, C, *)`` tensor."""
    return p.view(1, -1, *([1] * (ndim - 2)))


# Where LayerNorm and RMSNorm round to the input dtype (the models' own modules, transcribed in
# tests/test_norm_options.py): "fp32" once, after the gain (Gemma, T5, torch); "llama" the
# normalized input before the gain (Llama, Mistral, Qwen2); "none" the statistics and every step.
CASTING_MODES = ("fp32", "llama", "none")


def check_norm_options(x: torch.Tensor, weight, weight_offset, casting_mode, out_dtype, residual=None,
                       residual_dtype=None, memory_efficient=False) -> None:
    """The options of the row-wise norms (LayerNorm, RMSNorm) beyond torch's arguments."""
    check_number(weight_offset, "weight_offset")
    if weight_offset and weight is None:
        raise ValueError(f"weight_offset: the gain is weight_offset + weight, so it needs a weight; got "
                         f"weight_offset={weight_offset!r} and weight=None")
    if casting_mode not in CASTING_MODES:
        raise ValueError(f"casting_mode: expected one of {', '.join(map(repr, CASTING_MODES))}, got {casting_mode!r}")
    for name, dtype in (("out_dtype", out_dtype), ("residual_dtype", residual_dtype)):
        if dtype is not None and dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: expected None or a floating-point dtype, got {dtype!r}")
    if residual is not None:
        check_tensor(residual, "residual")
        if residual.shape != x.shape:
            raise ValueError(f"residual: expected the input's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
        check_same_device(residual, "residual", x)
    elif residual_dtype is not None:
        raise ValueError("residual_dtype: is the dtype of x + residual, so it needs a residual; got residual=None")
    if not isinstance(memory_efficient, bool):
        raise TypeError(f"memory_efficient: expected a bool, got {type(memory_efficient).__name__}")
    if (memory_efficient and weight is not None and torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and bool(((weight.detach().float() + weight_offset) == 0).any())):
        raise ValueError("memory_efficient: the backward recovers x-hat as (y - bias) / (weight_offset + weight), "
                         "so the gain must have no zeros; it has some (use memory_efficient=False)")


def check_modulation(x: torch.Tensor, residual, gate, scale, shift, memory_efficient=False) -> None:
    """adaLN's ``scale``/``shift`` (both or neither) and adaLN-Zero's ``gate`` (with a residual):
    per example ``(B, N)`` for an input ``(B, ..., N)``, or per token (the input's shape)."""
    for name, t in (("gate", gate), ("scale", scale), ("shift", shift)):
        if t is None:
            continue
        check_tensor(t, name)
        if t.shape != x.shape and (x.dim() < 1 or t.shape != (x.shape[0], x.shape[-1])):
            raise ValueError(f"{name}: expected shape {(x.shape[0], x.shape[-1])} (per example) or "
                             f"{tuple(x.shape)} (per token), got {tuple(t.shape)}")
        check_same_device(t, name, x)
    if gate is not None and residual is None:
        raise ValueError("gate: multiplies the input before the residual add, so it needs a residual")
    if (scale is None) != (shift is None):
        raise ValueError("scale, shift: expected both or neither")
    if memory_efficient and scale is not None:
        raise ValueError("memory_efficient: the output cannot be inverted through a modulation (scale, shift)")


def norm_output_dtype(x: torch.Tensor, weight, bias, casting_mode: str, out_dtype, residual_dtype=None):
    """The output dtype of a row-wise norm: ``out_dtype`` if given; else the input's for
    ``casting_mode="fp32"``; for "llama" and "none", torch's promotion of the normalized input
    (``x + residual`` in ``residual_dtype`` when there is a residual) with the parameters, as
    the models' own modules return."""
    if out_dtype is not None:
        return out_dtype
    if casting_mode == "fp32":
        return x.dtype
    return promoted_dtype(residual_dtype or x.dtype, weight, bias)


def promoted_dtype(dtype: torch.dtype, *params) -> torch.dtype:
    """torch's type promotion of ``dtype`` with the dtypes of the tensors among ``params``."""
    for p in params:
        if p is not None:
            dtype = torch.promote_types(dtype, p.dtype)
    return dtype
