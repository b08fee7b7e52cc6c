"""torchntk.gp objectives against independent dense computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from torchntk import gp
from torchntk import layers as L
from torchntk.errors import InvalidArgumentError, ShapeError

F64 = torch.float64


def _p(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=F64, requires_grad=True)


def _spec(w, b, alpha):
    return L.serial(L.Dense(1, W_std=w, b_std=b), L.LeakyRelu(alpha), L.Dense(1, W_std=w, b_std=b))


@pytest.mark.parametrize("kind", ["nngp", "ntk"])
@pytest.mark.parametrize("outputs", [None, 3])
def test_likelihood_and_gradient_equal_multivariate_normal(kind, outputs):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=g, dtype=F64)
    y = torch.randn(30, generator=g, dtype=F64) if outputs is None else torch.randn(30, outputs, generator=g, dtype=F64)
    params = (_p(1.3), _p(0.2), _p(0.1), _p(0.05))  # W_std, b_std, alpha, noise

    def mine(w, b, alpha, noise):
        return gp.log_marginal_likelihood(gp.spec_kernel(_spec(w, b, alpha), x, kind=kind), y, noise)

    def dense(w, b, alpha, noise):
        k = gp.spec_kernel(_spec(w, b, alpha), x, kind=kind) + noise * torch.eye(30, dtype=F64)
        dist = MultivariateNormal(torch.zeros(30, dtype=F64), covariance_matrix=k)
        cols = y[:, None] if y.ndim == 1 else y
        return sum(dist.log_prob(cols[:, o]) for o in range(cols.shape[1]))

    a, b = mine(*params), dense(*params)
    assert abs(float((a - b).detach())) <= 1e-10 * abs(float(b.detach()))
    ga = torch.autograd.grad(a, params)
    gb = torch.autograd.grad(b, params)
    for u, v in zip(ga, gb):
        assert abs(float(u - v)) <= 1e-10 * max(1.0, abs(float(v)))


def test_one_hot_targets_are_a_sum_over_classes():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20, 3, generator=g, dtype=F64)
    k = x @ x.T / 3 + 0.5
    labels = torch.randint(0, 3, (20,), generator=g)
    onehot = torch.nn.functional.one_hot(labels, 3).to(F64)
    total = gp.log_marginal_likelihood(k, onehot, 0.1)
    parts = sum(gp.log_marginal_likelihood(k, onehot[:, c], 0.1) for c in range(3))
    torch.testing.assert_close(total, parts, rtol=1e-13, atol=0)


def test_jitter_rescues_a_singular_kernel_and_is_reported():
    # rank 2 of 7, with the zero eigenvalues pushed to -1e-13: no factorization without jitter,
    # and the first jitter (1e-12 of the mean diagonal, about 2e-12) is enough
    g = torch.Generator().manual_seed(5)
    a = torch.randn(7, 2, generator=g, dtype=F64)
    k = a @ a.T - 1e-13 * torch.eye(7, dtype=F64)
    chol, jitter = gp.cholesky(k, 0.0)
    assert jitter == 1e-12 * float(k.diagonal().mean()) and bool(torch.isfinite(chol).all())
    torch.testing.assert_close(chol @ chol.T, k + jitter * torch.eye(7, dtype=F64), rtol=0, atol=1e-13)
    assert math.isfinite(float(gp.log_marginal_likelihood(k, torch.randn(7, dtype=F64))))
    with pytest.raises(InvalidArgumentError, match="not positive semi-definite"):
        gp.cholesky(torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64))  # eigenvalues 3 and -1


def test_loo_equals_refitting_without_each_point():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(15, 3, generator=g, dtype=F64)
    y = torch.randn(15, 2, generator=g, dtype=F64)
    k = L.serial(L.Dense(1, b_std=0.3), L.Relu(), L.Dense(1)).kernel(x).ntk
    noise = 0.2
    res = gp.loo(k, y, noise)
    resid, var = [], []
    for i in range(15):
        keep = [j for j in range(15) if j != i]
        kr = k[keep][:, keep] + noise * torch.eye(14, dtype=F64)
        sol = torch.linalg.solve(kr, k[keep, i])
        resid.append(y[i] - sol @ y[keep])
        var.append(k[i, i] + noise - k[i, keep] @ sol)
    resid, var = torch.stack(resid), torch.stack(var)
    torch.testing.assert_close(res.residuals, resid, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.variances, var, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.mse, (resid**2).mean(), rtol=1e-10, atol=0)
    logp = torch.distributions.Normal(torch.zeros(()), var[:, None].sqrt()).log_prob(resid).sum()
    torch.testing.assert_close(res.log_predictive, logp.to(F64), rtol=1e-10, atol=0)


def test_bad_arguments_are_named():
    k = torch.eye(3, dtype=F64)
    with pytest.raises(ShapeError, match="y"):
        gp.log_marginal_likelihood(k, torch.ones(4))
    with pytest.raises(ShapeError, match="kernel"):
        gp.log_marginal_likelihood(torch.ones(3, 2), torch.ones(3))
    with pytest.raises(InvalidArgumentError, match="noise"):
        gp.log_marginal_likelihood(k, torch.ones(3), noise=-1.0)
