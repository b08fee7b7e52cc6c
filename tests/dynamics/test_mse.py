"""The squared-loss closed form against scipy.linalg.expm, matrix powers and solves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchntk
from torchntk.dynamics import max_learning_rate, mse

from ._helpers import random_kernels, reference

D = torch.float64


def _data(n, m, o, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, o, generator=g, dtype=D), torch.randn(n, o, generator=g, dtype=D),
            torch.randn(m, o, generator=g, dtype=D))


@pytest.mark.parametrize("full", [False, True])
def test_gradient_flow_matches_expm(full):
    n, m, o = 9, 5, 3
    ktt, ktx, _ = random_kernels(n, m, o if full else None)
    y, f0, f0x = _data(n, m, o)
    pred = mse(ktt, y, f0_train=f0)
    ts = torch.tensor([0.0, 0.3, 2.0, 17.0], dtype=D)
    f_tr, f_te = pred(ts, ktx, f0x)
    assert f_tr.shape == (4, n, o) and f_te.shape == (4, m, o)
    for i, t in enumerate(ts.tolist()):
        ref_tr, ref_te = reference(ktt, ktx, y, f0, f0x, t=t)
        np.testing.assert_allclose(f_tr[i].numpy(), ref_tr, atol=1e-10, rtol=0)
        np.testing.assert_allclose(f_te[i].numpy(), ref_te, atol=1e-10, rtol=0)


@pytest.mark.parametrize("full", [False, True])
def test_gradient_descent_matches_matrix_power(full):
    n, m, o = 8, 4, 2
    ktt, ktx, _ = random_kernels(n, m, o if full else None, seed=3)
    y, f0, f0x = _data(n, m, o, seed=4)
    lr = 0.8 * max_learning_rate(ktt)
    pred = mse(ktt, y, f0_train=f0, learning_rate=lr)
    steps = [0, 1, 2, 7, 40]
    f_tr, f_te = pred(torch.tensor(steps, dtype=D), ktx, f0x)
    for i, k in enumerate(steps):
        ref_tr, ref_te = reference(ktt, ktx, y, f0, f0x, lr=lr, steps=k)
        np.testing.assert_allclose(f_tr[i].numpy(), ref_tr, atol=1e-10, rtol=0)
        np.testing.assert_allclose(f_te[i].numpy(), ref_te, atol=1e-10, rtol=0)


@pytest.mark.parametrize("full", [False, True])
def test_momentum_matches_heavy_ball_iteration(full):
    n, m, o = 7, 3, 2
    ktt, ktx, _ = random_kernels(n, m, o if full else None, seed=5)
    y, f0, f0x = _data(n, m, o, seed=6)
    mu, lr = 0.7, 0.5 * max_learning_rate(ktt)
    pred = mse(ktt, y, f0_train=f0, learning_rate=lr, momentum=mu)
    steps = [0, 1, 3, 25]
    f_tr, f_te = pred(torch.tensor(steps, dtype=D), ktx, f0x)
    kn = ktt.numpy() if not full else ktt.permute(0, 2, 1, 3).reshape(n * o, n * o).numpy()
    kx = ktx.numpy() if not full else ktx.permute(0, 2, 1, 3).reshape(m * o, n * o).numpy()
    shape = (lambda a: a.reshape(-1)) if full else (lambda a: a)
    f, fx = shape(f0.numpy().copy()), shape(f0x.numpy().copy())
    v, vx = np.zeros_like(f), np.zeros_like(fx)
    for k in range(max(steps) + 1):
        if k in steps:
            i = steps.index(k)
            np.testing.assert_allclose(f_tr[i].numpy(), f.reshape(n, o), atol=1e-10, rtol=0)
            np.testing.assert_allclose(f_te[i].numpy(), fx.reshape(m, o), atol=1e-10, rtol=0)
        grad = f - shape(y.numpy())  # torch.optim.SGD: v = mu v + g; theta -= lr v
        v = mu * v - lr / n * kn @ grad
        vx = mu * vx - lr / n * kx @ grad
        f, fx = f + v, fx + vx


@pytest.mark.parametrize("full", [False, True])
def test_infinite_time_is_kernel_regression(full):
    n, m, o = 10, 6, 2
    ktt, ktx, _ = random_kernels(n, m, o if full else None, seed=7)
    y, f0, f0x = _data(n, m, o, seed=8)
    f_tr, f_te = mse(ktt, y, f0_train=f0)(float("inf"), ktx, f0x)
    from ._helpers import flat
    kn, kx = flat(ktt), flat(ktx)
    vec = (lambda a: a.numpy().reshape(-1)) if full else (lambda a: a.numpy())
    want = vec(f0x) + kx @ np.linalg.solve(kn, vec(y) - vec(f0))
    np.testing.assert_allclose(f_te.numpy().reshape(want.shape), want, atol=1e-10, rtol=0)
    np.testing.assert_allclose(f_tr.numpy(), y.numpy(), atol=1e-10, rtol=0)
    # and the long-time limit of the flow agrees
    f_tr_long, f_te_long = mse(ktt, y, f0_train=f0)(1e7, ktx, f0x)
    np.testing.assert_allclose(f_te_long.numpy(), f_te.numpy(), atol=1e-8, rtol=0)


def test_diag_reg_relative_and_absolute():
    n, m = 8, 3
    ktt, ktx, _ = random_kernels(n, m)
    y = torch.randn(n, dtype=D, generator=torch.Generator().manual_seed(0))
    scale = float(ktt.diagonal().mean())
    rel = mse(ktt, y, diag_reg=0.1)(float("inf"), ktx)[1]
    ab = mse(ktt, y, diag_reg=0.1 * scale, diag_reg_mode="absolute")(float("inf"), ktx)[1]
    want = ktx.numpy() @ np.linalg.solve(ktt.numpy() + 0.1 * scale * np.eye(n), y.numpy())
    np.testing.assert_allclose(rel.numpy(), want, atol=1e-10)
    np.testing.assert_allclose(ab.numpy(), want, atol=1e-10)
    # finite t with the ridge: dynamics under Theta + reg I
    t = 3.0
    ref_tr, ref_te = reference(ktt + 0.1 * scale * torch.eye(n, dtype=D), ktx, y[:, None],
                               torch.zeros(n, 1, dtype=D), torch.zeros(m, 1, dtype=D), t=t)
    f_tr, f_te = mse(ktt, y, diag_reg=0.1)(t, ktx)
    np.testing.assert_allclose(f_tr.numpy(), ref_tr[:, 0], atol=1e-10)
    np.testing.assert_allclose(f_te.numpy(), ref_te[:, 0], atol=1e-10)


def test_shapes_scalar_time_and_1d_targets_and_batches():
    n, m = 6, 11
    ktt, ktx, _ = random_kernels(n, m, seed=2)
    y = torch.randn(n, dtype=D)
    pred = mse(ktt, y, block_size=4)
    f_tr, f_te = pred(1.5, ktx)
    assert f_tr.shape == (n,) and f_te.shape == (m,)
    f_tr2, f_te2 = mse(ktt, y)(torch.tensor([1.5, float("inf")]), ktx)
    assert f_tr2.shape == (2, n) and f_te2.shape == (2, m)
    torch.testing.assert_close(f_te2[0], f_te, atol=1e-12, rtol=0)
    assert pred(1.5)[1] is None
    # times in any order, duplicates allowed
    ts = torch.tensor([5.0, 0.0, float("inf"), 5.0])
    out = pred(ts, ktx)[1]
    torch.testing.assert_close(out[0], out[3])
    torch.testing.assert_close(out[1], torch.zeros(m, dtype=D))


def test_numpy_and_float32_inputs_become_float64():
    n = 5
    ktt, ktx, _ = random_kernels(n, 2)
    y = np.random.default_rng(0).normal(size=(n, 2))
    f_tr, f_te = mse(ktt.numpy(), y)(np.array([0.5, 1.0]), ktx.numpy())
    assert f_tr.dtype == torch.float64 and f_te.shape == (2, 2, 2)
    f32 = mse(ktt.float(), torch.as_tensor(y).float())(0.5)[0]
    assert f32.dtype == torch.float64
    torch.testing.assert_close(f32, f_tr[0], atol=1e-5, rtol=1e-5)


def test_tiny_negative_eigenvalues_are_clamped():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 3, dtype=D, generator=g)
    k = a @ a.T  # rank 3: eigenvalues at round-off level, some negative
    lam, q = torch.linalg.eigh(k)
    k = q @ torch.diag(torch.where(lam < 1e-6, -1e-12 * torch.ones_like(lam), lam)) @ q.T
    pred = mse(k, torch.randn(8, dtype=D, generator=g))
    assert float(pred.eigenvalues.min()) == 0.0
    # zero modes do not move: the residual keeps its null-space part at any time
    f_tr, _ = pred(torch.tensor([0.0, 1e9]))
    assert torch.isfinite(f_tr).all()
    # t = inf on a singular kernel falls back to the pseudo-inverse
    f_inf, f_x = pred(float("inf"), k[:2])
    torch.testing.assert_close(f_inf, f_tr[1], atol=1e-8, rtol=0)


def test_bad_inputs_raise_torchntk_errors():
    ktt, ktx, _ = random_kernels(4, 2)
    y = torch.randn(4, dtype=D)
    with pytest.raises(torchntk.ShapeError, match="ntk_train_train"):
        mse(torch.randn(4, 3, dtype=D), y)
    with pytest.raises(torchntk.ShapeError, match="ntk_train_train"):
        mse(torch.randn(4, 4, 2), y)
    with pytest.raises(torchntk.ShapeError, match="y_train"):
        mse(ktt, torch.randn(5))
    bad = ktt.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(torchntk.NonFiniteError, match="ntk_train_train"):
        mse(bad, y)
    with pytest.raises(torchntk.NonFiniteError, match="y_train"):
        mse(ktt, torch.tensor([1.0, float("inf"), 0, 0]))
    with pytest.raises(torchntk.InvalidArgumentError, match="`t`"):
        mse(ktt, y)(-1.0)
    with pytest.raises(torchntk.InvalidArgumentError, match="positive semi-definite"):
        mse(-ktt, y)(1.0)
    with pytest.raises(torchntk.InvalidArgumentError, match="symmetric"):
        mse(ktt + torch.triu(torch.ones(4, 4, dtype=D)), y)
    with pytest.raises(torchntk.InvalidArgumentError, match="diag_reg_mode"):
        mse(ktt, y, diag_reg=0.1, diag_reg_mode="trace")
    with pytest.raises(torchntk.InvalidArgumentError, match="diag_reg"):
        mse(ktt, y, diag_reg=-1.0)
    with pytest.raises(torchntk.InvalidArgumentError, match="learning_rate"):
        mse(ktt, y, learning_rate=0.0)
    with pytest.raises(torchntk.InvalidArgumentError, match="momentum"):
        mse(ktt, y, momentum=0.9)
    with pytest.raises(torchntk.InvalidArgumentError, match="whole numbers"):
        mse(ktt, y, learning_rate=0.1)(1.5)
    with pytest.raises(torchntk.ShapeError, match="ntk_test_train"):
        mse(ktt, y)(1.0, torch.randn(2, 3, dtype=D))
    with pytest.raises(torchntk.ShapeError, match="f0_test"):
        mse(ktt, y)(1.0, ktx, torch.randn(3, dtype=D))
    with pytest.raises(torchntk.InvalidArgumentError, match="f0_test"):
        mse(ktt, y)(1.0, None, torch.randn(2, dtype=D))
    with pytest.raises(torchntk.InvalidArgumentError, match="ntk_train_train"):
        mse("kernel", y)
    ftt, _, _ = random_kernels(4, 2, 3)
    with pytest.raises(torchntk.ShapeError, match="y_train"):
        mse(ftt, torch.randn(4, 2, dtype=D))


def test_neural_tangents_time_unit():
    """Our time t is neural-tangents' t_nt / O; a learning rate eta is eta_nt / O.

    Checked here without the peer: the peer's loss (1/(2 N O)) sum ||f - y||^2 gives
    df/dt_nt = -(1/(N O)) Theta (f - y); integrating that for t_nt = O t must equal ours at t.
    """
    n, o = 6, 4
    ktt, _, _ = random_kernels(n, 0, seed=9)
    y = torch.randn(n, o, dtype=D)
    t = 2.5
    import scipy.linalg as sl
    peer_style = sl.expm(-(o * t) * ktt.numpy() / (n * o)) @ (-y.numpy()) + y.numpy()
    np.testing.assert_allclose(mse(ktt, y)(t)[0].numpy(), peer_style, atol=1e-12)


def test_gpu_tensors_keep_their_device():
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    ktt, ktx, _ = random_kernels(6, 3)
    y = torch.randn(6, 2, dtype=D)
    f_tr, f_te = mse(ktt.cuda(), y.cuda())(torch.tensor([0.0, 1.0, float("inf")]), ktx.cuda())
    assert f_tr.is_cuda and f_te.is_cuda
    ref = mse(ktt, y)(torch.tensor([0.0, 1.0, float("inf")]), ktx)
    torch.testing.assert_close(f_te.cpu(), ref[1], atol=1e-10, rtol=0)
