"""The finite-width recursions: Gaussian expectations against closed forms, the infinite-width
parts against ``spec.kernel``, the ReLU exact moments against their product formula and the
1/n expansion against the exact moments."""

from __future__ import annotations

import math

import pytest
import torch
from _finite_specs import inputs, mlp

from torchntk import finite
from torchntk import layers as L
from torchntk.errors import InvalidArgumentError, ShapeError, SpecError
from torchntk.finite._gauss import moments

K = torch.tensor([0.05, 0.3, 1.0, 2.5, 40.0], dtype=torch.float64)


def test_relu_expectations_closed_forms():
    # E[relu^2] = K/2, E[relu^4] = 3K^2/2, E[step] = 1/2: rounding only (the trapezoid rule
    # converges geometrically on each half-line), so 1e-13 relative
    m = moments(torch.relu, K)
    half = torch.full_like(K, 0.5)
    for name, (e, d1, d2) in {"g": (K / 2, half, 0 * K), "q4": (1.5 * K**2, 3 * K, 3 + 0 * K),
                              "h": (half, 0 * K, 0 * K), "r4": (half, 0 * K, 0 * K),
                              "m22": (K / 2, half, 0 * K)}.items():
        got = m[name]
        for a, b in zip(got, (e, d1, d2)):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13 / K.min().item() ** 2)


def test_erf_expectations_closed_forms_and_derivatives():
    # E[erf^2] = (2/pi) asin(2K/(1+2K)), E[erf'^2] = (4/pi)/sqrt(1+4K); derivatives by autograd
    # of the closed forms (an independent path)
    m = moments(torch.special.erf, K)
    k = K.clone().requires_grad_(True)
    for name, fn in {"g": lambda k: 2 / math.pi * torch.asin(2 * k / (1 + 2 * k)),
                     "h": lambda k: 4 / math.pi / torch.sqrt(1 + 4 * k)}.items():
        e = fn(k)
        d1 = torch.autograd.grad(e.sum(), k, create_graph=True)[0]
        d2 = torch.autograd.grad(d1.sum(), k)[0]
        for a, b in zip(m[name], (e.detach(), d1.detach(), d2)):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("act", [L.Relu, L.Erf, L.Gelu])
def test_infinite_width_parts_are_the_spec_kernel(act):
    spec = mlp(act, 4, 64, 1.4, 0.3)
    x = inputs()
    c = finite.corrections(spec, x)
    k = spec.kernel(x)
    # two float64 code paths (quadrature here, the layers' rules there): 1e-10
    torch.testing.assert_close(c.nngp_infinite, k.nngp.diagonal(), rtol=1e-10, atol=0)
    torch.testing.assert_close(c.ntk_infinite, k.ntk.diagonal(), rtol=1e-10, atol=0)
    assert c.nngp_mean.dtype == torch.float64 and c.ntk_variance.shape == (2,)


def test_relu_exact_identity_at_zero_bias():
    widths = (7, 16, 33, 100, 5)
    spec = mlp(L.Relu, len(widths) + 1, 8, 2**0.5, None)
    x = inputs(3)
    m2, m4 = finite.exact_nngp_moments(spec, x, width=widths)
    expected = math.prod(1 + 5 / n for n in widths)
    torch.testing.assert_close(m4 / (3 * m2 * m2), torch.full_like(m2, expected), rtol=1e-12, atol=0)
    torch.testing.assert_close(m2, spec.kernel(x).nngp.diagonal(), rtol=1e-12, atol=0)


def test_relu_exact_chain_against_direct_sampling():
    # the exact moments (with bias) against direct sampling of the scalar chain
    # G' = C_b + (C_W/n) sum_j relu(sqrt(G) xi_j)^2 (independent of the product formula)
    n, depth, cw, cb = 8, 4, 2.0, 0.25
    spec = mlp(L.Relu, depth, n, cw**0.5, cb**0.5)
    x = inputs(1)
    m2, m4 = finite.exact_nngp_moments(spec, x)
    gen = torch.Generator().manual_seed(3)
    S = 400_000
    G = torch.full((S,), cb + cw * float((x * x).mean()), dtype=torch.float64)
    for _ in range(depth - 1):
        xi = torch.randn(S, n, generator=gen, dtype=torch.float64)
        G = cb + cw / n * (torch.relu(G.sqrt()[:, None] * xi) ** 2).sum(1)
    # E[G^2] has a relative standard error sqrt(Var(G^2)/S)/E[G^2], about 0.4% here: 5 sigma = 2%
    torch.testing.assert_close(G.mean(), m2[0], rtol=5e-3, atol=0)
    torch.testing.assert_close(3 * (G * G).mean(), m4[0], rtol=2e-2, atol=0)


def test_one_over_n_expansion_against_exact_relu():
    # the 1/n cumulant differs from the exact one by O(1/n^2): doubling n quarters the gap
    x = inputs(1)
    gaps = []
    for n in (400, 800, 1600):
        spec = mlp(L.Relu, 5, n, 2**0.5, 0.3)
        m2, m4 = finite.exact_nngp_moments(spec, x)
        c = finite.corrections(spec, x, method="first_order")
        torch.testing.assert_close(c.nngp_mean, m2, rtol=1e-12, atol=0)  # ReLU: no 1/n shift
        gaps.append(float((m4 - 3 * m2 * m2 - c.nngp_cumulant4).abs() / c.nngp_cumulant4))
    # gap ~ c/n^2 relative to a 1/n quantity, i.e. ~ c'/n: halves per doubling (ratio 2 +- 5%)
    assert 1.9 < gaps[0] / gaps[1] < 2.1 and 1.9 < gaps[1] / gaps[2] < 2.1, gaps
    assert gaps[-1] < 0.01


