"""The ODE path: squared loss equals the closed form; other losses against a fine RK4."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sl
import torch

import torchntk
from torchntk.dynamics import max_learning_rate, mse, ode

from ._helpers import random_kernels

D = torch.float64


@pytest.mark.parametrize("full", [False, True])
def test_squared_loss_equals_closed_form(full):
    n, m, o = 8, 4, 2
    ktt, ktx, _ = random_kernels(n, m, o if full else None, seed=21)
    g = torch.Generator().manual_seed(3)
    y, f0, f0x = (torch.randn(n, o, dtype=D, generator=g), torch.randn(n, o, dtype=D, generator=g),
                  torch.randn(m, o, dtype=D, generator=g))
    ts = torch.tensor([0.0, 1.0, 4.0, 30.0], dtype=D)
    a = mse(ktt, y, f0_train=f0)(ts, ktx, f0x)
    b = ode("mse", ktt, y, f0_train=f0)(ts, ktx, f0x)
    torch.testing.assert_close(b[0], a[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(b[1], a[1], atol=1e-6, rtol=0)
    # a user callable computing the same loss gives the same answer
    c = ode(lambda f, yy: 0.5 * ((f - yy) ** 2).sum(), ktt, y, f0_train=f0)(ts[2], ktx, f0x)
    torch.testing.assert_close(c[1], a[1][2], atol=1e-6, rtol=0)


def test_momentum_ode_equals_damped_oscillator():
    """With squared loss the momentum ODE is linear: compare with expm of its (2D, 2D) system."""
    n, m = 6, 3
    ktt, ktx, _ = random_kernels(n, m, seed=22)
    y = torch.randn(n, 1, dtype=D, generator=torch.Generator().manual_seed(4))
    mu, lr = 0.9, 0.05 * max_learning_rate(ktt)
    steps = torch.tensor([0.0, 5.0, 30.0, 120.0], dtype=D)
    f_tr, f_te = ode("mse", ktt, y, learning_rate=lr, momentum=mu)(steps, ktx)
    kall = np.vstack([ktt.numpy(), ktx.numpy()])            # (n+m, n)
    size = n + m
    a = np.zeros((2 * size, 2 * size))
    a[:size, size:] = np.eye(size)                          # f' = v
    a[size:, :n] = -lr / n * kall                           # v' = -(eta/N) K (f_train - y) ...
    a[size:, size:] = -(1 - mu) * np.eye(size)              # ... - (1 - mu) v
    b = np.zeros(2 * size)
    b[size:] = lr / n * kall @ y.numpy()[:, 0]
    z0 = np.zeros(2 * size)
    for i, s in enumerate(steps.tolist()):
        # z' = A z + b  =>  z(s) = expm(sA) z0 + A^{-1}(expm(sA) - I) b via the augmented system
        aug = np.zeros((2 * size + 1, 2 * size + 1))
        aug[:-1, :-1], aug[:-1, -1] = a, b
        z = (sl.expm(s * aug) @ np.append(z0, 1.0))[:-1]
        np.testing.assert_allclose(f_tr[i, :, 0].numpy(), z[:n], atol=1e-6)
        np.testing.assert_allclose(f_te[i, :, 0].numpy(), z[n:size], atol=1e-6)
    # and it approximates discrete heavy-ball gradient descent for small steps (loosely)
    lr = 0.01 * max_learning_rate(ktt)
    steps = torch.tensor([0.0, 25.0, 150.0, 600.0], dtype=D)
    approx = ode("mse", ktt, y, learning_rate=lr, momentum=mu)(steps)[0]
    exact = mse(ktt, y, learning_rate=lr, momentum=mu)(steps)[0]
    assert float((exact - approx).abs().max()) < 0.05 * float(y.abs().max())


def _rk4(rhs, z0, t, steps=4000):
    z, h = z0.copy(), t / steps
    for _ in range(steps):
        k1 = rhs(z)
        k2 = rhs(z + h / 2 * k1)
        k3 = rhs(z + h / 2 * k2)
        k4 = rhs(z + h * k3)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return z


@pytest.mark.parametrize("loss", ["cross_entropy", "huber"])
def test_other_losses_against_fixed_step_rk4(loss):
    n, m, o = 6, 3, 3
    ktt, ktx, _ = random_kernels(n, m, seed=23)
    g = torch.Generator().manual_seed(5)
    if loss == "cross_entropy":
        y = torch.nn.functional.one_hot(torch.arange(n) % o, o).to(D)
        f0 = 0.3 * torch.randn(n, o, dtype=D, generator=g)
    else:
        y = 3 * torch.randn(n, o, dtype=D, generator=g)
        f0 = torch.zeros(n, o, dtype=D)
    t = 5.0
    f_tr, f_te = ode(loss, ktt, y, f0_train=f0)(t, ktx)
    yn, kn, kx = y.numpy(), ktt.numpy(), ktx.numpy()

    def grad(f):
        if loss == "cross_entropy":
            p = np.exp(f - f.max(1, keepdims=True))
            return p / p.sum(1, keepdims=True) - yn
        return np.clip(f - yn, -1.0, 1.0)

    def rhs(z):
        f = z[: n * o].reshape(n, o)
        gr = grad(f)
        return -np.concatenate([(kn @ gr).ravel(), (kx @ gr).ravel()]) / n

    z = _rk4(rhs, np.concatenate([f0.numpy().ravel(), np.zeros(m * o)]), t)
    np.testing.assert_allclose(f_tr.numpy(), z[: n * o].reshape(n, o), atol=1e-7)
    np.testing.assert_allclose(f_te.numpy(), z[n * o:].reshape(m, o), atol=1e-7)
    # training lowers the loss
    from torchntk.dynamics import cross_entropy_loss, huber_loss
    fn = cross_entropy_loss if loss == "cross_entropy" else huber_loss
    assert float(fn(f_tr, y)) < float(fn(f0, y))


def test_full_kernel_cross_entropy_matches_scalar_kron_identity():
    n, o = 5, 3
    ktt, _, _ = random_kernels(n, 0, seed=24)
    full = torch.einsum("ij,ab->ijab", ktt, torch.eye(o, dtype=D))
    y = torch.nn.functional.one_hot(torch.arange(n) % o, o).to(D)
    ts = torch.tensor([0.5, 2.0])
    a = ode("cross_entropy", ktt, y)(ts)[0]
    b = ode("cross_entropy", full, y)(ts)[0]
    torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def test_ode_bad_inputs():
    ktt, _, _ = random_kernels(4, 0)
    y = torch.randn(4, dtype=D)
    with pytest.raises(torchntk.InvalidArgumentError, match="loss"):
        ode("hinge", ktt, y)
    with pytest.raises(torchntk.InvalidArgumentError, match="`t`"):
        ode("mse", ktt, y)(float("inf"))
    with pytest.raises(torchntk.InvalidArgumentError, match="`t`"):
        ode("mse", ktt, y)(-2.0)
    with pytest.raises(torchntk.ShapeError, match="y_train"):
        ode("mse", ktt, torch.randn(3))
