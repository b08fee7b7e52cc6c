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


FIXED = {"W_std": 1.0, "b_std": 0.1, "depth": 3, "diag_reg": 1e-6}


def _searches(estimator) -> bool:
    """Whether ``fit`` runs the hyperparameter search (any of them left to the default)."""
    return any(getattr(estimator, k) is None for k in FIXED)


@parametrize_with_checks([NTKRegressor(), NTKClassifier(), NTKRegressor(**FIXED), NTKClassifier(**FIXED)])
def test_sklearn_checks(estimator, check, request):
    if not request.config.getoption("--runslow"):
        if _name(check) not in FAST:
            pytest.skip("full estimator-check suite: run with --runslow")
        # The training checks refit the searching defaults several times (20-30 s each here):
        # the fixed-hyperparameter estimators take them with every variant in the default suite,
        # and the defaults' search is tested by the fitting tests below.
        if _searches(estimator) and _name(check).endswith("_train"):
            pytest.skip("training checks of the searching defaults: run with --runslow")
    check(estimator)


def test_regressor_is_kernel_regression_and_gradient_flow():
    rng = np.random.default_rng(0)
    X, Xq = rng.normal(size=(30, 4)), rng.normal(size=(5, 4))
    y = np.sin(X[:, 0]) + X[:, 1]
    spec = default_architecture()
    K = spec.kernel(torch.from_numpy(X)).ntk.numpy()
    Kq = spec.kernel(torch.from_numpy(Xq), torch.from_numpy(X)).ntk.numpy()
    fixed = dict(W_std=1.0, b_std=0.1, depth=3, diag_reg=0.0, normalize_y=False)
    np.testing.assert_allclose(NTKRegressor(**fixed).fit(X, y).predict(Xq), Kq @ np.linalg.solve(K, y), rtol=1e-7, atol=1e-9)
    # finite time: f_t = Kq K^{-1} (I - exp(-t K / N)) y
    t, N = 7.0, len(X)
    lam, Q = np.linalg.eigh(K)
    expect = Kq @ (Q @ (((1 - np.exp(-t * lam / N)) / lam) * (Q.T @ y)))
    np.testing.assert_allclose(NTKRegressor(t=t, **fixed).fit(X, y).predict(Xq), expect, rtol=1e-7, atol=1e-9)
    # t = 0: the mean network outputs zero
    assert np.abs(NTKRegressor(t=0.0, **fixed).fit(X, y).predict(Xq)).max() < 1e-12


def test_classifier_digits_and_custom_architecture():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    spec = L.serial(L.Dense(256, b_std=0.1), L.Erf(), L.Dense(1, b_std=0.1))
    clf = NTKClassifier(architecture=spec, diag_reg=1e-4).fit(X[:300], y[:300])
    assert clf.W_std_ is None and clf.depth_ is None and clf.diag_reg_ == 1e-4
    assert clf.score(X[300:600], y[300:600]) > 0.85
    assert clf.decision_function(X[:3]).shape == (3, 10)
    assert clone(clf).architecture is not spec


