"""Eigenmodes: exact decay rates, cost non-increase and dC/dt against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchntk.dynamics import modes, mse

from ._helpers import random_kernels

D = torch.float64


@pytest.mark.parametrize("full", [False, True])
def test_each_mode_decays_at_lambda_over_n(full):
    n, o = 9, 2
    ktt, _, _ = random_kernels(n, 0, o if full else None, seed=11)
    g = torch.Generator().manual_seed(1)
    y, f0 = torch.randn(n, o, dtype=D, generator=g), torch.randn(n, o, dtype=D, generator=g)
    md = modes(ktt, y, f0_train=f0)
    pred = mse(ktt, y, f0_train=f0)
    ts = torch.tensor([0.0, 0.7, 2.0], dtype=D)
    # residual coordinates from the predictions themselves, projected on the eigenvectors
    f_tr = pred(ts)[0]
    r = (f_tr - y).reshape(3, -1, 1) if full else f_tr - y
    c = md.eigenvectors.T @ r                               # (T, D, C)
    torch.testing.assert_close(c, md.coordinates(ts), atol=1e-12, rtol=0)
    # log-ratio between two times is exactly -rate * dt, mode by mode
    ok = c[0].abs() > 1e-6
    rate = -torch.log(c[2] / c[1]) / (ts[2] - ts[1])
    want = (md.eigenvalues / n)[:, None].expand_as(rate)
    torch.testing.assert_close(rate[ok], want[ok], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(md.decay_rates, torch.linalg.eigvalsh(pred.kernel) / n,
                               atol=1e-12, rtol=0)
    frac = md.fraction_learned(ts)
    torch.testing.assert_close(frac, 1 - torch.exp(-ts[:, None] * md.decay_rates[None]))
    assert abs(float(md.target_power.sum()) - 1) < 1e-12


def test_cost_never_increases_and_derivative_matches_finite_differences():
    n, o = 12, 3
    ktt, _, _ = random_kernels(n, 0, seed=12)
    y = torch.randn(n, o, dtype=D, generator=torch.Generator().manual_seed(2))
    md = modes(ktt, y)
    ts = torch.linspace(0, 40, 401, dtype=D)
    cost = md.cost(ts)
    # the cost computed from the predictions agrees with the mode formula
    f_tr = mse(ktt, y)(ts)[0]
    torch.testing.assert_close(cost, ((f_tr - y) ** 2).sum((1, 2)) / (2 * n), atol=1e-12, rtol=0)
    assert bool((cost[1:] <= cost[:-1] + 1e-15).all())
    # dC/dt = -(1/N^2) r^T Theta r vs central differences
    h = 1e-4
    for t in [0.01, 0.5, 3.0, 20.0]:
        fd = (md.cost(t + h) - md.cost(t - h)) / (2 * h)
        assert abs(float(md.cost_derivative(t) - fd)) < 1e-6 * max(1.0, abs(float(fd)))
    r = (f_tr[50] - y).numpy()
    direct = -np.trace(r.T @ ktt.numpy() @ r) / n ** 2
    assert abs(float(md.cost_derivative(ts[50])) - direct) < 1e-12
    assert bool((md.cost_derivative(ts) <= 0).all())


def test_gradient_descent_modes_use_step_factors():
    n = 6
    ktt, _, _ = random_kernels(n, 0, seed=13)
    y = torch.randn(n, dtype=D)
    from torchntk.dynamics import max_learning_rate
    lr = 0.5 * max_learning_rate(ktt)
    md = modes(ktt, y, learning_rate=lr)
    c = md.coordinates(torch.tensor([0.0, 5.0]))
    torch.testing.assert_close(c[1], md.step_factors[:, None] ** 5 * c[0])
    costs = md.cost(torch.arange(0, 50, dtype=D))
    assert bool((costs[1:] <= costs[:-1] + 1e-15).all())
    # t = inf: every mode with a positive eigenvalue is learned
    assert float(md.cost(float("inf"))) < 1e-20
