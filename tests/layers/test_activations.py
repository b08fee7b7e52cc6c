"""Nonlinearities of torchntk.layers: closed forms against quadrature, Monte Carlo and autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchntk import layers as L
from torchntk.errors import InvalidArgumentError
from torchntk.layers.activations._expectations import gaussian_expectations

F64 = torch.float64


def _grid() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Variances in [0.1, 3] and correlations over [-1, 1], with near-degenerate ones."""
    g = torch.Generator().manual_seed(0)
    n = 30
    q11 = torch.rand(n, generator=g, dtype=F64) * 2.9 + 0.1
    q22 = torch.rand(n, generator=g, dtype=F64) * 2.9 + 0.1
    corr = torch.rand(n, generator=g, dtype=F64) * 2 - 1
    special = torch.tensor([1.0, -1.0, 1 - 1e-12, -1 + 1e-12, 1 - 1e-6, 0.0, 0.5, -0.999], dtype=F64)
    corr = torch.cat([corr, special])
    q11 = torch.cat([q11, torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0, 0.2, 1.5], dtype=F64)])
    q22 = torch.cat([q22, torch.tensor([1.0, 0.5, 0.5, 2.0, 3.0, 0.3, 2.5, 1.5], dtype=F64)])
    q12 = corr * torch.sqrt(q11 * q22)
    return q11, q12, q22


CLOSED_FORMS = [
    L.Relu(),
    L.LeakyRelu(0.1),
    L.Abs(),
    L.ABRelu(-0.3, 2.0),
    L.Sign(),
    L.Erf(),
    L.Erf(a=2.0, b=0.7, c=0.3),
    L.Sigmoid_like(),
    L.Gelu(),
    L.Sin(a=1.3, b=0.8, c=0.4),
    L.Cos(a=1.0, b=1.5, c=0.2),
    L.Rbf(gamma=0.7),
    L.Exp(a=0.8, b=0.6),
    L.Gaussian(a=1.3, b=-0.4),
    L.Monomial(3),
    L.Polynomial([0.3, -1.0, 0.5, 0.2]),
]


@pytest.mark.parametrize("layer", CLOSED_FORMS, ids=repr)
def test_closed_form_equals_quadrature(layer):
    q11, q12, q22 = _grid()
    sigma, sdot = layer.rule(q11, q12, q22)
    qs, qd = gaussian_expectations(layer.fn, q11, q12, q22, degree=48)
    torch.testing.assert_close(sigma, qs, rtol=1e-6, atol=1e-11)
    if isinstance(layer, L.Sign):  # sdot is defined as 0 (autograd's derivative of sign)
        assert torch.equal(sdot, torch.zeros_like(sdot))
    torch.testing.assert_close(sdot, qd, rtol=1e-6, atol=1e-11)