@pytest.mark.parametrize("b_std", [None, 0.3])
def test_closure_is_exact_for_the_relu_nngp(b_std):
    # ReLU-family NNGP moments are quadratic in the kernel: the closure (mean and covariance
    # matched exactly) reproduces the exact finite-width moments, at widths as small as 3 and
    # depth 7, to rounding of a dozen float64 operations per layer (1e-12)
    widths = (3, 16, 5, 100, 8, 4)
    for act in (L.Relu(), L.LeakyRelu(0.2), L.Abs()):
        spec = L.serial(*[item for n in widths for item in (L.Dense(n, W_std=1.3, b_std=b_std), act)],
                        L.Dense(1, W_std=1.3, b_std=b_std))
        x = inputs(3)
        m2, m4 = finite.exact_nngp_moments(spec, x)
        c = finite.corrections(spec, x)
        torch.testing.assert_close(c.nngp_mean, m2, rtol=1e-12, atol=0)
        torch.testing.assert_close(c.nngp_cumulant4, m4 - 3 * m2 * m2, rtol=1e-12, atol=0)


@pytest.mark.parametrize("act", [L.Relu, L.Erf, L.Gelu])
def test_closure_reduces_to_the_first_order_at_large_width(act):
    # the two methods agree to O(1/n): their corrections differ by a relative O((L-1)/n)
    # (about 5 (L-1)/n for the compounding factors), checked at n = 20000 where that is < 1e-3
    x = inputs(2)
    spec = mlp(act, 4, 20000, 1.4, 0.2)
    c, f = finite.corrections(spec, x), finite.corrections(spec, x, method="first_order")
    torch.testing.assert_close(c.ntk_infinite, f.ntk_infinite, rtol=0, atol=0)
    for name in ("nngp_cumulant4", "ntk_variance"):
        torch.testing.assert_close(getattr(c, name), getattr(f, name), rtol=2e-3, atol=0)
    for mean, inf in (("nngp_mean", "nngp_infinite"), ("ntk_mean", "ntk_infinite")):
        # the shifts are O(1/n) = O(1e-5) of the kernel, and vanish for ReLU (to 1e-12 of the
        # kernel); where they do not, their relative gap is O(1/n): it halves when n doubles
        gaps = []
        for n in (20000, 40000):
            s = mlp(act, 4, n, 1.4, 0.2)
            cc, ff = finite.corrections(s, x), finite.corrections(s, x, method="first_order")
            shift_c, shift_f = getattr(cc, mean) - getattr(cc, inf), getattr(ff, mean) - getattr(ff, inf)
            torch.testing.assert_close(shift_c, shift_f, rtol=1e-2, atol=1e-12 * float(getattr(cc, inf).max()))
            gaps.append((shift_c - shift_f).abs().max() / shift_f.abs().max())
        if act is not L.Relu:
            assert 1.7 < gaps[0] / gaps[1] < 2.3, gaps


def test_closure_nodes_match_mean_and_variance():
    from torchntk.finite.closure import matched_nodes

    mean = torch.tensor([1.0, 0.3, 2.0, 5.0], dtype=torch.float64)
    var = torch.tensor([0.5, 1.0, 0.0, 100.0], dtype=torch.float64)
    X, w = matched_nodes(mean, var)
    assert (X > 0).all()
    m = (w * X).sum(-1)
    torch.testing.assert_close(m, mean, rtol=1e-13, atol=0)
    torch.testing.assert_close((w * (X - m[:, None]) ** 2).sum(-1), var, rtol=1e-12, atol=0)


def test_errors():
    x = inputs()
    with pytest.raises(SpecError):
        finite.corrections(L.serial(L.Dense(8), L.Dense(1)), x)
    with pytest.raises(SpecError):
        finite.corrections(L.serial(L.Dense(8, parameterization="standard"), L.Relu(), L.Dense(1)), x)
    with pytest.raises(SpecError):
        finite.corrections(L.serial(L.Dense(8), L.Relu(), L.Dense(1), L.Relu()), x)
    with pytest.raises(InvalidArgumentError):
        finite.corrections(mlp(L.Relu, 3, 8, 1.0, 0.1), x, width=(8,))
    with pytest.raises(InvalidArgumentError):
        finite.corrections(mlp(L.Relu, 3, 8, 1.0, 0.1), x, width=0)
    with pytest.raises(ShapeError):
        finite.corrections(mlp(L.Relu, 3, 8, 1.0, 0.1), x[:, :, None])
    with pytest.raises(SpecError):
        finite.exact_nngp_moments(mlp(L.Erf, 3, 8, 1.0, 0.1), x)
    with pytest.raises(InvalidArgumentError):
        finite.corrections("mlp", x)
    with pytest.raises(InvalidArgumentError, match="method"):
        finite.corrections(mlp(L.Relu, 3, 8, 1.0, 0.1), x, method="exact")
