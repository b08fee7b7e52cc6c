"""NTKRegressor / NTKClassifier: the closed form, digits, and scikit-learn's estimator checks.

Expected-failed checks: none. Skipped by scikit-learn itself here: the array-API check (needs
SCIPY_ARRAY_API) and the pandas checks (pandas not installed). The full check suite takes ~40 s
on two cores, so it is marked slow; a fast subset runs by default.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from torchntk import layers as L  # noqa: E402
from torchntk.sklearn import NTKClassifier, NTKRegressor, default_architecture  # noqa: E402

FAST = {"check_estimators_unfitted", "check_fit2d_1sample", "check_n_features_in", "check_fit_idempotent",
        "check_estimators_pickle", "check_dont_overwrite_parameters", "check_regressors_train",
        "check_classifiers_train", "check_estimators_dtypes", "check_estimators_nan_inf",
        "check_methods_subset_invariance", "check_get_params_invariance"}


def _name(check) -> str:
    return getattr(check, "func", check).__name__


@parametrize_with_checks([NTKRegressor(diag_reg=1e-6), NTKClassifier(diag_reg=1e-6)])
def test_sklearn_checks(estimator, check, request):
    if _name(check) not in FAST and not request.config.getoption("--runslow"):
        pytest.skip("full estimator-check suite: run with --runslow")
    check(estimator)


def test_regressor_is_kernel_regression_and_gradient_flow():
    rng = np.random.default_rng(0)
    X, Xq = rng.normal(size=(30, 4)), rng.normal(size=(5, 4))
    y = np.sin(X[:, 0]) + X[:, 1]
    spec = default_architecture()
    K = spec.kernel(torch.from_numpy(X)).ntk.numpy()
    Kq = spec.kernel(torch.from_numpy(Xq), torch.from_numpy(X)).ntk.numpy()
    np.testing.assert_allclose(NTKRegressor().fit(X, y).predict(Xq), Kq @ np.linalg.solve(K, y), rtol=1e-7, atol=1e-9)
    # finite time: f_t = Kq K^{-1} (I - exp(-t K / N)) y
    t, N = 7.0, len(X)
    lam, Q = np.linalg.eigh(K)
    expect = Kq @ (Q @ (((1 - np.exp(-t * lam / N)) / lam) * (Q.T @ y)))
    np.testing.assert_allclose(NTKRegressor(t=t).fit(X, y).predict(Xq), expect, rtol=1e-7, atol=1e-9)
    # t = 0: the mean network outputs zero
    assert np.abs(NTKRegressor(t=0.0).fit(X, y).predict(Xq)).max() < 1e-12


def test_classifier_digits_and_custom_architecture():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    spec = L.serial(L.Dense(256, b_std=0.1), L.Erf(), L.Dense(1, b_std=0.1))
    clf = NTKClassifier(architecture=spec, diag_reg=1e-4).fit(X[:300], y[:300])
    assert clf.score(X[300:600], y[300:600]) > 0.85
    assert clf.decision_function(X[:3]).shape == (3, 10)
    assert clone(clf).architecture is not spec


def test_errors():
    with pytest.raises(NotFittedError):
        NTKRegressor().predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="t must be"):
        NTKRegressor(t=-1.0).fit(np.eye(3), np.ones(3))
    reg = NTKRegressor().fit(np.eye(3), np.ones(3))
    with pytest.raises(ValueError, match="features"):
        reg.predict(np.ones((2, 4)))


@pytest.mark.parametrize("cls", [NTKRegressor, NTKClassifier])
def test_set_params_after_fit_never_mixes_old_and_new_kernels(cls):
    rng = np.random.default_rng(0)
    X, Xt = rng.normal(size=(20, 3)), rng.normal(size=(6, 3))
    y = np.sin(X[:, 0]) if cls is NTKRegressor else (X[:, 0] > 0).astype(int)
    other = L.serial(L.Dense(64, W_std=1.5, b_std=0.5), L.Erf(), L.Dense(1, W_std=1.5, b_std=0.5))
    est = cls(diag_reg=1e-6).fit(X, y)
    est.set_params(architecture=other)
    with pytest.raises(NotFittedError):  # the train kernel of the old architecture is gone
        est.predict(Xt)
    fresh = cls(architecture=other, diag_reg=1e-6).fit(X, y)
    out = "predict" if cls is NTKRegressor else "decision_function"
    np.testing.assert_allclose(getattr(est.fit(X, y), out)(Xt), getattr(fresh, out)(Xt), rtol=1e-12)
    est.set_params(diag_reg=1e-2)
    with pytest.raises(NotFittedError):
        est.predict(Xt)
    # t is read at prediction time: changing it keeps the fit and equals a fresh fit with that t
    est = cls(architecture=other, diag_reg=1e-6).fit(X, y).set_params(t=3.0)
    fresh = cls(architecture=other, diag_reg=1e-6, t=3.0).fit(X, y)
    np.testing.assert_allclose(getattr(est, out)(Xt), getattr(fresh, out)(Xt), rtol=1e-12)
