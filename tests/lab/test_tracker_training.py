"""DriftTracker and the full-batch trainer against direct computations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import torchntk
from torchntk.errors import DriftWarning, InvalidArgumentError, ShapeError
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


def _train_with_tracker(width, lr, steps, seed=0, **kw):
    """Full-batch gradient descent on C = (1/2N) sum (f - y)^2 with a tracker on the training points,
    whose prediction is the linearized network (its own empirical NTK at initialization)."""
    gen = torch.Generator().manual_seed(seed)
    net = MLP(2, [width, width], 1, generator=gen).double()
    x = torch.randn(8, 2, dtype=torch.float64, generator=gen)
    y = torch.randn(8, 1, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        f0 = net(x)
    pred = torchntk.dynamics.mse(torchntk.empirical_ntk(net, x, mode="mean"), y, f0_train=f0, learning_rate=lr)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with DriftTracker(net, x, y, every=5, prediction=lambda k: pred(float(k))[0], **kw) as tr:
            for _ in range(steps):
                opt.zero_grad()
                (0.5 * ((net(x) - y) ** 2).sum() / 8).backward()
                opt.step()
                tr.step()
    return tr, [w for w in caught if issubclass(w.category, DriftWarning)]


def test_tracker_alarm_flags_the_step_where_the_network_leaves_the_kernel_regime():
    # wide and gentle: the kernel barely moves and the network follows its linearization
    wide, warned = _train_with_tracker(1024, 0.5, 40)
    assert wide.alarm is None and not warned
    assert wide.history["gap"][0] < 1e-12 and max(wide.history["gap"]) < 0.05
    # narrow with a large step: the kernel moves by more than the limit
    narrow, warned = _train_with_tracker(8, 2.0, 60, drift_limit=0.1, gap_limit=10.0)
    assert narrow.alarm is not None and narrow.alarm["reason"] == "drift" and len(warned) == 1
    first = next(s for s, d in zip(narrow.history["step"], narrow.history["drift"]) if d > 0.1)
    assert narrow.alarm["step"] == first and f"step {first}" in str(warned[0].message)
    # the same run judged by the gap to the prediction only
    gapped, warned = _train_with_tracker(8, 2.0, 60, drift_limit=None, gap_limit=0.05)
    assert gapped.alarm is not None and gapped.alarm["reason"] == "gap" and len(warned) == 1
    first = next(s for s, g in zip(gapped.history["step"], gapped.history["gap"]) if g > 0.05)
    assert gapped.alarm["step"] == first
    with pytest.raises(InvalidArgumentError, match="drift_limit"):
        DriftTracker(MLP(2, [8], 1), torch.randn(4, 2), drift_limit=0)