def test_errors():
    from torchntk.errors import InvalidArgumentError, ShapeError, SpecError

    with pytest.raises(NotFittedError):
        NTKRegressor().predict(np.zeros((2, 3)))
    reg = NTKRegressor().fit(np.eye(3), np.ones(3))
    with pytest.raises(ValueError, match="features"):
        reg.predict(np.ones((2, 4)))
    # the estimators' own arguments: torchntk errors naming the argument (still ValueErrors)
    bad = [(NTKRegressor(t=-1.0), "`t`"), (NTKRegressor(depth=0), "`depth`"), (NTKRegressor(depth=2.5), "`depth`"),
           (NTKRegressor(diag_reg=-1.0), "`diag_reg`"), (NTKRegressor(W_std=float("nan")), "`W_std`"),
           (NTKRegressor(input_shape=(0, 3)), "`input_shape`"), (NTKClassifier(t="x"), "`t`"),
           (NTKRegressor(architecture=L.Dense(1), depth=2), "`architecture`")]
    for est, name in bad:
        with pytest.raises(InvalidArgumentError, match=name):
            est.fit(np.eye(3), np.arange(3.0) % 2)
    with pytest.raises(InvalidArgumentError, match="2 classes"):
        NTKClassifier(**FIXED).fit(np.eye(3), np.zeros(3))
    clf = NTKClassifier(**FIXED, n_features=64).fit(np.eye(4), np.arange(4) % 2)
    with pytest.raises(InvalidArgumentError, match="n_features=None"):
        clf.predict_proba(np.eye(4))
    with pytest.raises(ShapeError, match="input_shape"):
        NTKRegressor(**FIXED, input_shape=(2, 2)).fit(np.ones((3, 5)), np.ones(3))
    cnn = L.serial(L.Conv(4, (3, 3), padding="SAME"), L.Relu(), L.GlobalAvgPool(), L.Dense(1))
    with pytest.raises(SpecError, match="input_shape"):  # flat rows given to a CNN: the error says what to pass
        NTKClassifier(architecture=cnn, diag_reg=1e-3).fit(np.ones((4, 16)), np.arange(4) % 2)


def test_estimators_on_images():
    """A CNN spec through the estimator equals kernel regression with the same spec's NTK on the
    images; N-d input with the default architecture is its flattened rows (Flatten's kernel of a
    dense input is x.x' / d)."""
    from sklearn.datasets import load_digits

    Xd, yd = load_digits(return_X_y=True)
    Xd = Xd / 16.0
    cnn = L.serial(L.Conv(8, (3, 3), padding="SAME", b_std=0.1), L.Relu(), L.GlobalAvgPool(), L.Dense(1, b_std=0.1))
    tr, te = slice(0, 80), slice(80, 160)
    clf = NTKClassifier(architecture=cnn, diag_reg=1e-3, input_shape=(1, 8, 8)).fit(Xd[tr], yd[tr])
    acc = clf.score(Xd[te], yd[te])
    imgs = torch.from_numpy(Xd).reshape(-1, 1, 8, 8)
    K = cnn.kernel(imgs[tr]).ntk
    Kt = cnn.kernel(imgs[te], imgs[tr]).ntk
    Y = torch.nn.functional.one_hot(torch.from_numpy(yd[tr])).double()
    Yc = Y - Y.mean(0)
    f = Kt @ torch.linalg.solve(K + 1e-3 * K.diagonal().mean() * torch.eye(len(K), dtype=K.dtype), Yc)
    direct = float((f.argmax(1).numpy() == yd[te]).mean())
    assert acc > 0.6 and abs(acc - direct) <= 0.01
    # the same classifier on image-shaped arrays
    nd = NTKClassifier(architecture=cnn, diag_reg=1e-3).fit(Xd[tr].reshape(-1, 1, 8, 8), yd[tr])
    np.testing.assert_array_equal(nd.predict(Xd[te].reshape(-1, 1, 8, 8)), clf.predict(Xd[te]))
    # default architecture: N-d examples are flattened
    rng = np.random.default_rng(3)
    X, Xq = rng.normal(size=(20, 4)), rng.normal(size=(5, 4))
    y = np.sin(X[:, 0])
    Xr = X.reshape(len(X), 1, 1, -1)
    np.testing.assert_allclose(NTKRegressor(**FIXED).fit(Xr, y).predict(Xq.reshape(len(Xq), 1, 1, -1)),
                               NTKRegressor(**FIXED).fit(X, y).predict(Xq), rtol=1e-9, atol=1e-12)


def _fitted_hyperparameters_maximize_the_likelihood(est, X, Y):
    """The estimator's fitted values equal torchntk.gp.fit's on the same subset and targets."""
    from torchntk import gp

    x = torch.from_numpy(X)
    res = gp.fit(default_architecture, x, torch.from_numpy(Y), {"W_std": 1.0, "b_std": 0.1}, kind="ntk",
                 relative_noise=True, depths=[2, 3, 4], restarts=0, max_iter=50, tol=1e-7)
    assert est.depth_ == res.depth
    assert abs(est.W_std_ / res.params["W_std"] - 1) < 1e-6 and abs(est.b_std_ / res.params["b_std"] - 1) < 1e-6
    assert abs(est.log_marginal_likelihood_ - res.log_marginal_likelihood) < 1e-6 * abs(res.log_marginal_likelihood)


