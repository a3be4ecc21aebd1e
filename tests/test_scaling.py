"""normlib.scaling against scikit-learn."""

import numpy as np
import pytest
from sklearn import preprocessing as skl
from sklearn.utils.estimator_checks import parametrize_with_checks

from normlib import scaling

PAIRS = [
    (scaling.MinMaxScaler, skl.MinMaxScaler, {}),
    (scaling.MinMaxScaler, skl.MinMaxScaler, {"feature_range": (-2, 3)}),
    (scaling.MinMaxScaler, skl.MinMaxScaler, {"clip": True}),
    (scaling.StandardScaler, skl.StandardScaler, {}),
    (scaling.StandardScaler, skl.StandardScaler, {"with_mean": False}),
    (scaling.StandardScaler, skl.StandardScaler, {"with_std": False}),
    (scaling.RobustScaler, skl.RobustScaler, {}),
    (scaling.RobustScaler, skl.RobustScaler, {"quantile_range": (10.0, 90.0), "unit_variance": True}),
    (scaling.RobustScaler, skl.RobustScaler, {"with_centering": False}),
    (scaling.MaxAbsScaler, skl.MaxAbsScaler, {}),
]
ATTRIBUTES = ["scale_", "mean_", "var_", "center_", "max_abs_", "data_min_", "data_max_", "min_", "n_features_in_"]


def awkward_data(seed, dtype=np.float64):
    """Features with very different ranges, an outlier, a constant column, NaNs."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([
        rng.normal(0, 1, 50), rng.normal(1e4, 300, 50), rng.exponential(2, 50),
        np.full(50, 3.3), rng.integers(-5, 5, 50).astype(float),
    ]).astype(dtype)
    X[3, 2] = 1e3  # outlier
    X[rng.integers(0, 50, 6), rng.integers(0, 5, 6)] = np.nan
    return X


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ours_cls,theirs_cls,kwargs", PAIRS)
def test_matches_scikit_learn(ours_cls, theirs_cls, kwargs, seed):
    X, X_new = awkward_data(seed), awkward_data(seed + 100)
    ours, theirs = ours_cls(**kwargs).fit(X), theirs_cls(**kwargs).fit(X)
    for attribute in ATTRIBUTES:
        expected = getattr(theirs, attribute, None)
        if expected is None:
            assert getattr(ours, attribute, None) is None, attribute
            continue
        # atol: the constant column's variance is 0 in scikit-learn and ~1e-30 here, both rounding error
        np.testing.assert_allclose(getattr(ours, attribute), expected, rtol=1e-12, atol=1e-20, err_msg=attribute)
    for data in (X, X_new):
        out = ours.transform(data)
        np.testing.assert_allclose(out, theirs.transform(data), rtol=1e-10, atol=1e-12)
        assert np.array_equal(np.isnan(out), np.isnan(data))  # NaNs kept
        np.testing.assert_allclose(ours.inverse_transform(out), theirs.inverse_transform(theirs.transform(data)),
                                   rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(ours_cls(**kwargs).fit_transform(X), theirs.transform(X), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [scaling.MinMaxScaler, scaling.StandardScaler, scaling.RobustScaler, scaling.MaxAbsScaler])
def test_float32_stays_float32_and_constant_features_are_finite(cls):
    X = awkward_data(0, np.float32)
    out = cls().fit_transform(X)
    assert out.dtype == np.float32
    observed = ~np.isnan(X[:, 3])
    assert np.isfinite(out[observed, 3]).all()


def test_standard_scaler_tiny_rounding_variance_counts_as_constant():
    X = np.full((10, 1), 0.1) + np.array([[0.0], [1e-17]] * 5)  # variance is pure rounding error
    ours, theirs = scaling.StandardScaler().fit(X), skl.StandardScaler().fit(X)
    np.testing.assert_array_equal(ours.scale_, theirs.scale_)


@pytest.mark.parametrize("call,error,message", [
    (lambda: scaling.StandardScaler().transform(np.ones((2, 2))), scaling.NotFittedError, "is not fitted yet"),
    (lambda: scaling.MinMaxScaler().fit(np.ones((3, 2))).transform(np.ones((3, 3))), ValueError,
     "X has 3 features, but MinMaxScaler is expecting 2 features as input"),
    (lambda: scaling.MaxAbsScaler().fit(np.ones(3)), ValueError, "Expected 2D array, got 1D array"),
    (lambda: scaling.RobustScaler().fit(np.array([["a"]])), ValueError, "could not convert string to float"),
    (lambda: scaling.StandardScaler().fit(np.array([[np.inf]])), ValueError, "Input X contains infinity"),
    (lambda: scaling.MinMaxScaler(feature_range=(1, 0)).fit(np.ones((2, 1))), ValueError,
     "feature_range: expected (min, max) with min < max"),
    (lambda: scaling.RobustScaler(quantile_range=(80, 20)).fit(np.ones((2, 1))), ValueError,
     "quantile_range: expected 0 <= q_min"),
])
def test_bad_input(call, error, message):
    """The messages of scikit-learn's own validation, and ours for the parameters (checked in
    fit, as scikit-learn's estimators do, so that set_params and clone work)."""
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


def test_not_fitted_error_is_scikit_learns():
    from sklearn.exceptions import NotFittedError

    assert scaling.NotFittedError is NotFittedError and issubclass(NotFittedError, ValueError)


@parametrize_with_checks([scaling.MinMaxScaler(), scaling.StandardScaler(), scaling.RobustScaler(),
                          scaling.MaxAbsScaler(), scaling.StandardScaler(with_mean=False),
                          scaling.RobustScaler(unit_variance=True), scaling.MinMaxScaler(clip=True)])
def test_scikit_learn_estimator_checks(estimator, check):
    """scikit-learn's own estimator checks, all of them. Seven skip themselves: the array-API
    checks, which run only with SCIPY_ARRAY_API=1 for estimators that support the array API
    (these scalers take numpy arrays)."""
    check(estimator)


def test_pipeline_clone_and_grid_search():
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    rng = np.random.default_rng(0)
    X = rng.normal(0, 1, (120, 3)) * [1, 100, 1e4]
    y = (X[:, 0] + X[:, 1] / 100 > 0).astype(int)
    scaler = scaling.RobustScaler(quantile_range=(10.0, 90.0))
    copy = clone(scaler)
    assert copy is not scaler and copy.get_params() == scaler.get_params()
    pipe = Pipeline([("scale", scaling.StandardScaler()), ("model", LogisticRegression())])
    search = GridSearchCV(pipe, {"scale": [scaling.StandardScaler(), scaling.MinMaxScaler(), scaling.MaxAbsScaler()]},
                          cv=3)
    search.fit(X, y)
    assert search.best_score_ > 0.9
    pipe.set_params(scale__with_mean=False).fit(X, y)
    assert pipe.named_steps["scale"].with_mean is False
    assert list(pipe[:-1].get_feature_names_out(["a", "b", "c"])) == ["a", "b", "c"]
