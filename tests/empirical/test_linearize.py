"""linearize(model): value and Jacobian at theta0, exact affinity in theta, trainable."""

from __future__ import annotations

import torch
from torch import nn

from torchntk.empirical import empirical_ntk, linearize

from ._models import assert_close, brute_jacobian


def _net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()


def test_equals_model_at_theta0_and_has_the_same_ntk():
    net = _net()
    lin = linearize(net)
    x = torch.randn(5, 3, dtype=torch.float64)
    assert_close(lin(x), net(x), rtol=1e-14)
    assert_close(empirical_ntk(lin, x), empirical_ntk(net, x))


def test_is_affine_in_the_parameters():
    """f_lin(theta0 + d) = f(theta0) + J d, with J from brute-force autograd."""
    net = _net()
    lin = linearize(net)
    x = torch.randn(4, 3, dtype=torch.float64)
    delta = [torch.randn_like(p) for p in lin.parameters()]
    with torch.no_grad():
        for p, d in zip(lin.parameters(), delta):
            p.add_(d)
    jac = brute_jacobian(net, x)  # (N, O, P)
    expected = net(x) + jac @ torch.cat([d.reshape(-1) for d in delta])
    assert_close(lin(x), expected, rtol=1e-12)
    # and the original model is untouched
    assert not any(p is q for p, q in zip(lin.parameters(), net.parameters()))


def test_gradient_descent_follows_the_kernel_dynamics():
    """One GD step on the MSE moves f_lin by exactly -eta/N Theta (f - y) (CONVENTIONS 4)."""
    net = _net()
    lin = linearize(net)
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.randn(6, 2, dtype=torch.float64)
    eta, n = 0.3, x.shape[0]
    opt = torch.optim.SGD(lin.parameters(), lr=eta)
    theta = empirical_ntk(net, x)  # (N, N, O, O)
    f0 = lin(x).detach()
    for _ in range(3):
        f = lin(x).detach()
        opt.zero_grad()
        loss = 0.5 / n * (lin(x) - y).pow(2).sum()
        loss.backward()
        opt.step()
        predicted = f - eta / n * torch.einsum("ijab,jb->ia", theta, f - y)
        assert_close(lin(x).detach(), predicted, rtol=1e-12)
    assert (lin(x) - f0).abs().max() > 1e-3


def test_state_moves_with_to_and_keeps_theta0():
    lin = linearize(_net())
    assert any(k.startswith("_theta0.") for k in lin.state_dict())
    lin32 = lin.float()
    assert all(t.dtype == torch.float32 for t in lin32.theta0().values())
