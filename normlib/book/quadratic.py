"""Gradient descent on a least-squares loss: the quadratic model of LeCun et al.'s
"Efficient BackProp" argument for feature scaling.

For ``L(w) = ||X w - y||^2 / (2 n)`` the Hessian is ``H = X^T X / n``. Gradient descent with
learning rate ``lr`` multiplies the error along each eigenvector of ``H`` by
``1 - lr * lambda``: it converges if and only if ``lr < 2 / lambda_max``, and at the best
rate the number of steps grows with the condition number ``lambda_max / lambda_min``.

Derived in ``chapters/01_feature_scaling.ipynb``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["hessian", "gradient_descent", "steps_to_reach", "divergence_threshold"]


def _design(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X: expected a non-empty 2-D array (n_samples, n_features), got shape {X.shape}")
    return X


def hessian(X) -> np.ndarray:
    """``X^T X / n``, the Hessian of the least-squares loss. Derived in ``chapters/01_feature_scaling.ipynb``."""
    X = _design(X)
    return X.T @ X / len(X)


def gradient_descent(X, y, lr: float, steps: int, w0=None, return_weights: bool = False):
    """Run full-batch gradient descent on ``||X w - y||^2 / (2 n)`` from ``w0`` (zeros by
    default) and return the ``steps + 1`` losses; a run that overflows stops with ``inf``.
    With ``return_weights=True``, also the ``(steps + 1, n_features)`` weights along the path
    (``nan`` after a run overflows). Derived in ``chapters/01_feature_scaling.ipynb``."""
    X = _design(X)
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (len(X),):
        raise ValueError(f"y: expected shape ({len(X)},), got {y.shape}")
    if not lr > 0:
        raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
    w = np.zeros(X.shape[1]) if w0 is None else np.array(w0, dtype=np.float64)
    if w.shape != (X.shape[1],):
        raise ValueError(f"w0: expected shape ({X.shape[1]},), got {w.shape}")
    losses = np.full(steps + 1, np.inf)
    weights = np.full((steps + 1, X.shape[1]), np.nan)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(steps + 1):
            residual = X @ w - y
            losses[t] = residual @ residual / (2 * len(X))
            if not np.isfinite(losses[t]) or losses[t] > 1e100:
                losses[t:] = np.inf
                break
            weights[t] = w
            w = w - lr * (X.T @ residual) / len(X)
    return (losses, weights) if return_weights else losses


def steps_to_reach(losses, target: float) -> int | None:
    """The first step whose loss is at most ``target``, or ``None`` if none is.
    Derived in ``chapters/01_feature_scaling.ipynb``."""
    below = np.flatnonzero(np.asarray(losses) <= target)
    return int(below[0]) if len(below) else None


def divergence_threshold(X, y, steps: int = 300, lo: float = 1e-8, hi: float = 1e4, iters: int = 60) -> float:
    """The smallest learning rate at which gradient descent diverges, found by bisection on a
    log scale: a run diverges when its final loss exceeds its initial loss.
    Derived in ``chapters/01_feature_scaling.ipynb``."""
    def diverges(lr):
        losses = gradient_descent(X, y, lr, steps)
        return not losses[-1] <= losses[0]

    if diverges(lo) or not diverges(hi):
        raise ValueError(f"lo, hi: expected convergence at lo={lo} and divergence at hi={hi}")
    for _ in range(iters):
        mid = np.sqrt(lo * hi)
        lo, hi = (lo, mid) if diverges(mid) else (mid, hi)
    return float(np.sqrt(lo * hi))
