"""torchntk.gp.fit: recovery of known hyperparameters, optimality, depth choice, posterior."""

from __future__ import annotations

import pytest
import torch

from torchntk import gp
from torchntk import layers as L
from torchntk.dynamics import mse
from torchntk.errors import InvalidArgumentError

F64 = torch.float64


def relu_net(W_std, b_std, depth=3):
    return L.mlp(512, depth, W_std=W_std, b_std=b_std)  # depth Dense layers, ReLU between


def _sample(n, outputs, W_std, b_std, noise, depth=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=F64)
    k = relu_net(W_std, b_std, depth).kernel(x).nngp + noise * torch.eye(n, dtype=F64)
    y = torch.linalg.cholesky(k) @ torch.randn(n, outputs, generator=g, dtype=F64)
    return x, y


@pytest.mark.slow
def test_fit_recovers_known_nngp_hyperparameters_n500():
    # several output columns: a constant term of the kernel (b_std^2 at the readout) is seen only
    # through the mean of each column, one number per column
    x, y = _sample(500, 5, 1.5, 0.5, 0.01)
    res = gp.fit(relu_net, x, y, {"W_std": 1.0, "b_std": 0.1}, restarts=0)
    assert abs(res.params["W_std"] / 1.5 - 1) < 0.1
    assert abs(res.params["b_std"] / 0.5 - 1) < 0.1
    assert abs(res.noise / 0.01 - 1) < 0.3


def test_fit_is_a_stationary_maximum():
    x, y = _sample(50, 3, 1.5, 0.5, 0.01, seed=1)
    res = gp.fit(relu_net, x, y, {"W_std": 1.0, "b_std": 0.1}, restarts=0)
    theta = torch.tensor([res.params["W_std"], res.params["b_std"], res.noise], dtype=F64).log().requires_grad_(True)
    w, b, nz = theta.exp()
    lml = gp.log_marginal_likelihood(relu_net(w, b).kernel(x).nngp, y, nz)
    (grad,) = torch.autograd.grad(lml, theta)
    assert float(grad.abs().max()) < 1e-4 * abs(float(lml.detach()))
    assert abs(float(lml.detach()) - res.log_marginal_likelihood) < 1e-9 * abs(res.log_marginal_likelihood)
    for step in ([0.05, 0, 0], [0, 0.05, 0], [0, 0, 0.05], [-0.05, 0.05, 0]):
        t = theta.detach() + torch.tensor(step, dtype=F64)
        w, b, nz = t.exp()
        assert float(gp.log_marginal_likelihood(relu_net(w, b).kernel(x).nngp, y, nz)) < res.log_marginal_likelihood


def test_depth_is_chosen_by_the_objective_and_loo_objective_lowers_the_loo_error():
    x, y = _sample(30, 2, 1.2, 0.3, 0.05, depth=2, seed=2)
    res = gp.fit(relu_net, x, y, {"W_std": 1.0, "b_std": 0.1}, depths=[2, 4], restarts=0, kind="ntk", max_iter=40)
    assert set(res.by_depth) == {2, 4} and res.depth == max(res.by_depth, key=res.by_depth.get)
    assert abs(res.by_depth[res.depth] - res.log_marginal_likelihood) < 1e-9 * abs(res.log_marginal_likelihood)
    start = float(gp.loo(gp.spec_kernel(relu_net(1.0, 0.1), x, kind="ntk"), y, 0.1 * float((y**2).mean())).mse)
    res_loo = gp.fit(relu_net, x, y, {"W_std": 1.0, "b_std": 0.1}, objective="loo", restarts=0, kind="ntk",
                     max_iter=20)
    assert res_loo.loo_mse < start


def test_ntk_posterior_mean_is_the_infinite_time_ensemble_mean():
    g = torch.Generator().manual_seed(4)
    x, xt, y = torch.randn(20, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64), torch.randn(20, 2, generator=g, dtype=F64)
    spec = relu_net(1.1, 0.2)
    post = gp.posterior(spec, x, y, xt, kind="ntk", noise=0.05)
    theta = spec.kernel(x).ntk
    pred = mse(theta + 0.05 * torch.eye(20, dtype=F64), y)
    _, f = pred(float("inf"), spec.kernel(xt, x).ntk)
    torch.testing.assert_close(post.mean, f, rtol=1e-9, atol=1e-12)
    assert post.covariance.shape == (5, 5)


def test_fit_rejects_bad_arguments():
    x = torch.randn(5, 2, dtype=F64)
    with pytest.raises(InvalidArgumentError, match="init"):
        gp.fit(relu_net, x, torch.ones(5), {"W_std": -1.0})
    with pytest.raises(InvalidArgumentError, match="objective"):
        gp.fit(relu_net, x, torch.ones(5), {"W_std": 1.0}, objective="bic")
    with pytest.raises(InvalidArgumentError, match="depths"):
        gp.fit(relu_net, x, torch.ones(5), {"W_std": 1.0}, depths=[0])
