"""Infinite ensembles: the closed-form Gaussian against exact sampling, the GP posterior, and
an ensemble of independently initialized and trained finite networks."""

from __future__ import annotations

import math

import pytest
import torch

import torchntk
from torchntk.dynamics import ensemble, gp_posterior, max_learning_rate, mse
from torchntk.nn import MLP

from ._helpers import random_kernels

D = torch.float64


def test_mean_and_covariance_equal_the_linear_map_of_the_prior():
    """f_t = T y + f0(x) - T f0(X) is linear in f0 ~ N(0, K): check both moments exactly."""
    n, m = 7, 4
    k_tt, k_xt, k_xx = random_kernels(n, m, seed=31)
    th_tt, th_xt, _ = random_kernels(n, m, seed=32)
    y = torch.randn(n, 2, dtype=D, generator=torch.Generator().manual_seed(0))
    t = 1.7
    g = ensemble(k_tt, th_tt, y)(t, nngp_test_train=k_xt, ntk_test_train=th_xt,
                                 nngp_test_test=k_xx)
    # the map f0 -> f_t(x) from the mse predictor: affine, read off column by column
    pred = mse(th_tt, y)
    base = pred(t, th_xt, torch.zeros(m, 2, dtype=D))[1]
    lin = torch.zeros(m, n + m, dtype=D)
    for j in range(n + m):
        f0 = torch.zeros(n + m, 1, dtype=D)
        f0[j] = 1.0
        out = mse(th_tt, torch.zeros(n, dtype=D), f0_train=f0[:n, 0])(t, th_xt, f0[n:, 0])[1]
        lin[:, j] = out
    k_joint = torch.cat([torch.cat([k_tt, k_xt.T], 1), torch.cat([k_xt, k_xx], 1)], 0)
    torch.testing.assert_close(g.mean, base, atol=1e-12, rtol=0)
    torch.testing.assert_close(g.covariance, lin @ k_joint @ lin.T, atol=1e-12, rtol=0)


def test_train_points_and_time_axis_and_full_kernels():
    n, o = 6, 2
    k_tt, _, _ = random_kernels(n, 0, seed=33)
    th_tt, _, _ = random_kernels(n, 0, seed=34)
    y = torch.randn(n, o, dtype=D)
    g = ensemble(k_tt, th_tt, y)(torch.tensor([0.0, 2.0, float("inf")]))
    assert g.mean.shape == (3, n, o) and g.covariance.shape == (3, n, n)
    torch.testing.assert_close(g.covariance[0], k_tt)            # t = 0: the prior
    torch.testing.assert_close(g.mean[2], y, atol=1e-10, rtol=0)  # t = inf: fits the data ...
    assert float(g.covariance[2].abs().max()) < 1e-10             # ... with no spread
    # the full-kernel form of a scalar kernel (K (x) I_O) gives the same numbers
    eye = torch.eye(o, dtype=D)
    full = lambda k: torch.einsum("ij,ab->ijab", k, eye)  # noqa: E731
    gf = ensemble(full(k_tt), full(th_tt), y)(2.0)
    torch.testing.assert_close(gf.mean, g.mean[1])
    torch.testing.assert_close(gf.covariance, full(g.covariance[1]))


def test_infinite_time_posteriors():
    n, m = 9, 5
    k_tt, k_xt, k_xx = random_kernels(n, m, seed=35)
    th_tt, th_xt, _ = random_kernels(n, m, seed=36)
    y = torch.randn(n, dtype=D)
    pred = ensemble(k_tt, th_tt, y)
    nngp = pred(float("inf"), kind="nngp", nngp_test_train=k_xt, nngp_test_test=k_xx)
    kinv = torch.linalg.inv(k_tt)
    torch.testing.assert_close(nngp.mean, k_xt @ kinv @ y)
    torch.testing.assert_close(nngp.covariance, k_xx - k_xt @ kinv @ k_xt.T)
    post = gp_posterior(k_tt, y, k_xt, k_xx)
    torch.testing.assert_close(post.mean, nngp.mean)
    torch.testing.assert_close(post.covariance, nngp.covariance)
    ntk = pred(float("inf"), nngp_test_train=k_xt, ntk_test_train=th_xt, nngp_test_test=k_xx)
    tinv = th_xt @ torch.linalg.inv(th_tt)
    torch.testing.assert_close(ntk.mean, tinv @ y)
    want = k_xx - tinv @ k_xt.T - k_xt @ tinv.T + tinv @ k_tt @ tinv.T
    torch.testing.assert_close(ntk.covariance, want)
    # and the flow approaches it
    late = pred(1e6, nngp_test_train=k_xt, ntk_test_train=th_xt, nngp_test_test=k_xx)
    torch.testing.assert_close(late.covariance, ntk.covariance, atol=1e-8, rtol=0)