def test_relu_rule_is_the_conventions_formula():
    q11, q12, q22 = _grid()
    sigma, sdot = L.Relu().rule(q11, q12, q22)
    s = np.sqrt(np.clip(q11.numpy() * q22.numpy() - q12.numpy() ** 2, 0, None))
    t = np.arctan2(s, q12.numpy())
    np.testing.assert_allclose(sigma.numpy(), (s + (np.pi - t) * q12.numpy()) / (2 * np.pi), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(sdot.numpy(), (np.pi - t) / (2 * np.pi), rtol=1e-14)
    # zero variance: t = pi/2, no NaN
    z = torch.zeros(3, dtype=F64)
    sigma0, sdot0 = L.Relu().rule(z, z, torch.ones(3, dtype=F64))
    assert torch.equal(sigma0, z) and torch.allclose(sdot0, torch.full_like(z, 0.25))


def test_quadrature_against_monte_carlo_samples():
    g = torch.Generator().manual_seed(1)
    q = torch.tensor([[1.2, 0.7], [0.7, 0.9]], dtype=F64)
    z = torch.randn(400_000, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(q).T
    for fn in (torch.tanh, torch.nn.functional.softplus):
        x = z.clone().requires_grad_(True)
        y = fn(x)
        (dy,) = torch.autograd.grad(y.sum(), x)
        y = y.detach()
        mc_sigma = (y[:, 0] * y[:, 1]).mean()
        mc_sdot = (dy[:, 0] * dy[:, 1]).mean()
        sigma, sdot = gaussian_expectations(fn, q[0, 0], q[0, 1], q[1, 1])
        assert abs(float(sigma) - float(mc_sigma)) < 5e-3
        assert abs(float(sdot) - float(mc_sdot)) < 5e-3


@pytest.mark.parametrize("method", ["polar", "hermite", "series", "auto"])
def test_quadrature_methods_agree_on_smooth_functions_and_broadcast(method):
    q11 = torch.tensor([[1.0], [2.0]], dtype=F64)  # (2, 1)
    q22 = torch.tensor([0.5, 1.0, 1.5], dtype=F64)  # (3,)
    q12 = 0.3 * torch.sqrt(q11 * q22)  # (2, 3)
    sigma, sdot = gaussian_expectations(torch.tanh, q11, q12, q22, method=method, degree=None if method == "auto" else 96)
    assert sigma.shape == sdot.shape == (2, 3)
    ref_s, ref_d = gaussian_expectations(torch.tanh, q11, q12, q22, method="polar", degree=128)
    torch.testing.assert_close(sigma, ref_s, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(sdot, ref_d, rtol=1e-6, atol=1e-9)


def test_polar_is_exact_for_relu_where_hermite_is_not():
    q11, q12, q22 = (torch.tensor(v, dtype=F64) for v in (1.0, -0.5, 1.0))
    exact = L.Relu().rule(q11, q12, q22)[0]
    polar = gaussian_expectations(torch.relu, q11, q12, q22, method="polar")[0]
    hermite = gaussian_expectations(torch.relu, q11, q12, q22, method="hermite", degree=24)[0]
    assert abs(float(polar - exact)) < 1e-12 * float(exact)
    assert abs(float(hermite - exact)) > 1e-4  # the kink costs the product rule accuracy


def test_auto_uses_the_series_for_smooth_functions_and_polar_for_kinks():
    q11, q12, q22 = _grid()
    from torchntk.layers.activations import _quadrature as Q

    assert Q._series(torch.tanh, q11, q12, q22, True, Q.SERIES)[2].all()  # converged at every pair
    assert not Q._series(torch.relu, q11, q12, q22, True, Q.SERIES)[2].any()
    # kinked: auto falls back to the polar rule, exact for ReLU
    torch.testing.assert_close(gaussian_expectations(torch.relu, q11, q12, q22)[0], L.Relu().rule(q11, q12, q22)[0], rtol=1e-10, atol=1e-13)
    # smooth: series and polar agree
    series = gaussian_expectations(torch.nn.functional.silu, q11, q12, q22, method="series")
    polar = gaussian_expectations(torch.nn.functional.silu, q11, q12, q22, method="polar", degree=96)
    torch.testing.assert_close(series, polar, rtol=1e-8, atol=1e-12)


def test_series_grad_matches_polar_grad():
    q = torch.tensor([1.3, 0.4, 0.7], dtype=F64, requires_grad=True)
    grads = []
    for method, degree in (("series", None), ("polar", 96)):
        sigma, sdot = gaussian_expectations(torch.tanh, q[0], q[1], q[2], method=method, degree=degree)
        grads.append(torch.autograd.grad(sigma + 2 * sdot, q)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-7, atol=1e-10)


def test_quadrature_degenerate_inputs_are_finite():
    z = torch.zeros(2, dtype=F64)
    one = torch.ones(2, dtype=F64)
    for fn in (torch.tanh, torch.relu, torch.nn.functional.gelu):
        for args in ((z, z, z), (z, z, one), (one, one, one), (one, -one, one)):
            sigma, sdot = gaussian_expectations(fn, *args)
            assert torch.isfinite(sigma).all() and torch.isfinite(sdot).all()
    # zero variance: sigma = phi(0) E[phi(v)]; softplus(0) = log 2
    sigma, _ = gaussian_expectations(torch.nn.functional.softplus, z, z, one)
    e_phi = gaussian_expectations(torch.nn.functional.softplus, one, one * 0, z)[0]  # E[phi(u)] phi(0)
    torch.testing.assert_close(sigma, e_phi)
    # correlation 1: E[tanh(u)^2]
    s_same, _ = gaussian_expectations(torch.tanh, one, one, one)
    s_ref, _ = gaussian_expectations(torch.tanh, one, one * (1 - 1e-13), one)
    torch.testing.assert_close(s_same, s_ref, rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    "layer",
    [L.Elementwise(torch.tanh), L.Elementwise(torch.tanh, method="hermite", degree=40), L.ElementwiseNumerical(torch.erf, 40)],
    ids=repr,
)
def test_elementwise_quadrature_matches_known_forms(layer):
    q11, q12, q22 = (torch.tensor(v, dtype=F64) for v in ([1.0, 0.6], [0.4, -0.5], [0.8, 0.6]))
    sigma, sdot = layer.rule(q11, q12, q22)
    ref = gaussian_expectations(layer.fn, q11, q12, q22, degree=128)
    torch.testing.assert_close(sigma, ref[0], rtol=2e-5, atol=1e-9)
    torch.testing.assert_close(sdot, ref[1], rtol=2e-5, atol=1e-9)


def test_elementwise_with_given_nngp_fn_derives_sdot_by_prices_theorem():
    erf = L.Erf()

    def nngp_fn(cov12, var1, var2):
        return erf.rule(var1, cov12, var2)[0]

    layer = L.Elementwise(torch.erf, nngp_fn)
    q11, q12, q22 = _grid()
    sigma, sdot = layer.rule(q11, q12, q22)
    ref_s, ref_d = erf.rule(q11, q12, q22)
    torch.testing.assert_close(sigma, ref_s)
    torch.testing.assert_close(sdot, ref_d)
    both = L.Elementwise(torch.erf, nngp_fn, lambda c, v1, v2: erf.rule(v1, c, v2)[1])
    torch.testing.assert_close(both.rule(q11, q12, q22)[1], ref_d)


def _mlp_kernel_fn(act: L.Layer):
    spec = L.serial(L.Dense(64, b_std=0.3), act, L.Dense(64, W_std=1.3, b_std=0.1), act, L.Dense(1))

    def k(x):
        out = spec.kernel(x)
        return out.nngp, out.ntk

    return k


@pytest.mark.parametrize("act", [L.Relu(), L.Erf(), L.Abs(), L.Gelu()], ids=repr)
def test_gradcheck_of_kernel_wrt_inputs(act):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, generator=g, dtype=F64)
    k = _mlp_kernel_fn(act)
    # a duplicate (correlation exactly 1) and a zero input: finite kernels and gradients. (The
    # ReLU NTK is only Hoelder-continuous in x2 at x2 = x1, so no finite-difference check there.)
    dup = torch.cat([x, x[:1], torch.zeros(1, 4, dtype=F64)]).requires_grad_(True)
    nngp, ntk = k(dup)
    assert torch.isfinite(nngp).all() and torch.isfinite(ntk).all()
    grads = torch.autograd.grad((nngp.sum() + ntk.sum()), dup)[0]
    assert torch.isfinite(grads).all()
    x = torch.cat([x, torch.zeros(1, 4, dtype=F64)]).requires_grad_(True)
    assert torch.autograd.gradcheck(k, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_at_exact_correlation_one_is_finite():
    # ReLU: d sigma / d q12 = sdot exactly, even at q12 = sqrt(q11 q22) where s = 0.
    q = torch.tensor([1.5, 1.5, 1.5], dtype=F64, requires_grad=True)
    sigma, sdot = L.Relu().rule(q[0], q[1], q[2])
    g = torch.autograd.grad(sigma, q)[0]
    assert torch.isfinite(g).all()
    assert abs(float(g[1]) - float(sdot.detach())) < 1e-15


@pytest.mark.parametrize("method, degree", [("series", 24), ("polar", 12)])
def test_quadrature_kernel_is_differentiable_wrt_inputs(method, degree):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, generator=g, dtype=F64, requires_grad=True)
    spec = L.serial(L.Dense(8, b_std=0.2), L.Elementwise(torch.tanh, method=method, degree=degree), L.Dense(1))
    assert torch.autograd.gradcheck(lambda z: spec.kernel(z).ntk, (x,), eps=1e-6, atol=1e-6)


def test_depth_100_relu_and_erf_stay_finite():
    x = torch.randn(4, 5, dtype=F64)
    x[0] = 0
    for act in (L.Relu(), L.Erf(), L.Gelu()):
        layers: list[L.Layer] = []
        for _ in range(100):
            layers += [L.Dense(16, W_std=math.sqrt(2) if isinstance(act, L.Relu) else 1.0, b_std=0.05), act]
        k = L.serial(*layers, L.Dense(1)).kernel(x)
        assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all()
        assert float(k.nngp.diagonal().min()) > 0


def test_sign_nngp_and_zero_ntk_rule():
    q11, q12, q22 = _grid()
    sigma, sdot = L.Sign().rule(q11, q12, q22)
    corr = (q12 / torch.sqrt(q11 * q22)).clamp(-1, 1)
    torch.testing.assert_close(sigma, 2 / math.pi * torch.asin(corr), rtol=1e-7, atol=1e-7)
    assert not sdot.any()


@pytest.mark.parametrize(
    "make",
    [
        lambda: L.Erf(a="x"),
        lambda: L.LeakyRelu(float("nan")),
        lambda: L.Rbf(0.0),
        lambda: L.Monomial(-1),
        lambda: L.Polynomial(["a"]),
        lambda: L.Elementwise("tanh"),
        lambda: L.Elementwise(torch.tanh, method="simpson"),
        lambda: L.Elementwise(torch.tanh, degree=1),
        lambda: L.Gelu(approximate="tanh"),
    ],
)
def test_bad_arguments_raise(make):
    with pytest.raises(InvalidArgumentError):
        make()


def test_non_elementwise_function_is_rejected():
    layer = L.Elementwise(lambda x: x.sum(-1))
    with pytest.raises(InvalidArgumentError, match="elementwise"):
        layer.rule(torch.ones(2, dtype=F64), torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64))


@pytest.mark.parametrize(
    "layer",
    [L.Relu(), L.LeakyRelu(0.2), L.Abs(), L.Erf(1.5, 0.5, 0.1), L.Gelu(), L.Sin(), L.Cos(), L.Rbf(0.5),
     L.Monomial(2), L.Polynomial([1.0, 0.5]), L.Sign(), L.Sigmoid_like()],
    ids=repr,
)
def test_finite_module_applies_fn(layer):
    x = torch.linspace(-2, 2, 9, dtype=F64)
    mod = layer.module(9)
    ref = {
        "Relu()": torch.relu(x),
        "Abs()": x.abs(),
        "Sign()": torch.sign(x),
        "Gelu()": torch.nn.functional.gelu(x),
    }.get(repr(layer))
    out = mod(x[None])[0]
    if ref is not None:
        torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out, layer.fn(x))
    if isinstance(layer, L.LeakyRelu):
        torch.testing.assert_close(out, torch.nn.functional.leaky_relu(x, 0.2))
