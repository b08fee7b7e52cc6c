"""Matrix-free operator and solvers against dense linear algebra (N = 2,000)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg as sl
import torch

import torchntk
from torchntk.errors import ConvergenceWarning, InvalidArgumentError
from torchntk.scale import (
    KernelOperator,
    SpectralDynamics,
    cg_solve,
    kernel_regression,
    tiled_kernel,
    top_eigh,
)
from ._reference import ReluFCKernel

N = 2000


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 10, dtype=torch.float64, generator=g)
    xt = torch.randn(300, 10, dtype=torch.float64, generator=g)
    fn = ReluFCKernel(depth=3, block=None)
    store = tiled_kernel(fn, x, out=tmp_path_factory.mktemp("s") / "k.zarr", block_size=512, progress=False)
    k = store.to_tensor("ntk")
    kt = fn(xt, x)["ntk"]
    y = torch.sin(x[:, :2] * 2).sum(1, keepdim=True) + 0.1 * torch.randn(N, 1, dtype=torch.float64, generator=g)
    y = torch.cat([y, torch.cos(x[:, :1])], 1)  # (N, 2)
    return {"store": store, "k": k, "kt": kt, "y": y}


@pytest.fixture(scope="module")
def small():
    """N = 600 with its full dense spectrum, for the dynamics."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(600, 10, dtype=torch.float64, generator=g)
    xt = torch.randn(100, 10, dtype=torch.float64, generator=g)
    fn = ReluFCKernel(depth=3, block=None)
    k, kt = fn(x, x)["ntk"], fn(xt, x)["ntk"]
    y = torch.stack([torch.sin(2 * x[:, 0]), torch.cos(x[:, 1])], 1)
    w, v = np.linalg.eigh(k.numpy())
    return {"k": k, "kt": kt, "y": y, "w": w[::-1], "v": v[:, ::-1], "n": 600}


def test_store_operator_streams_the_same_products(problem):
    op = KernelOperator.from_store(problem["store"], "ntk", diag_reg=0.5)
    V = np.random.default_rng(0).standard_normal((N, 3))
    # tile by tile against one product: the sums of N = 2000 terms differ by their rounding,
    # at most N eps |K| |V| (entrywise); an entry that cancels to 3e-3 has no relative accuracy
    ref = problem["k"].numpy() @ V + 0.5 * V
    bound = N * np.finfo(np.float64).eps * (np.abs(problem["k"].numpy()) @ np.abs(V))
    assert np.all(np.abs(op @ V - ref) <= bound + 1e-300)
    np.testing.assert_allclose(op.diagonal(), np.diagonal(problem["k"].numpy()) + 0.5, rtol=1e-14)


@pytest.mark.parametrize("method", ["eigsh", "lobpcg"])
def test_top_eigenpairs_agree_with_dense(problem, method):
    lam, q = top_eigh(problem["store"] if method == "eigsh" else problem["k"], 8, method=method, tol=1e-9)
    if "top8" not in problem:
        w, v = sl.eigh(problem["k"].numpy(), subset_by_index=[N - 8, N - 1])
        problem["top8"] = (w[::-1], v[:, ::-1])
    w, v = problem["top8"]
    np.testing.assert_allclose(lam, w, rtol=1e-7)
    # eigenvectors up to sign, for the well-separated leading ones
    overlap = np.abs(np.sum(q[:, :4] * v[:, :4], axis=0))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-6)


@pytest.mark.parametrize("pre, source", [(None, "k"), ("jacobi", "store"), ("nystrom", "k")])
def test_cg_agrees_with_dense_solve(problem, pre, source):
    k, y = problem["k"].numpy(), problem["y"]
    alpha, info = cg_solve(problem[source], y, diag_reg=0.1, rtol=1e-10, preconditioner=pre, rank=50)
    dense = sl.solve(k + 0.1 * np.eye(N), y.numpy(), assume_a="pos")
    assert info["converged"] and max(info["relative_residual"]) < 1e-9
    np.testing.assert_allclose(alpha.numpy(), dense, rtol=1e-6, atol=1e-8 * np.abs(dense).max())


def test_nystrom_preconditioning_cuts_iterations(small):
    y = small["y"][:, 0]
    _, plain = cg_solve(small["k"], y, diag_reg=1e-3, rtol=1e-8)
    _, pre = cg_solve(small["k"], y, diag_reg=1e-3, rtol=1e-8, preconditioner="nystrom", rank=100)
    assert pre["iterations"][0] < 0.7 * plain["iterations"][0]


