"""Input validation shared by normlib's public functions.

Every check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong
shape or value) with a message that names the argument and says what was expected, so a
mistake is reported where it is made rather than deep inside a kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(x, name: str, *, min_dim: int = 1, max_dim: int | None = None) -> None:
    """A non-empty floating-point tensor with at least ``min_dim`` dimensions."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {x.dtype}"
        )
    if x.dim() < min_dim or (max_dim is not None and x.dim() > max_dim):
        want = f"at least {min_dim}" if max_dim is None else f"{min_dim} to {max_dim}"
        raise ValueError(f"{name}: expected {want} dimensions, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(x.shape)}")


def check_eps(eps, name: str = "eps", *, allow_none: bool = False) -> None:
    if eps is None and allow_none:
        return
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {eps!r}")


def check_momentum(momentum) -> None:
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
        raise ValueError(f"momentum: expected a number in [0, 1], got {momentum!r}")


def check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")


def check_param(p, name: str, shape: Sequence[int], like: torch.Tensor, *, floating: bool = True) -> None:
    """An optional per-feature tensor (weight, bias, running statistics) matching ``like``."""
    if p is None:
        return
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or None, got {type(p).__name__}")
    if floating and p.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {p.dtype}")
    if tuple(p.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} to match the input, got {tuple(p.shape)}")
    if p.device != like.device:
        raise ValueError(f"{name}: expected a tensor on {like.device} like the input, got one on {p.device}")


def normalized_shape_tuple(normalized_shape) -> tuple[int, ...]:
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


def check_trailing_shape(x: torch.Tensor, shape: tuple[int, ...]) -> None:
    if x.dim() < len(shape) or tuple(x.shape[-len(shape):]) != shape:
        raise ValueError(
            f"normalized_shape: expected the input to end with {shape}, got input of shape {tuple(x.shape)}"
        )