def _relu_kernels(x1, x2, beta):
    """Analytic NNGP and NTK of MLP(d, [width], 1, relu, beta) at infinite width (CONV. sec. 2)."""
    d = x1.shape[1]
    def s0(a, b):
        return a @ b.T / d + beta ** 2
    q12, q11, q22 = s0(x1, x2), s0(x1, x1).diagonal()[:, None], s0(x2, x2).diagonal()[None]
    s = torch.sqrt(torch.clamp(q11 * q22 - q12 ** 2, min=0))
    ang = torch.atan2(s, q12)
    sig = (s + (math.pi - ang) * q12) / (2 * math.pi)
    sdot = (math.pi - ang) / (2 * math.pi)
    nngp = sig + beta ** 2
    return nngp, q12 * sdot + nngp


def _ensemble_check(members, width, n, m, steps):
    d, beta = 3, 0.1
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n + m, d, dtype=D, generator=g)
    y = torch.sin(2 * x[:n, :1])
    nets = [MLP(d, [width], 1, activation="relu", beta=beta, dtype=D,
                generator=torch.Generator().manual_seed(100 + i)) for i in range(members)]
    l1, l2 = nets[0][0], nets[0][2]
    # the members' parameters stacked (members, ...); forward pass = MLP.forward, batched
    w1 = torch.stack([net[0].weight.detach() for net in nets]).requires_grad_(True)
    b1 = torch.stack([net[0].bias.detach() for net in nets]).requires_grad_(True)
    w2 = torch.stack([net[2].weight.detach() for net in nets]).requires_grad_(True)
    b2 = torch.stack([net[2].bias.detach() for net in nets]).requires_grad_(True)
    params = [w1, b1, w2, b2]

    def batched(xx):
        h = torch.relu(torch.einsum("ewd,nd->enw", w1 * l1.weight_scale, xx)
                       + (b1 * l1.bias_scale)[:, None])
        return torch.einsum("eow,enw->eno", w2 * l2.weight_scale, h) + (b2 * l2.bias_scale)[:, None]

    with torch.no_grad():  # the batched forward is each member's own forward
        torch.testing.assert_close(batched(x)[3], nets[3](x))
    nngp, ntk = _relu_kernels(x, x, beta)
    lr = 0.5 * max_learning_rate(ntk[:n, :n])
    for _ in range(steps):
        cost = ((batched(x[:n]) - y) ** 2).sum() / (2 * n)  # sum over members: separate grads
        grads = torch.autograd.grad(cost, params)
        with torch.no_grad():
            for p_, g_ in zip(params, grads):
                p_ -= lr * g_
    with torch.no_grad():
        out = batched(x[n:])[..., 0]                         # (members, m)
    pred = ensemble(nngp[:n, :n], ntk[:n, :n], y, learning_rate=lr)
    gauss = pred(steps, nngp_test_train=nngp[n:, :n], ntk_test_train=ntk[n:, :n],
                 nngp_test_test=nngp[n:, n:])
    mean_err = float((out.mean(0) - gauss.mean[:, 0]).norm() / gauss.mean.norm())
    cov_err = float((torch.cov(out.T) - gauss.covariance).norm() / gauss.covariance.norm())
    return mean_err, cov_err


def test_ensemble_matches_512_trained_finite_networks():
    mean_err, cov_err = _ensemble_check(members=512, width=512, n=8, m=4, steps=40)
    print(f"ensemble of 512: mean error {mean_err:.3f}, covariance error {cov_err:.3f}")
    assert mean_err < 0.10 and cov_err < 0.10, (mean_err, cov_err)


@pytest.mark.slow
def test_ensemble_matches_4096_trained_wide_networks():
    mean_err, cov_err = _ensemble_check(members=4096, width=1024, n=12, m=6, steps=100)
    assert mean_err < 0.10 and cov_err < 0.10, (mean_err, cov_err)


def test_ensemble_bad_inputs():
    k, kx, kxx = random_kernels(4, 2)
    y = torch.randn(4, dtype=D)
    with pytest.raises(torchntk.ShapeError, match="must have the same shape"):
        ensemble(k, torch.eye(5, dtype=D), torch.randn(5))
    pred = ensemble(k, k, y)
    with pytest.raises(torchntk.InvalidArgumentError, match="kind"):
        pred(1.0, kind="both")
    with pytest.raises(torchntk.InvalidArgumentError, match="nngp_test_test"):
        pred(1.0, nngp_test_train=kx, ntk_test_train=kx)
    with pytest.raises(torchntk.InvalidArgumentError, match="ntk_test_train"):
        pred(1.0, nngp_test_train=kx, nngp_test_test=kxx)
    assert pred(1.0, nngp_test_train=kx, ntk_test_train=kx, compute_cov=False).covariance is None
