"""Feature scaling on numpy arrays, as scikit-learn estimators.

``fit`` learns per-feature statistics from training data (ignoring NaNs), ``transform``
applies them (NaNs pass through), ``inverse_transform`` undoes them. A feature whose scale
is zero (a constant column) gets scale 1, as in scikit-learn, so it maps to a constant
instead of a division by zero.

The scalers are written out here because the book derives them; they are full scikit-learn
estimators (``get_params``/``set_params``, ``clone``, ``Pipeline``, ``GridSearchCV``, feature
names), checked with scikit-learn's own ``estimator_checks``. This module needs the ``scaling``
extra (numpy and scikit-learn) and is imported on first use of ``normlib.scaling``.

Derived in ``chapters/01_feature_scaling.ipynb``.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["NotFittedError", "MinMaxScaler", "StandardScaler", "RobustScaler", "MaxAbsScaler"]

_FLOATS = (np.float64, np.float32)


def _nonzero_scale(scale: np.ndarray, constant: np.ndarray | None = None) -> np.ndarray:
    """Replace zero scales (and those of features flagged constant) by 1."""
    scale = np.array(scale, dtype=np.float64, copy=True)
    zero = scale == 0.0
    if constant is not None:
        zero |= constant
    scale[zero] = 1.0
    return scale


class _Scaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """``transform(X) = (X - center) / scale`` per feature; subclasses learn both in ``_fit``
    and say which they use in ``_center_and_scale``."""

    def fit(self, X, y=None):
        self._check_parameters()
        X = validate_data(self, X, dtype=_FLOATS, ensure_all_finite="allow-nan")
        self.n_samples_seen_ = int(X.shape[0])
        self._fit(X.astype(np.float64, copy=False))
        return self

    def _check_parameters(self) -> None:
        """Checked in ``fit``, not ``__init__``: scikit-learn's ``set_params`` and ``clone``
        set parameters without calling ``__init__``."""

    def _validated(self, X) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=_FLOATS, ensure_all_finite="allow-nan", copy=True)

    def _center_and_scale(self):
        raise NotImplementedError

    def transform(self, X):
        X = self._validated(X)
        center, scale = self._center_and_scale()
        return ((X - center) / scale).astype(X.dtype, copy=False)

    def inverse_transform(self, X):
        X = self._validated(X)
        center, scale = self._center_and_scale()
        return (X * scale + center).astype(X.dtype, copy=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # NaNs are missing values: ignored in fit, kept in transform
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


class MinMaxScaler(_Scaler):
    """Map each feature's training range ``[min, max]`` linearly onto ``feature_range``.

    ``X_scaled = (X - min) / (max - min) * (b - a) + a``; sensitive to outliers, since a single
    extreme value sets the range. ``clip=True`` clips transformed values to the range.

    Derived in ``chapters/01_feature_scaling.ipynb``.
    """

    def __init__(self, feature_range=(0, 1), clip: bool = False):
        self.feature_range, self.clip = feature_range, clip

    def _check_parameters(self) -> None:
        low, high = self.feature_range
        if not low < high:
            raise ValueError(f"feature_range: expected (min, max) with min < max, got {self.feature_range!r}")

    def _fit(self, X):
        self.data_min_ = np.nanmin(X, axis=0)
        self.data_max_ = np.nanmax(X, axis=0)
        self.data_range_ = self.data_max_ - self.data_min_
        low, high = self.feature_range
        self.scale_ = (high - low) / _nonzero_scale(self.data_range_)
        self.min_ = low - self.data_min_ * self.scale_

    def transform(self, X):
        X = self._validated(X)
        out = (X * self.scale_ + self.min_).astype(X.dtype, copy=False)
        if self.clip:
            np.clip(out, *self.feature_range, out=out)
        return out

    def inverse_transform(self, X):
        X = self._validated(X)
        return ((X - self.min_) / self.scale_).astype(X.dtype, copy=False)


class StandardScaler(_Scaler):
    """Standardize each feature to zero mean and unit variance: ``(X - mean) / std``
    (population standard deviation). Features whose variance is zero up to rounding error
    keep scale 1.

    Derived in ``chapters/01_feature_scaling.ipynb``.
    """

    def __init__(self, with_mean: bool = True, with_std: bool = True):
        self.with_mean, self.with_std = with_mean, with_std

    def _fit(self, X):
        self.mean_ = np.nanmean(X, axis=0, dtype=np.float64)
        var = np.nanvar(X, axis=0, dtype=np.float64)
        n = np.sum(~np.isnan(X), axis=0)
        # A variance this small is rounding error of a constant feature (the bound
        # scikit-learn uses), not a real spread: treat the feature as constant.
        eps = np.finfo(np.float64).eps
        constant = var <= n * eps * var + (n * self.mean_ * eps) ** 2
        self.var_ = var if self.with_std else None  # as scikit-learn: no variance kept when unused
        self.scale_ = _nonzero_scale(np.sqrt(var), constant) if self.with_std else None

    def _center_and_scale(self):
        return (self.mean_ if self.with_mean else 0.0), (self.scale_ if self.with_std else 1.0)


class RobustScaler(_Scaler):
    """Center on the median and divide by the inter-quantile range (default 25th to 75th
    percentile), statistics that a few outliers cannot move. ``unit_variance=True`` rescales
    so that normally distributed features end up with variance 1.

    Derived in ``chapters/01_feature_scaling.ipynb``.
    """

    def __init__(self, with_centering: bool = True, with_scaling: bool = True,
                 quantile_range=(25.0, 75.0), unit_variance: bool = False):
        self.with_centering, self.with_scaling = with_centering, with_scaling
        self.quantile_range, self.unit_variance = quantile_range, unit_variance

    def _check_parameters(self) -> None:
        q_min, q_max = self.quantile_range
        if not 0 <= q_min <= q_max <= 100:
            raise ValueError(f"quantile_range: expected 0 <= q_min <= q_max <= 100, got {self.quantile_range!r}")

    def _fit(self, X):
        self.center_ = np.nanmedian(X, axis=0) if self.with_centering else None
        self.scale_ = None
        if self.with_scaling:
            q_min, q_max = self.quantile_range
            low, high = np.nanpercentile(X, [q_min, q_max], axis=0)
            self.scale_ = _nonzero_scale(high - low)
            if self.unit_variance:
                normal = NormalDist()
                self.scale_ = self.scale_ / (normal.inv_cdf(q_max / 100) - normal.inv_cdf(q_min / 100))

    def _center_and_scale(self):
        return (self.center_ if self.with_centering else 0.0), (self.scale_ if self.with_scaling else 1.0)


class MaxAbsScaler(_Scaler):
    """Divide each feature by its largest absolute training value, mapping it into
    ``[-1, 1]`` without shifting it (so zeros, and sparsity, are kept).

    Derived in ``chapters/01_feature_scaling.ipynb``.
    """

    def _fit(self, X):
        self.max_abs_ = np.nanmax(np.abs(X), axis=0)
        self.scale_ = _nonzero_scale(self.max_abs_)

    def _center_and_scale(self):
        return 0.0, self.scale_
