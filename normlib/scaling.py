"""Feature scaling on numpy arrays with scikit-learn's transformer API.

``fit`` learns per-feature statistics from training data (ignoring NaNs), ``transform``
applies them (NaNs pass through), ``inverse_transform`` undoes them. A feature whose scale
is zero (a constant column) gets scale 1, as in scikit-learn, so it maps to a constant
instead of a division by zero.

Derived in ``chapters/01_feature_scaling.ipynb``.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

__all__ = ["NotFittedError", "MinMaxScaler", "StandardScaler", "RobustScaler", "MaxAbsScaler"]


class NotFittedError(ValueError, AttributeError):
    """A scaler was used before ``fit`` (a ValueError, like scikit-learn's)."""


def _as_2d_float(X, name: str = "X") -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array of shape (n_samples, n_features), got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a numeric array, got dtype {X.dtype}")
    if X.dtype.kind != "f":
        X = X.astype(np.float64)
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one sample and one feature, got shape {X.shape}")
    if np.isinf(X).any():
        raise ValueError(f"{name}: expected finite values (NaN allowed as missing), got infinity")
    return X


def _nonzero_scale(scale: np.ndarray, constant: np.ndarray | None = None) -> np.ndarray:
    """Replace zero scales (and those of features flagged constant) by 1."""
    scale = np.array(scale, dtype=np.float64, copy=True)
    zero = scale == 0.0
    if constant is not None:
        zero |= constant
    scale[zero] = 1.0
    return scale


class _Scaler:
    """``transform(X) = (X - offset_) / scale_``; subclasses set both in ``_fit``."""

    _fitted_attribute = "scale_"

    def fit(self, X, y=None):
        X = _as_2d_float(X)
        self.n_features_in_ = X.shape[1]
        self.n_samples_seen_ = int(X.shape[0])
        self._fit(X)
        return self

    def fit_transform(self, X, y=None):
        return self.fit(X).transform(X)

    def _checked(self, X) -> np.ndarray:
        if not hasattr(self, self._fitted_attribute):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet: call fit(X) first")
        X = _as_2d_float(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X: expected {self.n_features_in_} features as seen in fit, got {X.shape[1]}")
        return X

    def transform(self, X):
        X = self._checked(X)
        return ((X - self._offset) / self._divisor).astype(X.dtype, copy=False)

    def inverse_transform(self, X):
        X = self._checked(X)
        return (X * self._divisor + self._offset).astype(X.dtype, copy=False)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in self._param_names}


class MinMaxScaler(_Scaler):
    """Map each feature's training range ``[min, max]`` linearly onto ``feature_range``.

    ``X_scaled = (X - min) / (max - min) * (b - a) + a``; sensitive to outliers, since a single
    extreme value sets the range. ``clip=True`` clips transformed values to the range.

    Derived in ``chapters/01_feature_scaling.ipynb``.
    """

    _param_names = ("feature_range", "clip")

    def __init__(self, feature_range=(0, 1), clip: bool = False):
        low, high = feature_range
        if not low < high:
            raise ValueError(f"feature_range: expected (min, max) with min < max, got {feature_range!r}")
        self.feature_range, self.clip = feature_range, clip

    def _fit(self, X):
        self.data_min_ = np.nanmin(X, axis=0)
        self.data_max_ = np.nanmax(X, axis=0)
        self.data_range_ = self.data_max_ - self.data_min_
        low, high = self.feature_range
        self.scale_ = (high - low) / _nonzero_scale(self.data_range_)
        self.min_ = low - self.data_min_ * self.scale_
        # transform = X * scale_ + min_, written as (X - offset) / divisor
        self._divisor = 1.0 / self.scale_
        self._offset = -self.min_ / self.scale_

    def transform(self, X):
        X = self._checked(X)
        out = (X * self.scale_ + self.min_).astype(X.dtype, copy=False)
        if self.clip:
            np.clip(out, *self.feature_range, out=out)
        return out

    def inverse_transform(self, X):
        X = self._checked(X)
        return ((X - self.min_) / self.scale_).astype(X.dtype, copy=False)


class StandardScaler(_Scaler):
    """Standardize each feature to zero mean and unit variance: ``(X - mean) / std``
    (population standard deviation). Features whose variance is zero up to rounding error
    keep scale 1.

    Derived in ``chapters/01_feature_scaling.ipynb``.
    """

    _param_names = ("with_mean", "with_std")
    _fitted_attribute = "mean_"

    def __init__(self, with_mean: bool = True, with_std: bool = True):
        self.with_mean, self.with_std = with_mean, with_std

    def _fit(self, X):
        self.mean_ = np.nanmean(X, axis=0, dtype=np.float64)
        self.var_ = np.nanvar(X, axis=0, dtype=np.float64)
        n = np.sum(~np.isnan(X), axis=0)
        # A variance this small is rounding error of a constant feature (the bound
        # scikit-learn uses), not a real spread: treat the feature as constant.
        eps = np.finfo(np.float64).eps
        constant = self.var_ <= n * eps * self.var_ + (n * self.mean_ * eps) ** 2
        self.scale_ = _nonzero_scale(np.sqrt(self.var_), constant) if self.with_std else None
        if not self.with_std:
            self.var_ = None  # as scikit-learn: no variance is kept when it is not used
        self._offset = self.mean_ if self.with_mean else 0.0
        self._divisor = self.scale_ if self.with_std else 1.0


class RobustScaler(_Scaler):
    """Center on the median and divide by the inter-quantile range (default 25th to 75th
    percentile), statistics that a few outliers cannot move. ``unit_variance=True`` rescales
    so that normally distributed features end up with variance 1.

    Derived in ``chapters/01_feature_scaling.ipynb``.
    """

    _param_names = ("with_centering", "with_scaling", "quantile_range", "unit_variance")
    _fitted_attribute = "center_"

    def __init__(self, with_centering: bool = True, with_scaling: bool = True,
                 quantile_range=(25.0, 75.0), unit_variance: bool = False):
        q_min, q_max = quantile_range
        if not 0 <= q_min <= q_max <= 100:
            raise ValueError(f"quantile_range: expected 0 <= q_min <= q_max <= 100, got {quantile_range!r}")
        self.with_centering, self.with_scaling = with_centering, with_scaling
        self.quantile_range, self.unit_variance = quantile_range, unit_variance

    def _fit(self, X):
        self.center_ = np.nanmedian(X, axis=0) if self.with_centering else None
        if self.with_scaling:
            q_min, q_max = self.quantile_range
            low, high = np.nanpercentile(X, [q_min, q_max], axis=0)
            self.scale_ = _nonzero_scale(high - low)
            if self.unit_variance:
                normal = NormalDist()
                self.scale_ = self.scale_ / (normal.inv_cdf(q_max / 100) - normal.inv_cdf(q_min / 100))
        else:
            self.scale_ = None
        self._offset = self.center_ if self.with_centering else 0.0
        self._divisor = self.scale_ if self.with_scaling else 1.0


class MaxAbsScaler(_Scaler):
    """Divide each feature by its largest absolute training value, mapping it into
    ``[-1, 1]`` without shifting it (so zeros, and sparsity, are kept).

    Derived in ``chapters/01_feature_scaling.ipynb``.
    """

    _param_names = ()

    def _fit(self, X):
        self.max_abs_ = np.nanmax(np.abs(X), axis=0)
        self.scale_ = _nonzero_scale(self.max_abs_)
        self._offset, self._divisor = 0.0, self.scale_
