"""DriftTracker and the full-batch trainer against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchntk
from torchntk.errors import InvalidArgumentError, ShapeError
from torchntk.lab import DriftTracker, train_full_batch
from torchntk.nn import MLP, Linear


def test_linear_model_follows_the_closed_form_exactly():
    # a model linear in its parameters: gradient descent IS kernel gradient descent
    torch.manual_seed(0)
    x, y = torch.randn(12, 3, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    xt = torch.randn(5, 3, dtype=torch.float64)
    net = Linear(3, 2, b_std=0.5, dtype=torch.float64)
    K = torchntk.empirical_ntk(net, x, mode="mean")
    Kt = torchntk.empirical_ntk(net, xt, x, mode="mean")
    with torch.no_grad():
        f0, f0t = net(x), net(xt)
    lr = 0.5 * 12 / float(torch.linalg.eigvalsh(K)[-1])
    traj = train_full_batch(net, x, y, learning_rate=lr, steps=40, record_steps=[0, 10, 40], x_test=xt)
    pred = torchntk.dynamics.mse(K, y, f0_train=f0, learning_rate=lr)
    f_tr, f_te = pred(torch.tensor([0.0, 10.0, 40.0], dtype=torch.float64), Kt, f0t)
    np.testing.assert_allclose(traj.f_train, f_tr.numpy(), atol=1e-10)
    np.testing.assert_allclose(traj.f_test, f_te.numpy(), atol=1e-10)
    assert traj.steps.tolist() == [0, 10, 40] and traj.cost.shape == (41,)
    assert np.all(np.diff(traj.cost) <= 1e-15)
    np.testing.assert_allclose(traj.cost[0], 0.5 * ((f0 - y) ** 2).sum().item() / 12)


def test_tracker_records_drift_and_alignment():
    gen = torch.Generator().manual_seed(1)
    net = MLP(2, [64, 64], 1, generator=gen).double()
    x = torch.randn(8, 2, dtype=torch.float64, generator=gen)
    y = torch.randn(8, 1, dtype=torch.float64, generator=gen)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    with DriftTracker(net, x, y, every=5, keep_kernels=True) as tr:
        for _ in range(12):
            opt.zero_grad()
            (0.5 * ((net(x) - y) ** 2).sum() / 8).backward()
            opt.step()
            tr.step()
    h = tr.history
    assert h["step"] == [0, 5, 10, 12]                     # entry, every 5, and the exit record
    assert h["drift"][0] == 0.0 and all(d > 0 for d in h["drift"][1:])
    K = torchntk.empirical_ntk(net, x, mode="mean").double()
    np.testing.assert_allclose(tr.kernels[-1].numpy(), K.numpy(), rtol=1e-12)
    K0 = tr.kernels[0]
    np.testing.assert_allclose(h["drift"][-1], float(torch.linalg.norm(K - K0) / torch.linalg.norm(K0)), rtol=1e-10)
    yy = y @ y.T
    align = float((K * yy).sum() / (torch.linalg.norm(K) * torch.linalg.norm(yy)))
    np.testing.assert_allclose(h["alignment"][-1], align, rtol=1e-10)
    assert tr.seconds > 0 and net.training                  # the model's mode is restored


def test_tracker_errors():
    net = MLP(2, [8], 1)
    with pytest.raises(InvalidArgumentError, match="every"):
        DriftTracker(net, torch.randn(4, 2), every=0)
    with pytest.raises(ShapeError, match="probe_y"):
        DriftTracker(net, torch.randn(4, 2), torch.randn(3, 1))
    with pytest.raises(InvalidArgumentError, match="model"):
        DriftTracker("net", torch.randn(4, 2))


def test_tracker_drift_is_zero_when_a_layer_is_frozen_and_nothing_changed():
    # freezing a layer mid-run moves no weight: the kernel (over the parameters of the first
    # record) is the same, drift exactly 0 (the same computation on the same weights)
    gen = torch.Generator().manual_seed(2)
    net = MLP(2, [32, 32], 1, generator=gen).double()
    x = torch.randn(8, 2, dtype=torch.float64, generator=gen)
    tr = DriftTracker(net, x, every=1, keep_kernels=True)
    tr.record()
    for p in list(net.parameters())[:2]:
        p.requires_grad_(False)
    tr.record()
    assert tr.history["drift"] == [0.0, 0.0]
    np.testing.assert_allclose(tr.kernels[0].numpy(), torchntk.empirical_ntk(net, x, mode="mean", params=[n for n, _ in net.named_parameters()]).numpy(), rtol=1e-12)