def test_kernel_regression_matches_closed_form(problem):
    k, kt, y = problem["k"].numpy(), problem["kt"].numpy(), problem["y"].numpy()
    f_train, f_test, info = kernel_regression(problem["k"], problem["y"], problem["kt"],
                                              diag_reg=0.1, diag_reg_mode="absolute", rtol=1e-10)
    alpha = sl.solve(k + 0.1 * np.eye(N), y, assume_a="pos")
    np.testing.assert_allclose(f_test.numpy(), kt @ alpha, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(f_train.numpy(), k @ alpha, rtol=1e-6, atol=1e-8)


def test_spectral_dynamics_error_within_the_stated_bound(small):
    kt, y = small["kt"].numpy(), small["y"].numpy()
    N = small["n"]
    lam, q = top_eigh(small["k"], 30)
    dyn = SpectralDynamics(lam, q, small["y"])
    ts = np.array([0.5, 5.0, 50.0, 500.0])
    f, bound = dyn.train(ts)
    ft, bound_t = dyn.test(ts, small["kt"])
    w, v = small["w"], small["v"]
    for i, t in enumerate(ts):
        decay = v @ (np.exp(-t * w / N)[:, None] * (v.T @ (-y)))  # exact residual exp(-t K/N) r0
        err = np.linalg.norm(decay + y - f[i].numpy(), axis=0)
        assert np.all(err <= bound[i].numpy() * (1 + 1e-9) + 1e-12)
        g = np.where(w > 1e-12, (1 - np.exp(-t * w / N)) / np.maximum(w, 1e-300), t / N)
        exact_test = -kt @ (v @ (g[:, None] * (v.T @ (-y))))
        err_t = np.linalg.norm(exact_test - ft[i].numpy(), axis=0)
        assert np.all(err_t <= bound_t[i].numpy() * (1 + 1e-9) + 1e-12)
    # all modes: exact
    dyn_all = SpectralDynamics(w, v, small["y"])
    f_all, b_all = dyn_all.train(5.0)
    exact = v @ (np.exp(-5.0 * w / N)[:, None] * (v.T @ (-y))) + y
    np.testing.assert_allclose(f_all.numpy(), exact, atol=1e-10)


def test_spectral_dynamics_gradient_descent_bound(small):
    k, y = small["k"].numpy(), small["y"].numpy()
    N = small["n"]
    lam, q = top_eigh(small["k"], 20)
    eta = 1.0 * N / lam[0]
    dyn = SpectralDynamics(lam, q, small["y"], learning_rate=eta)
    step = np.eye(N) - eta * k / N
    r = -y
    for s in range(1, 31):
        r = step @ r
        if s in (1, 10, 30):
            f, b = dyn.train(float(s))
            err = np.linalg.norm(r + y - f.numpy(), axis=0)
            assert np.all(err <= b.numpy() * (1 + 1e-9) + 1e-12)


def test_operator_arguments():
    with pytest.raises(InvalidArgumentError, match="diag_reg"):
        KernelOperator.from_tensor(torch.eye(3), diag_reg=-1.0)
    with pytest.raises(InvalidArgumentError, match="k"):
        top_eigh(torch.eye(5, dtype=torch.float64), 5)
    with pytest.raises(InvalidArgumentError, match="preconditioner"):
        cg_solve(torch.eye(5, dtype=torch.float64), torch.ones(5), preconditioner="ilu")


def test_kernel_regression_is_mse_at_infinite_time_with_its_ridge():
    """Same arguments, same ridge ``diag_reg * s`` as ``dynamics.mse``; CG against Cholesky."""
    from torchntk.dynamics import mse

    g = torch.Generator().manual_seed(5)
    x, xt = torch.randn(80, 4, dtype=torch.float64, generator=g), torch.randn(9, 4, dtype=torch.float64, generator=g)
    fn = ReluFCKernel(depth=2, block=None)
    k, kt = fn(x, x)["ntk"], fn(xt, x)["ntk"]
    y = torch.sin(x[:, :2])
    for mode, mu in (("relative", 1e-2 * float(k.diagonal().mean())), ("absolute", 1e-2)):
        f_train, f_test, info = kernel_regression(k, y, kt, diag_reg=1e-2, diag_reg_mode=mode, rtol=1e-13)
        _, ref_test = mse(k, y, diag_reg=1e-2, diag_reg_mode=mode)(float("inf"), kt)
        assert info["converged"]
        torch.testing.assert_close(f_test, ref_test, rtol=1e-9, atol=1e-10)
        # at the train points: the ridge fit K (K + mu I)^{-1} y (mse trains on K + mu I: f = y)
        ref_train = k @ torch.linalg.solve(k + mu * torch.eye(80, dtype=k.dtype), y)
        torch.testing.assert_close(f_train, ref_train, rtol=1e-9, atol=1e-10)
    with pytest.warns(FutureWarning, match="relative"):
        kernel_regression(k, y, kt, diag_reg=1e-2)


def test_cg_warns_when_it_stops_short_of_its_tolerance():
    # eigenvalues 1e-6 .. 1: condition 1e6, far more than 5 iterations to reach 1e-10
    g = np.random.default_rng(0)
    q, _ = np.linalg.qr(g.standard_normal((200, 200)))
    k = torch.from_numpy((q * np.logspace(-6, 0, 200)) @ q.T)
    y = torch.from_numpy(g.standard_normal(200))
    with pytest.warns(ConvergenceWarning, match="stopped short of rtol=1e-10"):
        _, info = cg_solve(k, y, rtol=1e-10, maxiter=5)
    assert not info["converged"] and info["relative_residual"][0] > 1e-10
    assert issubclass(ConvergenceWarning, torchntk.TorchNTKWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # reaching rtol: no warning
        _, info = cg_solve(k, y, rtol=1e-10, maxiter=5000)
    assert info["converged"] and info["relative_residual"][0] <= 1e-9
