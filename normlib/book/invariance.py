"""Which transformations of the weights or the data leave a normalized layer's output
unchanged: Ba, Kiros & Hinton's invariance table, computed instead of typed.

A layer computes the summed inputs ``a = W x`` of ``H`` hidden units for a batch of examples
and normalizes them (``METHODS``); each entry of ``TRANSFORMS`` changes ``W`` or ``x`` in one
way. :func:`invariance_table` reports, for every pair, whether the normalized output stays
the same (to float64 precision).

Derived in ``chapters/03_layer_norm.ipynb``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from normlib import functional as NF

__all__ = ["METHODS", "TRANSFORMS", "PAPER_TABLE", "is_invariant", "invariance_table"]

_EPS = 1e-30  # the invariances are exact as eps -> 0; a tiny eps keeps that visible in float64


def _weight_norm(W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # weight normalization: each hidden unit's weight vector divided by its length
    return x @ (W / W.norm(dim=1, keepdim=True)).T


METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "BatchNorm": lambda W, x: NF.batch_norm(x @ W.T, None, None, training=True, eps=_EPS),
    "WeightNorm": _weight_norm,
    "LayerNorm": lambda W, x: NF.layer_norm(x @ W.T, (W.shape[0],), eps=_EPS),
    "RMSNorm": lambda W, x: NF.rms_norm(x @ W.T, (W.shape[0],), eps=_EPS),
    "GroupNorm (G=2)": lambda W, x: NF.group_norm((x @ W.T).unsqueeze(-1), 2, eps=_EPS).squeeze(-1),
}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rescale_one_row(W, x, g):
    W = W.clone()
    W[0] *= 3.7
    return W, x


def _rescale_one_case(W, x, g):
    x = x.clone()
    x[0] *= 3.7
    return W, x


TRANSFORMS: dict[str, Callable] = {
    "weight matrix re-scaling": lambda W, x, g: (3.7 * W, x),
    "weight matrix re-centering": lambda W, x, g: (W + torch.randn(1, W.shape[1], generator=g, dtype=W.dtype), x),
    "weight vector re-scaling": _rescale_one_row,
    "dataset re-scaling": lambda W, x, g: (W, 3.7 * x),
    "dataset re-centering": lambda W, x, g: (W, x + torch.randn(1, x.shape[1], generator=g, dtype=x.dtype)),
    "single training case re-scaling": _rescale_one_case,
}

# Ba, Kiros & Hinton 2016, table 1 (True: invariant)
PAPER_TABLE = {
    "BatchNorm": [True, False, True, True, True, False],
    "WeightNorm": [True, False, True, False, False, False],
    "LayerNorm": [True, True, False, True, False, True],
}


def is_invariant(method: str, transform: str, seed: int = 0, batch: int = 16, hidden: int = 8,
                 inputs: int = 5) -> bool:
    """Whether ``METHODS[method]`` gives the same output after ``TRANSFORMS[transform]``.
    Derived in ``chapters/03_layer_norm.ipynb``."""
    g = _generator(seed)
    W = torch.randn(hidden, inputs, generator=g, dtype=torch.float64)
    x = torch.randn(batch, inputs, generator=g, dtype=torch.float64)
    W2, x2 = TRANSFORMS[transform](W, x, g)
    before, after = METHODS[method](W, x), METHODS[method](W2, x2)
    return bool(torch.allclose(before, after, rtol=1e-9, atol=1e-9))


def invariance_table(seed: int = 0) -> dict[str, list[bool]]:
    """``{method: [invariant under each transform, in TRANSFORMS order]}``.
    Derived in ``chapters/03_layer_norm.ipynb``."""
    return {m: [is_invariant(m, t, seed) for t in TRANSFORMS] for m in METHODS}
