"""Numerics of the analytic kernels: depth, zero inputs, gradients, symmetry and PSD, layouts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from torchntk import layers as L
from torchntk.nn import Conv2d


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _cnn_gap() -> L.Layer:
    return L.serial(
        L.Conv(8, (2, 2), padding="SAME", b_std=0.1), L.Relu(),
        L.Conv(8, (2, 2), strides=(1, 2), padding="VALID"), L.Erf(),
        L.GlobalAvgPool(), L.Dense(1),
    )


@pytest.mark.parametrize("W_std,act", [(1.0, L.Relu), (math.sqrt(2.0), L.Relu), (1.0, L.Erf)])
def test_depth_100_stays_finite_and_positive(W_std, act):
    layers: list[L.Layer] = []
    for _ in range(100):
        layers += [L.Dense(64, W_std=W_std, b_std=0.05), act()]
    spec = L.serial(*layers, L.Dense(1, W_std=W_std))
    k = spec.kernel(_x(5, 3))
    for t in (k.nngp, k.ntk):
        assert torch.isfinite(t).all()
        assert (torch.diagonal(t) > 0).all()
    # the NTK of a deep net grows about linearly with depth, it does not explode
    assert float(k.ntk.max()) < 1e4


def test_depth_100_without_bias_does_not_underflow_to_nan():
    spec = L.serial(*[m for _ in range(100) for m in (L.Dense(8), L.Relu())], L.Dense(1))
    k = spec.kernel(_x(4, 3))
    assert torch.isfinite(k.ntk).all() and torch.isfinite(k.nngp).all()
    assert (torch.diagonal(k.nngp) > 0).all()


def test_zero_norm_inputs_give_finite_kernels_and_gradients():
    x = _x(4, 3)
    x[1] = 0.0
    for spec in [
        L.serial(L.Dense(8), L.Relu(), L.Dense(8), L.Erf(), L.Dense(1)),
        L.serial(L.Dense(8), L.LayerNorm(), L.Relu(), L.Dense(1)),
    ]:
        x_ = x.clone().requires_grad_(True)
        k = spec.kernel(x_)
        assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all()
        assert float(k.nngp[1, 1].detach()) == 0.0
        (k.ntk.sum() + k.nngp.sum()).backward()
        assert torch.isfinite(x_.grad).all()
    img = torch.zeros(2, 1, 3, 3, dtype=torch.float64)
    img[1] = _x(1, 3, 3)
    k = _cnn_gap().kernel(img)
    assert torch.isfinite(k.ntk).all()


def test_gradcheck_wrt_inputs_mlp():
    spec = L.serial(L.Dense(8, b_std=0.2), L.Relu(), L.Dense(8, b_std=0.1), L.Erf(), L.Dense(1))
    x1 = _x(3, 2).requires_grad_(True)
    x2 = _x(2, 2, seed=1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: spec.kernel(a, b).ntk, (x1, x2))
    assert torch.autograd.gradcheck(lambda a: spec.kernel(a).nngp, (x1,))


def test_gradcheck_wrt_inputs_cnn_full_and_diagonal_layouts():
    x = _x(2, 1, 3, 3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: _cnn_gap().kernel(a).ntk, (x,))
    flat = L.serial(L.Conv(4, (2, 2), padding="CIRCULAR"), L.Relu(), L.Flatten(), L.Dense(1))
    assert torch.autograd.gradcheck(lambda a: flat.kernel(a).ntk, (x,))
    pooled = L.serial(L.Conv(4, (2, 2), padding="SAME"), L.Relu(), L.AvgPool((2, 2), padding="SAME"), L.Flatten())
    assert torch.autograd.gradcheck(lambda a: pooled.kernel(a).nngp, (x,))


@pytest.mark.parametrize("spec_fn,shape", [
    (lambda: L.serial(L.Dense(8, b_std=0.1), L.Relu(), L.Dense(8), L.Relu(), L.Dense(1)), (12, 3)),
    (_cnn_gap, (10, 2, 4, 5)),
])
def test_kernels_are_symmetric_and_psd(spec_fn, shape):
    k = spec_fn().kernel(_x(*shape), batch_size=3)
    for t in (k.nngp, k.ntk):
        torch.testing.assert_close(t, t.T, rtol=0, atol=1e-13)
        ev = torch.linalg.eigvalsh(t)
        assert float(ev.min()) > -1e-10 * float(ev.max())


def test_blocked_cnn_equals_one_block_and_cross_kernel():
    x = _x(7, 2, 4, 5)
    spec = _cnn_gap()
    one = spec.kernel(x, batch_size=100)
    blocked = spec.kernel(x, batch_size=2)
    torch.testing.assert_close(blocked.ntk, one.ntk, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(blocked.cov1, one.cov1)
    cross = spec.kernel(x[:3], x[3:], batch_size=2)
    torch.testing.assert_close(cross.nngp, one.nngp[:3, 3:], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(cross.cov2, torch.diagonal(one.nngp)[3:], rtol=1e-12, atol=1e-14)


def test_full_and_diagonal_layouts_agree_on_a_spatial_output():
    x = _x(3, 2, 5, 4)
    spec = L.serial(L.Conv(8, (3, 2), padding="SAME", b_std=0.1), L.Relu(), L.Conv(8, (2, 2), strides=2))
    diag = spec.kernel(x)
    full = spec.kernel(x, diagonal_spatial=False)
    assert diag.ntk.shape == (3, 3, 2, 2) and full.ntk.shape == (3, 3, 2, 2, 2, 2)
    d = torch.diagonal(torch.diagonal(full.ntk, dim1=2, dim2=3), dim1=2, dim2=3)
    torch.testing.assert_close(d, diag.ntk)
    # a network ending in Flatten never builds the full layout: the same kernel either way
    flat = L.serial(spec, L.Relu(), L.Flatten(), L.Dense(1))
    torch.testing.assert_close(flat.kernel(x).ntk, flat.kernel(x, batch_size=1).ntk)


@pytest.mark.parametrize("padding,strides", [("VALID", (1, 1)), ("SAME", (2, 1)), ("CIRCULAR", (1, 2)), ("SAME", (1, 1))])
def test_linear_conv_kernel_equals_patch_inner_products(padding, strides):
    # Sigma1[i, j, p, p'] = W^2 <patch_i(p), patch_j(p')> / (C k) + b^2, from the finite layer's padding
    x = _x(3, 2, 5, 4)
    W, b = 1.3, 0.4
    conv = Conv2d(2, 1, (3, 2), stride=strides, padding=padding.lower())
    patches = F.unfold(conv.pad_input(x), (3, 2), stride=strides)  # (N, C*k, P)
    exact = torch.einsum("icp,jcq->ijpq", patches, patches) * W**2 / 12 + b**2  # C k = 2 * 6
    spec = L.serial(L.Conv(7, (3, 2), strides=strides, padding=padding, W_std=W, b_std=b))
    k = spec.kernel(x, diagonal_spatial=False)
    ho, wo = k.nngp.shape[2], k.nngp.shape[4]
    ours = k.nngp.permute(0, 1, 2, 4, 3, 5).reshape(3, 3, ho * wo, ho * wo)
    torch.testing.assert_close(ours, exact, rtol=1e-12, atol=1e-12)
    # AvgPool and GlobalAvgPool of it are the matching averages of those inner products
    gap = L.serial(spec, L.GlobalAvgPool()).kernel(x)
    torch.testing.assert_close(gap.nngp, exact.mean(dim=(2, 3)), rtol=1e-12, atol=1e-12)
    flat = L.serial(spec, L.Flatten()).kernel(x)
    torch.testing.assert_close(flat.nngp, torch.diagonal(exact, dim1=2, dim2=3).mean(-1), rtol=1e-12, atol=1e-12)


def test_sum_pool_is_window_size_squared_times_avg_pool():
    x = _x(2, 1, 4, 4)
    base = L.serial(L.Conv(4, (2, 2), padding="SAME"), L.Relu())
    a = L.serial(base, L.AvgPool((2, 2), strides=(2, 2)), L.Flatten()).kernel(x)
    s = L.serial(base, L.SumPool((2, 2), strides=(2, 2)), L.Flatten()).kernel(x)
    torch.testing.assert_close(s.ntk, 16 * a.ntk)


def test_dropout_test_mode_is_identity_and_train_mode_scales_the_diagonal():
    x = _x(4, 3)
    base = L.serial(L.Dense(8, b_std=0.1), L.Relu())
    k0 = L.serial(base, L.Dense(1)).kernel(x)
    kt = L.serial(base, L.Dropout(0.5, mode="test"), L.Dense(1)).kernel(x)
    torch.testing.assert_close(kt.ntk, k0.ntk)
    kd = L.serial(base, L.Dropout(0.5), L.Dense(1)).kernel(x)
    off = ~torch.eye(4, dtype=torch.bool)
    torch.testing.assert_close(kd.nngp[off], k0.nngp[off])
    torch.testing.assert_close(torch.diagonal(kd.nngp), 2 * torch.diagonal(k0.nngp))
    assert isinstance(L.serial(base, L.Dropout(0.5)).module(3)[2], torch.nn.Dropout)


def test_fan_in_concat_weights_by_width():
    x = _x(3, 4)
    a, b = L.serial(L.Dense(8), L.Relu()), L.serial(L.Dense(8), L.Erf())
    ka, kb = L.serial(L.Dense(5), a).kernel(x), L.serial(L.Dense(5), b).kernel(x)
    spec = L.serial(L.Dense(5), L.FanOut(2), L.parallel(L.serial(a, L.Dense(3)), L.serial(b, L.Dense(1))), L.FanInConcat())
    k = spec.kernel(x)
    torch.testing.assert_close(k.nngp, 0.75 * ka.nngp + 0.25 * kb.nngp)
    net = spec.module(4)
    assert net(x.float()).shape == (3, 4)
