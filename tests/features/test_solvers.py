"""Feature-space dynamics and ridge regression against the exact kernel formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchntk import dynamics
from torchntk import layers as L
from torchntk.errors import InvalidArgumentError, NonFiniteError, ShapeError
from torchntk.features import FeatureMap, FeatureRows, gram, mse, ridge_regression

D64 = torch.float64


def _close(a, b, tol=1e-10):
    scale = max(1.0, float(b.abs().max()))
    assert float((a - b).abs().max()) <= tol * scale


@pytest.mark.parametrize("n,d", [(40, 12), (10, 30)])
@pytest.mark.parametrize("learning_rate", [None, 0.3])
@pytest.mark.parametrize("diag_reg", [0.0, 0.05])
def test_feature_dynamics_equal_exact_dynamics_of_phi_phi_t(n, d, learning_rate, diag_reg):
    gen = torch.Generator().manual_seed(n + d)
    phi = torch.randn(n, d, generator=gen, dtype=D64) / d**0.5
    px = torch.randn(7, d, generator=gen, dtype=D64) / d**0.5
    y, f0 = torch.randn(n, 2, generator=gen, dtype=D64), 0.1 * torch.randn(n, 2, generator=gen, dtype=D64)
    f0x = 0.1 * torch.randn(7, 2, generator=gen, dtype=D64)
    ts = torch.tensor([0.0, 1.0, 10.0, 300.0]) if learning_rate is None else torch.tensor([0.0, 1.0, 10.0, 50.0])
    exact = dynamics.mse(phi @ phi.T, y, f0_train=f0, learning_rate=learning_rate, diag_reg=diag_reg)
    feat = mse(FeatureRows.from_tensor(phi, block_size=6), y, f0_train=f0, learning_rate=learning_rate,
               diag_reg=diag_reg)
    a, b = exact(ts, px @ phi.T, f0x), feat(ts, px, f0x)
    _close(b[0], a[0])
    _close(b[1], a[1])
    if n < d or diag_reg > 0:  # t = inf is well posed (full-rank or ridged train kernel)
        a, b = exact(float("inf"), px @ phi.T), feat(float("inf"), px)
        _close(b[0], a[0])
        _close(b[1], a[1])


def test_dynamics_streamed_from_a_feature_map():
    spec = L.serial(L.Dense(64, b_std=0.1), L.Relu(), L.Dense(1, b_std=0.1))
    x, xt = torch.randn(30, 4, dtype=D64), torch.randn(5, 4, dtype=D64)
    fm = FeatureMap(spec, 16)
    y = torch.sin(x[:, 0])
    phi = fm(x).ntk
    exact = dynamics.mse(phi @ phi.T, y)
    f_train, f_test = mse(fm.rows(x, block_size=7), y)(torch.tensor([0.5, 5.0]), fm.rows(xt))
    a_train, a_test = exact(torch.tensor([0.5, 5.0]), fm(xt).ntk @ phi.T)
    assert f_train.shape == (2, 30) and f_test.shape == (2, 5)
    _close(f_train, a_train)
    _close(f_test, a_test)


@pytest.mark.parametrize("n,d", [(50, 10), (10, 50)])
def test_ridge_regression_primal_and_dual(n, d):
    gen = torch.Generator().manual_seed(1)
    phi = torch.randn(n, d, generator=gen, dtype=D64)
    px = torch.randn(5, d, generator=gen, dtype=D64)
    y = torch.randn(n, 3, generator=gen, dtype=D64)
    model = ridge_regression(FeatureRows.from_tensor(phi, block_size=7), y, [1e-2, 0.1])
    k = phi @ phi.T
    s = float(k.diagonal().mean())
    pred = model.predict(px)
    assert pred.shape == (2, 5, 3)
    for i, r in enumerate([1e-2, 0.1]):
        expected = px @ phi.T @ torch.linalg.solve(k + r * s * torch.eye(n, dtype=D64), y)
        _close(pred[i], expected)
    one = ridge_regression(phi, y[:, 0], 0.5, mode="ABSOLUTE").predict(px)
    _close(one[0], px @ phi.T @ torch.linalg.solve(k + 0.5 * torch.eye(n, dtype=D64), y[:, 0]))


def test_gram_streams_in_float64():
    phi = torch.randn(23, 6, dtype=D64)
    g = gram(FeatureRows.from_tensor(phi, block_size=5), torch.ones(23))
    _close(g.matrix, phi.T @ phi)
    _close(g.rhs[:, 0], phi.sum(0))
    assert g.matrix.dtype == D64 and g.n == 23
    # float32 features: each batch's product in float32 (float32 speed), summed in float64
    g32 = gram(FeatureRows.from_tensor(phi.float(), block_size=5))
    assert g32.matrix.dtype == D64
    p = phi.float().double()
    _close(g32.matrix, p.T @ p, tol=1e-5)


def test_gram_upper_blocks_match_the_full_product():
    # D >= 1024: the Gram is formed from its upper column blocks only, then mirrored
    gen = torch.Generator().manual_seed(5)
    phi = torch.randn(70, 1100, generator=gen, dtype=D64)
    g = gram(FeatureRows.from_tensor(phi.float(), block_size=32))
    p = phi.float().double()
    ref = p.T @ p
    # float32 sums of 32 products per batch: relative error ~ 1e-7 * sqrt(32) of each entry's scale
    assert float((g.matrix - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    assert torch.equal(g.matrix, g.matrix.T)


def test_gram_of_bfloat16_rows_is_exact_up_to_float32_sums():
    # a bfloat16 map's features are bfloat16 numbers, so the Gram's bfloat16 products (oneDNN's
    # bf16 math mode on the CPU) lose nothing: only the float32 sums of each batch round
    spec = L.serial(L.Dense(64, b_std=0.1), L.Relu(), L.Dense(1, W_std=1.3, b_std=0.1))
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(1))
    fm = FeatureMap(spec, 600, seed=0, dtype=torch.float32, precision="bfloat16")
    phi = fm(x).ntk  # (50, 1201): the upper-block path
    assert torch.equal(phi.bfloat16().float(), phi)
    g = gram(fm.rows(x, block_size=20), torch.ones(50))
    p = phi.double()
    ref = p.T @ p
    assert float((g.matrix - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    assert float((g.rhs[:, 0] - p.sum(0)).abs().max()) <= 1e-5 * float(p.abs().sum(0).max())


def test_solver_errors():
    phi = torch.randn(5, 3, dtype=D64)
    with pytest.raises(ShapeError, match="y_train"):
        mse(phi, torch.zeros(4))
    with pytest.raises(InvalidArgumentError, match="diag_reg"):
        mse(phi, torch.zeros(5), diag_reg=-1.0)
    with pytest.raises(InvalidArgumentError, match="learning_rate"):
        mse(phi, torch.zeros(5), learning_rate=0)
    with pytest.raises(ShapeError, match="phi_test"):
        mse(phi, torch.zeros(5))(1.0, torch.zeros(2, 4))
    with pytest.raises(InvalidArgumentError, match="ridges"):
        ridge_regression(phi, torch.zeros(5), [-1.0])
    with pytest.raises(InvalidArgumentError, match="phi_train"):
        ridge_regression([[1.0]], torch.zeros(1))


def _digits(n_train, n_test):
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    idx = np.random.default_rng(0).permutation(len(x))
    x = torch.tensor(x / 16.0)
    return x[idx[:n_train]], y[idx[:n_train]], x[idx[n_train:n_train + n_test]], y[idx[n_train:n_train + n_test]]


GRID = [1e-4, 1e-3, 1e-2, 1e-1]


def _best_accuracies(n_train, n_test, m):
    xtr, ytr, xte, yte = _digits(n_train, n_test)
    spec = L.serial(L.Dense(512, b_std=0.1), L.Relu(), L.Dense(512, b_std=0.1), L.Relu(),
                    L.Dense(1, b_std=0.1))
    targets = torch.nn.functional.one_hot(torch.tensor(ytr), 10).double()
    k, kt = spec.kernel(xtr).ntk, spec.kernel(xte, xtr).ntk
    s = float(k.diagonal().mean())
    exact = [float((np.argmax((kt @ torch.linalg.solve(k + r * s * torch.eye(len(k), dtype=D64), targets)).numpy(), 1)
                    == yte).mean()) for r in GRID]
    fm = FeatureMap(spec, m, seed=0)
    pred = ridge_regression(fm.rows(xtr), targets, GRID).predict(fm.rows(xte))
    feat = [float((np.argmax(p.numpy(), 1) == yte).mean()) for p in pred]
    print(f"accuracy per ridge {GRID}: exact {exact}, features {feat}")
    return max(exact), max(feat)


def test_digits_feature_ridge_small():
    exact, feat = _best_accuracies(300, 200, 512)
    assert feat >= exact - 0.03, (exact, feat)


@pytest.mark.slow
def test_digits_feature_ridge_acceptance():
    exact, feat = _best_accuracies(1297, 500, 8192)
    print(f"digits best accuracy: exact {exact:.4f}, features m = 8192 {feat:.4f}")
    assert feat >= exact - 0.015, (exact, feat)


def test_sklearn_estimators_take_n_features():
    pytest.importorskip("sklearn")
    from torchntk.sklearn import NTKClassifier, NTKRegressor

    xtr, ytr, xte, yte = _digits(200, 100)
    fixed = dict(W_std=1.0, b_std=0.1, depth=3, diag_reg=1e-3)  # the estimators fit these when None
    clf = NTKClassifier(n_features=256, **fixed).fit(xtr.numpy(), ytr)
    assert (clf.predict(xte.numpy()) == yte).mean() > 0.85
    x = np.random.default_rng(0).normal(size=(40, 3))
    reg = NTKRegressor(n_features=64, normalize_y=False, **fixed).fit(x, np.sin(x[:, 0]))
    fm_pred = reg.predict(x[:5])
    # the same predictor as the feature-space ridge regression on the same map
    from torchntk.features import FeatureMap

    fm = FeatureMap(reg.spec_, 64, seed=0)
    ridge = ridge_regression(fm.rows(torch.from_numpy(x)), torch.from_numpy(np.sin(x[:, 0])), 1e-3)
    np.testing.assert_allclose(fm_pred, ridge.predict(fm.rows(torch.from_numpy(x[:5])))[0].numpy(), rtol=1e-8,
                               atol=1e-10)


def test_non_finite_features_and_targets_are_named():
    # the Gram of features with a NaN is NaN everywhere: refused before any decomposition
    phi = torch.randn(30, 6, dtype=torch.float64)
    phi[4, 2] = float("nan")
    y = torch.randn(30, dtype=torch.float64)
    with pytest.raises(NonFiniteError, match="`phi_train`"):
        mse(phi, y)
    with pytest.raises(NonFiniteError, match="`phi_train`"):
        ridge_regression(phi, y, 1e-3)
    # rows given batch by batch (as a map streams them): each batch is checked as the Gram sums it
    streamed = FeatureRows(None, phi, "given", 16, 6)
    with pytest.raises(NonFiniteError, match=r"`phi_train\[0:16\]`"):
        mse(streamed, y)
    with pytest.raises(NonFiniteError, match="`phi_train`"):
        ridge_regression(phi[:5], y[:5], 1e-3)  # fewer rows than features: the dual
    with pytest.raises(NonFiniteError, match="`y_train`"):
        mse(phi.nan_to_num(), torch.full((30,), float("inf"), dtype=torch.float64))


def test_rank_deficient_features_use_dynamics_pseudo_inverse_and_ridge():
    # Phi (N=12, D=4): Theta = Phi Phi^T of rank 4; t = inf without a ridge is the pseudo-inverse
    # fit, equal to dynamics.mse on the explicit kernel to the conditioning of its 4 modes
    g = torch.Generator().manual_seed(2)
    phi = torch.randn(12, 4, dtype=torch.float64, generator=g)
    y, x_test = torch.randn(12, 2, dtype=torch.float64, generator=g), torch.randn(5, 4, dtype=torch.float64, generator=g)
    for reg, mode in ((0.0, "relative"), (0.3, "RELATIVE"), (0.2, "Absolute")):
        got = mse(phi, y, diag_reg=reg, diag_reg_mode=mode)(torch.tensor([0.5, float("inf")]), x_test)
        ref = dynamics.mse(phi @ phi.T, y, diag_reg=reg, diag_reg_mode=mode)(
            torch.tensor([0.5, float("inf")]), x_test @ phi.T)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