def test_regressor_fits_hyperparameters_by_marginal_likelihood():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 3))
    y = 3.0 + 2.0 * np.sin(X[:, 0]) + 0.1 * rng.normal(size=40)
    reg = NTKRegressor().fit(X, y)
    Y = ((y - y.mean()) / y.std())[:, None]
    _fitted_hyperparameters_maximize_the_likelihood(reg, X, Y)
    # the fitted model predicts with its fitted ridge: the NTK-GP posterior mean, mapped back
    from torchntk import gp

    noise = reg.diag_reg_ * float(reg.spec_.kernel(torch.from_numpy(X)).ntk.diagonal().mean())
    post = gp.posterior(reg.spec_, torch.from_numpy(X), torch.from_numpy(Y), torch.from_numpy(X[:5]),
                        kind="ntk", noise=noise, full_cov=False)
    np.testing.assert_allclose(reg.predict(X[:5]), post.mean[:, 0].numpy() * y.std() + y.mean(), rtol=1e-8)
    assert reg.score(X, y) > 0.9
    # a user-fixed value stays fixed
    fixed = NTKRegressor(W_std=1.5, depth=2).fit(X, y)
    assert fixed.W_std_ == 1.5 and fixed.depth_ == 2 and fixed.b_std_ != 0.1


def test_classifier_probabilities_and_decision_function():
    from scipy import integrate, stats

    rng = np.random.default_rng(2)
    X = rng.normal(size=(45, 2))
    y = np.digitize(X[:, 0] + 0.3 * X[:, 1], [-0.5, 0.5])  # three classes
    clf = NTKClassifier().fit(X, y)
    p = clf.predict_proba(X[:4])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    assert (clf.classes_[p.argmax(axis=1)] == clf.predict(X[:4])).all()
    # the probability that class c has the largest of independent N(m_c, v) outputs, by 1-D
    # adaptive quadrature of  int phi(u) prod_{c' != c} Phi((m_c - m_c' + s u) / s) du
    m, v = clf._outputs_and_variance(X[:4])
    m = m + clf._y_mean
    s = np.sqrt(v)
    for i in range(4):
        for c in range(3):
            def f(u, i=i, c=c):
                return stats.norm.pdf(u) * np.prod(
                    [stats.norm.cdf((m[i, c] - m[i, d]) / s[i] + u) for d in range(3) if d != c])

            ref = integrate.quad(f, -12, 12, epsabs=1e-13)[0]
            assert abs(p[i, c] - ref) < 1e-9
    np.testing.assert_allclose(clf.decision_function(X[:4]), m, rtol=1e-10)
    assert clf.score(X, y) > 0.8
    binary = NTKClassifier().fit(X, y > 0)
    d = binary.decision_function(X[:6])
    assert d.shape == (6,) and ((d > 0) == binary.predict(X[:6])).all()
    assert binary.predict_proba(X[:6]).shape == (6, 2)


def test_set_params_after_fit_does_not_mix_kernels():
    rng = np.random.default_rng(3)
    X, Xq = rng.normal(size=(30, 3)), rng.normal(size=(4, 3))
    y = np.sin(X[:, 0])
    reg = NTKRegressor(architecture=default_architecture(), diag_reg=1e-3).fit(X, y)
    before = reg.predict(Xq)
    reg.set_params(architecture=L.serial(L.Dense(8), L.Erf(), L.Dense(1)), t=1.0)
    np.testing.assert_array_equal(reg.predict(Xq), before)  # the fitted spec and time are used
    after = reg.fit(X, y).predict(Xq)
    assert np.abs(after - before).max() > 1e-3
