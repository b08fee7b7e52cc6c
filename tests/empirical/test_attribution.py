"""Attribution scores against leave-one-out retraining of the linearized network."""

from __future__ import annotations

import pytest
import torch

import torchntk
from torchntk.empirical import attribution, gradient_features
from torchntk.errors import InvalidArgumentError, ShapeError


def _setup():
    g = torch.Generator().manual_seed(0)
    net = torchntk.nn.MLP(3, [64], 1, activation="tanh", generator=g).double()
    x = torch.randn(12, 3, dtype=torch.float64, generator=g)
    xt = torch.randn(4, 3, dtype=torch.float64, generator=g)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(12, dtype=torch.float64, generator=g)
    return net, x, xt, y


def _jac(net, x):
    fm = torchntk.empirical._functional.make_functional(net)
    j = torchntk.empirical.jacobian.jacobians(fm, x)
    return torch.cat([v.reshape(x.shape[0], -1) for v in j.values()], 1)  # (N, P), output 0


def _retrained(J, y, Jt, f0, f0t, ridge):
    """The linearized network trained to convergence on sum (f - y)^2 + ridge |theta - theta0|^2:
    theta - theta0 = (J^T J + ridge I)^{-1} J^T (y - f0), solved in parameter space."""
    P = J.shape[1]
    d = torch.linalg.solve(J.T @ J + ridge * torch.eye(P, dtype=J.dtype), J.T @ (y - f0))
    return f0t + Jt @ d


def test_scores_equal_leave_one_out_retraining_of_the_linearized_network():
    net, x, xt, y = _setup()
    J, Jt = _jac(net, x), _jac(net, xt)
    with torch.no_grad():
        f0, f0t = net(x)[:, 0], net(xt)[:, 0]
    ridge = 0.05
    scores = attribution(J, y, Jt, ridge=ridge, f0_train=f0)
    full = _retrained(J, y, Jt, f0, f0t, ridge)
    for j in range(len(x)):
        keep = torch.arange(len(x)) != j
        loo = _retrained(J[keep], y[keep], Jt, f0[keep], f0t, ridge)
        # the Sherman-Morrison identity is exact: agreement to the solves' rounding
        torch.testing.assert_close(scores[:, j], full - loo, rtol=1e-8, atol=1e-10)
    trak = attribution(J, y, Jt, ridge=ridge, f0_train=f0, loo=False)
    assert trak.shape == (4, 12) and not torch.allclose(trak, scores)


def test_sketched_features_approximate_the_exact_scores():
    net, x, xt, y = _setup()
    J, Jt = _jac(net, x), _jac(net, xt)
    exact = attribution(J, y, Jt, ridge=0.05)
    errs = []
    for k in (256, 4096):
        phi, phit = gradient_features(net, x, k, seed=1), gradient_features(net, xt, k, seed=1)
        approx = attribution(phi, y, phit, ridge=0.05)
        errs.append(float((approx - exact).norm() / exact.norm()))
    assert errs[1] < 0.25 and errs[1] < errs[0], errs


def test_errors():
    phi = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(InvalidArgumentError, match="ridge"):
        attribution(phi, torch.ones(5), phi, ridge=0)
    with pytest.raises(ShapeError, match="features_test"):
        attribution(phi, torch.ones(5), torch.ones(2, 4), ridge=1.0)
    with pytest.raises(ShapeError, match="y_train"):
        attribution(phi, torch.ones(4), phi, ridge=1.0)
    with pytest.raises(ShapeError, match="phi\\[:, a\\]"):
        attribution(torch.ones(5, 2, 3), torch.ones(5), phi, ridge=1.0)
