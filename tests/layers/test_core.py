"""Core recursion of torchntk.layers: Dense/serial kernels against direct implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import torchntk
from torchntk import layers as L
from torchntk.errors import ShapeError, SpecError

from _core_rules import InlineErf, InlineRelu, numpy_relu_ntk


def _mlp(depth: int, beta: float, act=InlineRelu, width: int = 512) -> L.Layer:
    mods: list[L.Layer] = []
    for _ in range(depth - 1):
        mods += [L.Dense(width, b_std=beta), act()]
    mods.append(L.Dense(1, b_std=beta))
    return L.serial(*mods)


def test_jacot_figure1_setting_matches_numpy_recursion():
    # unit-circle inputs, depth 4, beta = 0.1, as in Jacot et al. Fig. 1 (x0 = (1, 0))
    gamma = torch.linspace(-math.pi, math.pi, 51, dtype=torch.float64)
    x = torch.stack([torch.cos(gamma), torch.sin(gamma)], 1)
    k = _mlp(4, 0.1).kernel(x)
    sigma, theta = numpy_relu_ntk(x.numpy(), 4, 0.1)
    np.testing.assert_allclose(k.nngp.numpy(), sigma, rtol=1e-7, atol=1e-12)  # arccos loses digits near rho = 1
    np.testing.assert_allclose(k.ntk.numpy(), theta, rtol=1e-7, atol=1e-12)  # arccos loses digits near rho = 1
    # the curve Theta(x0, x(gamma)) peaks at gamma = 0 and is symmetric in gamma
    row = k.ntk[25]
    assert int(row.argmax()) == 25
    torch.testing.assert_close(row, row.flip(0))


def test_dense_affine_rule_and_standard_parameterization():
    x = torch.randn(4, 3, dtype=torch.float64)
    sig0 = x @ x.T / 3
    k = L.Dense(7, W_std=1.3, b_std=0.2).kernel(x)
    torch.testing.assert_close(k.nngp, 1.69 * sig0 + 0.04)
    torch.testing.assert_close(k.ntk, k.nngp)
    torch.testing.assert_close(k.cov1, torch.diagonal(k.nngp))
    ks = L.serial(L.Dense(7, W_std=1.3, b_std=0.2, parameterization="standard")).kernel(x)
    torch.testing.assert_close(ks.nngp, k.nngp)
    torch.testing.assert_close(ks.ntk, 3 * sig0 + 1.0)


def test_blocks_and_cross_kernel_agree_with_one_block():
    x1 = torch.randn(9, 4, dtype=torch.float64)
    x2 = torch.randn(5, 4, dtype=torch.float64)
    spec = _mlp(3, 0.1)
    full = spec.kernel(torch.cat([x1, x2]))
    k = spec.kernel(x1, block_size=2)
    torch.testing.assert_close(k.ntk, full.ntk[:9, :9])
    torch.testing.assert_close(k.cov1, torch.diagonal(full.nngp)[:9])
    kx = spec.kernel(x1, x2, block_size=3)
    torch.testing.assert_close(kx.ntk, full.ntk[:9, 9:])
    torch.testing.assert_close(kx.cov2, torch.diagonal(full.nngp)[9:])


def test_kernel_is_float64_on_input_device_and_top_level_name():
    k = _mlp(2, 0.1).kernel(torch.randn(3, 2))
    assert isinstance(k, torchntk.Kernel)
    assert k.nngp.dtype == torch.float64 and k.ntk.device == torch.device("cpu")
    assert _mlp(2, 0.1).kernel(torch.randn(3, 2), dtype=torch.float32).ntk.dtype == torch.float32


def test_nonlinearity_on_input_is_a_spec_error():
    with pytest.raises(SpecError, match="Gaussian"):
        L.serial(InlineRelu(), L.Dense(3)).kernel(torch.randn(3, 2))
    with pytest.raises(SpecError, match="Gaussian"):
        L.serial(L.Dense(3), InlineRelu(), InlineRelu()).kernel(torch.randn(3, 2))


def test_wrong_rank_inputs_are_shape_errors():
    spec = _mlp(2, 0.1)
    with pytest.raises(ShapeError, match="rank"):
        spec.kernel(torch.randn(3))
    with pytest.raises(ShapeError, match="per-sample"):
        spec.kernel(torch.randn(3, 2), torch.randn(3, 4))


def test_module_has_spec_widths_and_erf_kernel_runs():
    net = _mlp(3, 0.1, act=InlineErf, width=32).module(5)
    assert net(torch.randn(2, 5)).shape == (2, 1)
    assert net[0].weight.shape == (32, 5)
    k = _mlp(3, 0.1, act=InlineErf).kernel(torch.randn(4, 5))
    assert torch.isfinite(k.ntk).all()


def test_a_nonlinearity_after_a_concatenation_of_different_branches_mixes_the_branch_rules():
    """Concatenated channels are Gaussian with their own branch's covariance: Erf of the mixture is
    the mixture of the Erfs, sum_b w_b Erf(Sigma_b) (the averaged kernel was used before, 9-15%
    off Monte Carlo). Equal branches stay one Gaussian field."""
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = L.serial(L.Dense(16, W_std=2.0), L.Dense(8, W_std=1.0))
    b = L.serial(L.Dense(16, W_std=2.0), L.Dense(8, W_std=3.0))
    cat = L.serial(L.Dense(16, W_std=2.0), L.FanOut(2), L.parallel(L.Dense(8, W_std=1.0), L.Dense(8, W_std=3.0)),
                   L.FanInConcat(), L.Erf())
    k, ka, kb = cat.kernel(x), (a >> L.Erf()).kernel(x), (b >> L.Erf()).kernel(x)
    torch.testing.assert_close(k.nngp, 0.5 * ka.nngp + 0.5 * kb.nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(k.ntk, 0.5 * ka.ntk + 0.5 * kb.ntk, rtol=1e-12, atol=1e-14)
    averaged = (L.serial(L.Dense(16, W_std=2.0), L.Dense(8, W_std=5 ** 0.5)) >> L.Erf()).kernel(x)
    assert float((averaged.nngp - k.nngp).abs().max()) > 1e-3  # the old rule is measurably off
    # the mixture is not Gaussian: a second nonlinearity needs a Dense first
    with pytest.raises(SpecError, match="Gaussian"):
        (cat >> L.Relu()).kernel(x)
    same = L.serial(L.Dense(16), L.FanOut(2), L.parallel(L.Dense(8), L.Dense(8)), L.FanInConcat(), L.Erf())
    one = L.serial(L.Dense(16), L.Dense(16), L.Erf())
    torch.testing.assert_close(same.kernel(x).ntk, one.kernel(x).ntk, rtol=1e-12, atol=1e-14)
