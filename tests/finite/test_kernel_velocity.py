"""``kernel_velocity`` against finite differences of the eNTK along the gradient-flow direction
and against one real gradient step; ``predict_kernel_change`` against a short training run."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchntk
from torchntk import finite
from torchntk import layers as L
from torchntk.errors import InvalidArgumentError, ShapeError


def _net(act, outputs=1, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 16), act(), nn.Linear(16, 16), act(), nn.Linear(16, outputs)).double()


def _data(seed=1, n=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)


def _grad(net, x_train, residual):
    params = [p for p in net.parameters()]
    out = net(x_train)
    return torch.autograd.grad(out, params, grad_outputs=residual)


def _shifted(net, grads, step):
    moved = copy.deepcopy(net)
    with torch.no_grad():
        for p, g in zip(moved.parameters(), grads):
            p.sub_(step * g)
    return moved


@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU])
@pytest.mark.parametrize("outputs", [1, 2])
def test_velocity_equals_central_difference(act, outputs):
    net = _net(act, outputs)
    x_train, x = _data()
    residual = net(x_train).detach() - torch.ones(5, outputs, dtype=torch.float64)
    v = finite.kernel_velocity(net, x, x_train, residual)
    grads = _grad(net, x_train, residual)
    h = 1e-4
    plus = torchntk.empirical_ntk(_shifted(net, grads, h), x)
    minus = torchntk.empirical_ntk(_shifted(net, grads, -h), x)
    fd = (plus - minus) / (2 * h)
    # central difference: O(h^2) = 1e-8 relative for tanh; ReLU is piecewise quadratic in theta
    # (exact) unless a unit crosses its kink within h (not for this draw); 1e-6 of the largest entry
    scale = v.abs().max()
    assert float((v - fd).abs().max() / scale) < 1e-6


@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU])
def test_velocity_equals_one_gradient_step(act):
    net = _net(act, seed=3)
    x_train, x = _data(seed=4)
    residual = net(x_train).detach() - 0.5
    v = finite.kernel_velocity(net, x, x_train, residual, x2=x_train, mode="mean")
    eta = 1e-4
    moved = _shifted(net, _grad(net, x_train, residual), eta)
    step = (torchntk.empirical_ntk(moved, x, x_train, mode="mean") - torchntk.empirical_ntk(net, x, x_train, mode="mean")) / eta
    # forward difference: O(eta) relative error, about 1e-4 here; the acceptance bound is 1e-2
    assert float((v - step).abs().max() / v.abs().max()) < 1e-2


def test_modes_and_normalization():
    net = _net(nn.Tanh, outputs=3)
    x_train, x = _data()
    residual = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    full = finite.kernel_velocity(net, x, x_train, residual)
    assert full.shape == (4, 4, 3, 3)
    torch.testing.assert_close(full, full.permute(1, 0, 3, 2), rtol=1e-12, atol=1e-14)  # symmetric
    diag = finite.kernel_velocity(net, x, x_train, residual, mode="diagonal")
    mean = finite.kernel_velocity(net, x, x_train, residual, mode="MEAN")
    torch.testing.assert_close(diag, full.diagonal(dim1=2, dim2=3), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(mean, diag.mean(-1), rtol=1e-12, atol=1e-14)
    per = finite.kernel_velocity(net, x, x_train, residual, normalization="mean")
    torch.testing.assert_close(per, full / 5, rtol=1e-12, atol=1e-14)


def _setup_run(seed=1):
    g = torch.Generator().manual_seed(6)
    x_train = torch.randn(6, 3, generator=g, dtype=torch.float64)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x_train.sum(1, keepdim=True))
    spec = L.mlp(64, 3, activation=L.Erf, W_std=1.5, b_std=0.1)
    net = spec.module(3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return net, x_train, x, y


def _riemann_error(eta, steps):
    net, x_train, x, y = _setup_run()
    theta0 = torchntk.empirical_ntk(net, x, mode="mean")
    total = torch.zeros_like(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=eta)
    for _ in range(steps):
        r = net(x_train).detach() - y
        total += eta * finite.kernel_velocity(net, x, x_train, r, mode="mean", normalization="mean")
        opt.zero_grad()
        (0.5 * ((net(x_train) - y) ** 2).sum() / 6).backward()
        opt.step()
    drift = torchntk.empirical_ntk(net, x, mode="mean") - theta0
    return float((total - drift).norm() / drift.norm())


def test_velocity_integrates_to_the_drift_of_a_run():
    # gradient descent on the mean cost up to t = 0.1: the kernel's drift is the Riemann sum over the
    # steps of eta * velocity(theta_k, r_k) up to O(eta): the error is small and halves with eta
    coarse, fine = _riemann_error(0.01, 10), _riemann_error(0.005, 20)
    assert coarse < 2e-2 and 1.6 < coarse / fine < 2.4, (coarse, fine)


def test_predict_kernel_change_is_the_integral_of_the_velocity():
    # the closed form Q diag((1 - e^{-t lambda}) / lambda) Q^T r_0 against Simpson's rule on
    # V[exp(-s Theta/M) r_0] (matrix exponential: an independent path); then the first order in t
    net, x_train, x, y = _setup_run()
    r0 = net(x_train).detach() - y
    t = 0.3
    pred = finite.predict_kernel_change(net, x, x_train, r0, t, mode="mean", normalization="mean")
    theta = torchntk.empirical_ntk(net, x_train, mode="mean") / 6
    s = torch.linspace(0, t, 41, dtype=torch.float64)
    w = torch.ones(41, dtype=torch.float64)
    w[1:-1:2], w[2:-1:2] = 4, 2
    w *= (t / 40) / 3
    r_int = sum(wi * torch.linalg.matrix_exp(-si * theta) @ r0 for si, wi in zip(s, w))
    ref = finite.kernel_velocity(net, x, x_train, r_int, mode="mean", normalization="mean")
    # Simpson with 40 intervals on a smooth exponential: about 1e-9 relative
    torch.testing.assert_close(pred, ref, rtol=1e-7, atol=1e-9 * float(ref.abs().max()))
    small = finite.predict_kernel_change(net, x, x_train, r0, 1e-6, mode="mean", normalization="mean")
    v0 = finite.kernel_velocity(net, x, x_train, r0, mode="mean", normalization="mean")
    torch.testing.assert_close(small / 1e-6, v0, rtol=1e-5, atol=1e-5 * float(v0.abs().max()))


def test_predict_kernel_change_tracks_a_short_run():
    # a real run of 5 steps (the residual falls by about 4%): the first-order prediction holds to a
    # few percent (measured 0.7%; the neglected second order grows like t^2 against t), 5%
    net, x_train, x, y = _setup_run()
    eta, steps = 0.02, 5
    r0 = net(x_train).detach() - y
    theta0 = torchntk.empirical_ntk(net, x, mode="mean")
    pred = finite.predict_kernel_change(net, x, x_train, r0, torch.tensor([0.0, eta * steps]), mode="mean", normalization="mean")
    assert float(pred[0].abs().max()) == 0.0
    opt = torch.optim.SGD(net.parameters(), lr=eta)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * ((net(x_train) - y) ** 2).sum() / 6).backward()
        opt.step()
    drift = torchntk.empirical_ntk(net, x, mode="mean") - theta0
    assert float((pred[1] - drift).norm() / drift.norm()) < 0.05


def test_errors():
    net = _net(nn.Tanh)
    x_train, x = _data()
    with pytest.raises(ShapeError):
        finite.kernel_velocity(net, x, x_train, torch.zeros(4, 1, dtype=torch.float64))
    with pytest.raises(ShapeError):
        finite.kernel_velocity(net, x, x_train[:, :2], torch.zeros(5, 1, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError):
        finite.kernel_velocity(net, x, x_train, torch.zeros(5, 1, dtype=torch.float64), mode="trace")
    with pytest.raises(InvalidArgumentError):
        finite.kernel_velocity(net, x, x_train, torch.zeros(5, 1, dtype=torch.float64), normalization="avg")
    with pytest.raises(InvalidArgumentError):
        finite.predict_kernel_change(net, x, x_train, torch.zeros(5, 1, dtype=torch.float64), -1.0)
    with pytest.raises(ShapeError):
        finite.kernel_velocity(net, x, x_train[:0], torch.zeros(0, 1, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError):
        finite.kernel_velocity(net, x, x_train.tolist(), torch.zeros(5, 1, dtype=torch.float64))
