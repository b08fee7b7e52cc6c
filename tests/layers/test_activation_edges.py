"""Nonlinearities at their edges: inputs too large to represent, the diagonal at huge
variances, parameters at the limits of their ranges, polynomials of high degree."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from torchntk import layers as L
from torchntk.errors import AccuracyWarning, NonFiniteError, SpecError
from torchntk.features import FeatureMap

F64, F32 = torch.float64, torch.float32
X = torch.tensor([[1.0, 0.5], [0.3, -1.0], [2.0, 2.0]], dtype=F64)


def _spec(act: L.Layer) -> L.Layer:
    return L.serial(L.Dense(8, b_std=None), act, L.Dense(1, b_std=None))


@pytest.mark.parametrize("act", [L.Relu(), L.LeakyRelu(0.1), L.Erf(), L.Gelu(), L.Sin(), L.RectifiedMonomial(2)], ids=repr)
@pytest.mark.parametrize("scale,dtype", [(1e160, F64), (1e20, F32)])
def test_overflowing_input_covariance_raises_naming_the_layer(act, scale, dtype):
    # x.x'/n0 at input norms 1e160 (float64) or 1e20 (float32) overflows to inf before the
    # first nonlinearity; Relu, LeakyRelu, Erf and Gelu used to recurse without end
    # (RecursionError) in the scaled forms, through spec.kernel and FeatureMap alike
    x = X * scale
    with pytest.raises(NonFiniteError, match=f"{type(act).__name__}.*inf"):
        _spec(act).kernel(x, dtype=dtype)
    if dtype == F64 and isinstance(act, (L.ABRelu, L.Erf, L.Gelu)):  # the rules FeatureMap calls directly
        with pytest.raises(NonFiniteError, match="inf"):
            FeatureMap(_spec(act), 32, seed=0)(x)


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("act", [L.Erf(), L.Gelu()], ids=repr)
def test_diagonal_at_huge_variances_matches_the_closed_form(act, dtype):
    # On the diagonal q12 = q11 = q22 (the same bits): the determinant q11 q22 - q12^2 must be
    # exactly 0. A fused multiply-add made it a rounding error of q^2, which swamps 1 + 4 q once
    # q > 1/u: Erf's NTK diagonal was 3x off at input scale 1e9 (float64) and 2x at 1e4
    # (float32). Reference: the docstring formulas at correlation 1 in 1000-digit arithmetic.
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 1000  # Gelu's docstring form cancels q^4 against q^4 (q up to 1e200)
    tol = 1e-12 if dtype == F64 else 1e-5  # a few ulp of each (relative) through two affine maps
    for scale in ([1e4, 1e9, 1e40, 1e100] if dtype == F64 else [1e2, 1e4, 1e8]):
        k = _spec(act).kernel(X * scale, dtype=dtype)
        for i in range(3):
            q = mpmath.mpf(float(X[i] @ X[i])) * mpmath.mpf(scale) ** 2 / 2
            if isinstance(act, L.Erf):
                sigma = (2 / mpmath.pi) * mpmath.asin(2 * q / (1 + 2 * q))
                sdot = (4 / mpmath.pi) / mpmath.sqrt(1 + 4 * q)
            else:
                p, d = 1 + q, 1 + 2 * q
                orthant = mpmath.mpf(1) / 4 + mpmath.asin(q / p) / (2 * mpmath.pi)
                sigma = q * orthant + (q * q + q * q * (1 - q * q) / (p * p)) / (2 * mpmath.pi * mpmath.sqrt(d))
                sdot = orthant + q * (2 / p) / (2 * mpmath.pi * mpmath.sqrt(d)) + q / (2 * mpmath.pi * d * mpmath.sqrt(d))
            ntk = q * sdot + sigma  # Theta' = Theta * sdot with Theta = q, then the last Dense adds Sigma'
            assert abs(float(k.ntk[i, i]) / float(ntk) - 1) < tol, (scale, i)
            assert abs(float(k.nngp[i, i]) / float(sigma) - 1) < tol, (scale, i)


# -- parameters at their edges ---------------------------------------------------------------


def test_gaussian_with_positive_b_beyond_convergence_raises_naming_b():
    # E[exp(b u^2) exp(b v^2)] is infinite once 2 b lambda_max(Q) >= 1: it used to be NaN
    for b in (1.0, 0.1):
        with pytest.raises(SpecError, match="`b`"):
            _spec(L.Gaussian(b=b)).kernel(X)
    k = _spec(L.Gaussian(b=0.1)).kernel(X * 0.3)  # variances <= 0.36 < 1 / (2 b) = 5: finite
    assert torch.isfinite(k.ntk).all()


@pytest.mark.parametrize("b", [-3.0, -0.2, 0.0, 0.3])
def test_gaussian_rule_matches_quadrature(b):
    # scipy's adaptive 2-D quadrature of the Gaussian density (tolerance 1e-10 absolute) on
    # [-30, 30]^2: for b = 0.3 the integrand decays as exp(-0.15 u^2), below e^-130 beyond
    integrate = pytest.importorskip("scipy.integrate")
    import numpy as np

    q11, q12, q22, a = 0.7, 0.3, 1.1, 1.3
    prec = np.linalg.inv(np.array([[q11, q12], [q12, q22]]))
    norm = 2 * math.pi * math.sqrt(q11 * q22 - q12 * q12)

    def expect(f):
        return integrate.dblquad(
            lambda v, u: f(u) * f(v) * math.exp(-0.5 * (prec[0, 0] * u * u + 2 * prec[0, 1] * u * v + prec[1, 1] * v * v)) / norm,
            -30, 30, -30, 30, epsabs=1e-10, epsrel=1e-10)[0]

    sigma, sdot = L.Gaussian(a=a, b=b).rule(*(torch.tensor(t, dtype=F64) for t in (q11, q12, q22)))
    assert abs(float(sigma) - expect(lambda u: a * math.exp(b * u * u))) < 1e-8
    assert abs(float(sdot) - expect(lambda u: 2 * a * b * u * math.exp(b * u * u))) < 1e-8


def test_gaussian_narrow_bump_is_finite_and_matches_the_formula():
    # the scaled form c^2 (1/c^2 + S/c + D) against a 60-digit evaluation of the docstring's
    # product form, from a narrow bump (b = -1e70, near the parameter limit, where the product
    # form is ~1e140) to a wide one: a few roundings, 1e-13 relative
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    for b in (-1e70, -1e3, -1e-3):
        q11, q12, q22 = 0.7, 0.3, 1.1
        sigma, sdot = L.Gaussian(b=b).rule(*(torch.tensor(t, dtype=F64) for t in (q11, q12, q22)))
        bb = mpmath.mpf(b)
        det = (1 - 2 * bb * q11) * (1 - 2 * bb * q22) - 4 * bb * bb * mpmath.mpf(q12) ** 2
        assert abs(float(sigma) / float(1 / mpmath.sqrt(det)) - 1) < 1e-13
        assert abs(float(sdot) / float(4 * bb * bb * q12 / det**1.5) - 1) < 1e-13


@pytest.mark.parametrize("make", [
    lambda: L.Erf(b=1e200), lambda: L.Erf(a=1e76), lambda: L.ABRelu(1e200, 1.0), lambda: L.LeakyRelu(-1e80),
    lambda: L.Sin(a=1e200), lambda: L.Cos(b=-1e100), lambda: L.Exp(b=-1e200), lambda: L.Gaussian(a=1e200),
    lambda: L.Rbf(gamma=1e200), lambda: L.Polynomial([1.0, 1e100]),
])
def test_parameters_beyond_the_limit_raise_spec_error(make):
    # their squares (or fourth powers) overflowed Python floats inside the rules: a raw
    # OverflowError from spec.kernel
    with pytest.raises(SpecError, match="1e\\+75"):
        make()


# -- polynomials of high degree ----------------------------------------------------------------


def _t(*v: float) -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor(x, dtype=F64) for x in v)


@pytest.mark.parametrize("n", [30, 60])
def test_hermite_high_degree_matches_exact_quadrature(n):
    # math.factorial(30) times a tensor used to raise OverflowError. Reference: tensor-product
    # Gauss-Hermite (numpy's nodes) with n + 2 nodes per axis, exact for the degree-2n
    # polynomial h_n(u) h_n(v) (u = a z1, v = c z1 + d z2), with h_n by numpy's recurrence in
    # float64: rounding of order 1e-14 of sum |w h_n h_n|, the Cauchy-Schwarz scale
    # sqrt(sigma(q11) sigma(q22)) the errors are measured against (1e-10 leaves margin for the
    # alternating sum over j when (q11 - 1)(q22 - 1) < 0)
    import numpy as np
    from numpy.polynomial import hermite_e

    q11, q12, q22 = 0.7, 0.3, 1.3
    z, w = hermite_e.hermegauss(n + 2)
    w = w / w.sum()
    a = math.sqrt(q11)
    c, d = q12 / a, math.sqrt(q22 - q12 * q12 / q11)
    u, v = a * z[:, None], c * z[:, None] + d * z[None, :]
    ww = w[:, None] * w[None, :]

    def h(m, x):  # orthonormal h_m by the three-term recurrence
        prev, cur = np.zeros_like(x), np.ones_like(x)
        for k in range(m):
            prev, cur = cur, (x * cur - math.sqrt(k) * prev) / math.sqrt(k + 1)
        return cur

    layer = L.Hermite(n)
    sigma, sdot = layer.rule(*_t(q11, q12, q22))
    d1, d2 = layer.rule(*_t(q11, q11, q11)), layer.rule(*_t(q22, q22, q22))
    ref = float((ww * h(n, u) * h(n, v)).sum())
    dref = n * float((ww * h(n - 1, u) * h(n - 1, v)).sum())
    assert abs(float(sigma) - ref) < 1e-10 * math.sqrt(float(d1[0] * d2[0]))
    assert abs(float(sdot) - dref) < 1e-10 * math.sqrt(float(d1[1] * d2[1]))


@pytest.mark.parametrize("n", [30, 171, 250])
def test_hermite_at_unit_variance_is_mehler_and_the_network_is_finite(n):
    # Hermite(171) used to fail in its constructor (171! is beyond float64); at unit variances
    # the rule is q12^n and sdot = n q12^(n-1) (Mehler). A few ulp per Horner step: 1e-12.
    rho = torch.tensor([-0.9, -0.3, 0.0, 0.5, 0.99, 1.0], dtype=F64)
    one = torch.ones_like(rho)
    sigma, sdot = L.Hermite(n).rule(one, rho, one)
    torch.testing.assert_close(sigma, rho**n, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(sdot, n * rho ** (n - 1), rtol=1e-12, atol=1e-300)
    k = L.serial(L.Dense(16), L.LayerNorm(), L.Hermite(n), L.Dense(1)).kernel(X)
    assert torch.isfinite(k.ntk).all() and torch.isfinite(k.nngp).all()
    net = L.serial(L.Dense(16), L.Hermite(n), L.Dense(1)).module(2, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.isfinite(net(X)).all()


@pytest.mark.parametrize("n", [30, 100, 150])
def test_monomial_high_degree_matches_the_moments(n):
    # E[u^(2n)] = (2n - 1)!! q^n on the diagonal and E[u^n] E[v^n] = ((n - 1)!!)^2 (q11 q22)^(n/2)
    # (even n) at q12 = 0: Isserlis' theorem, an independent closed form, in 40-digit arithmetic.
    # Each of the n / 2 + 1 positive terms is exact to a few ulp: 1e-12 relative.
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    q11, q22 = 0.9, 1.2
    diag = L.Monomial(n).rule(*_t(q11, q11, q11))[0]
    assert abs(float(diag) / float(mpmath.fac2(2 * n - 1) * mpmath.mpf(q11) ** n) - 1) < 1e-12
    zero = L.Monomial(n).rule(*_t(q11, 0.0, q22))[0]
    assert abs(float(zero) / float(mpmath.fac2(n - 1) ** 2 * (mpmath.mpf(q11) * q22) ** (n // 2)) - 1) < 1e-12


def test_polynomial_kernels_beyond_float64_raise_naming_the_layer():
    # Hermite(6) twice at input scale 1e4: the second layer's variance is ~1e48, its kernel
    # ~1e288 times 15!!-sized constants: not representable, used to be inf/NaN silently
    spec = L.serial(L.Dense(8), L.Hermite(6), L.Dense(8), L.Hermite(6), L.Dense(1))
    with pytest.raises(NonFiniteError, match="Hermite\\(degree=6\\)"):
        spec.kernel(X * 1e4)
    for make in (lambda: L.Hermite(251), lambda: L.Monomial(400), lambda: L.Polynomial([1.0] * 252)):
        with pytest.raises(SpecError, match="250"):
            make()


# -- tiny variances ----------------------------------------------------------------------------


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("act", [L.ExpNormalized(), L.ExpNormalized(gamma=0.8, shift=-0.5), L.Gabor()], ids=repr)
def test_tiny_inputs_match_the_finite_network(act):
    # input scale 1e-8 (variances ~1e-16): ExpNormalized clamped q11 q22 (~1e-32) at its
    # tolerance 1e-30 where the network clamps each variance (3.5x off); Gabor's difference of two
    # exponentials cancelled (35% off, indefinite). Monte Carlo: 24 draws of width 512 with 32
    # outputs (the NTK's relative error ~0.02, the NNGP's ~0.06: the outputs of a draw share its
    # hidden layer), bound 0.1
    x = _randn(3, 3, seed=11) * 1e-8
    spec = L.serial(L.Dense(512, b_std=None), act, L.Dense(32, b_std=None))
    k = spec.kernel(x)
    est = L.monte_carlo_kernel(spec, x, n_samples=24, seed=0)
    for a, b in ((est.ntk, k.ntk), (est.nngp, k.nngp)):
        assert float((a - b).norm() / b.norm()) < 0.1


@pytest.mark.parametrize("act", [L.ExpNormalized(), L.ExpNormalized(gamma=2.0, shift=0.3, do_clip=True)], ids=repr)
def test_exp_normalized_is_homogeneous_at_every_scale(act):
    # Sigma'(c x, c x') = c^2 Sigma'(x, x') (degree 1 in the covariance) for variances above the
    # clamp 1e-30; with the default shift Sigma'(x, x) = q. Powers of ten round once per
    # product: 1e-12 relative.
    x = _randn(4, 3, seed=2)
    spec = L.serial(L.Dense(8, b_std=None), act, L.Dense(1, b_std=None))
    ref = spec.kernel(x)
    for c in (1e-8, 1e-4, 1e4, 1e8):
        k = spec.kernel(x * c)
        torch.testing.assert_close(k.nngp / c**2, ref.nngp, rtol=1e-12, atol=0)
        torch.testing.assert_close(k.ntk / c**2, ref.ntk, rtol=1e-12, atol=0)
    q = (x * x).mean(1) * 1e-16
    sigma, _ = L.ExpNormalized().rule(q, q, q)
    torch.testing.assert_close(sigma, q, rtol=1e-14, atol=0)


def test_gabor_matches_high_precision_values_at_tiny_variances():
    # the docstring's difference form exp(-m_-) - exp(-m_+) in 50-digit arithmetic (and its
    # derivative in q12 by mpmath.diff) against the sinh form in float64: 1e-12 relative. Up to
    # variance 1e300, where q11 q22 overflowed (NonFiniteError; the kernel is ~1e-150)
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50

    def exact(a, b, c):
        a, b, c = mpmath.mpf(a), mpmath.mpf(b), mpmath.mpf(c)
        s, det = a + c, max(a * c - b * b, 0)
        d = 1 + 2 * s + 4 * det
        return (mpmath.exp(-(s + 4 * det - 2 * b) / (2 * d)) - mpmath.exp(-(s + 4 * det + 2 * b) / (2 * d))) / (2 * mpmath.sqrt(d))

    for q in (1e-16, 1e-12, 1e-8, 1e-3, 1.0, 30.0, 1e20, 1e160, 1e300):
        for rho in (-0.9, 0.2, 0.999):
            q11, q22 = q, 1.7 * q
            q12 = rho * math.sqrt(q11) * math.sqrt(q22)
            sigma, sdot = L.Gabor().rule(*_t(q11, q12, q22))
            ex = exact(q11, q12, q22)  # off the diagonal at huge variances: below 1e-308 (0.0)
            assert abs(float(sigma) - ex) <= 1e-12 * abs(ex) + 1e-300, (q, rho)
            dref = mpmath.diff(lambda b: exact(q11, b, q22), q12, h=mpmath.mpf(q12) * mpmath.mpf(10) ** -20)
            assert abs(float(sdot) - dref) <= 1e-10 * abs(dref) + 1e-300, (q, rho)


@pytest.mark.parametrize("act", [L.Sign(), L.RectifiedMonomial(0), L.RectifiedMonomial(1), L.RectifiedMonomial(2),
                                 L.Elementwise(torch.sign)], ids=repr)
@pytest.mark.parametrize("scale", [1e-100, 1e-80, 1e80, 1e100, 1e150])
def test_angle_rules_homogeneous_beyond_the_safe_range(act, scale):
    # the angle t = atan2(sqrt(q11 q22 - q12^2), q12) once q11 q22 overflowed (NaN, taken as
    # 0) or underflowed (0): every angle was 0 and Sign's kernel 0.94 off, silently. The rules
    # are positively homogeneous (degree n in the covariance; sign and RectifiedMonomial(0) of
    # degree 0, Elementwise(sign) by quadrature too): the kernel at scale c is c^(2n) times
    # the kernel at 1. Power-of-two rescaling is exact; powers of ten round once per
    # product: 1e-12 relative (RectifiedMonomial(2) only where c^4 fits float64)
    n = act.degree if isinstance(act, L.RectifiedMonomial) else 0
    if n == 2 and not 1e-75 < scale < 1e75:
        pytest.skip("the kernel ~ scale^4 is beyond float64 (or subnormal)")
    x = _randn(5, 3, seed=4)
    spec = L.serial(L.Dense(8, b_std=None), act, L.Dense(1, b_std=None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AccuracyWarning)
        k, ref = spec.kernel(x * scale), spec.kernel(x)
    c = scale ** (2 * n)
    torch.testing.assert_close(k.nngp / c, ref.nngp, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("act", [L.RectifiedMonomial(0), L.Sign(), L.RectifiedMonomial(1)], ids=repr)
@pytest.mark.parametrize("depth", [1, 2])
def test_degree_zero_arc_cosine_kernels_psd_on_near_duplicates(act, depth):
    # 5 points, 8 copies each perturbed by 1e-12 (relative): the angle of two copies was the
    # square root of the determinant's rounding noise (~1e-8, different per pair) and the
    # kernel indefinite (min eigenvalue -3.6e-10 of the largest, -1.8e-6 through two layers; the
    # battery's -1.1e-7 against 1.7). With the noise subtracted the copies are exact duplicates:
    # PSD to rounding, 1e-14 of the largest eigenvalue (40 entries of a few ulp each, Weyl).
    # RectifiedMonomial(1)'s NTK holds the degree-0 kernel (its sdot).
    base = _randn(5, 10, seed=7)
    x = base.repeat(8, 1) * (1 + 1e-12 * _randn(40, 10, seed=8))
    spec = L.serial(*[m for _ in range(depth) for m in (L.Dense(64), act)], L.Dense(1))
    k = spec.kernel(x)
    kernel = k.ntk if isinstance(act, L.RectifiedMonomial) and act.degree == 1 else k.nngp
    ev = torch.linalg.eigvalsh(kernel)
    assert float(ev.min()) >= -1e-14 * float(ev.max())


def test_degree_zero_arc_cosine_kernel_keeps_small_angles():
    # the floor moves no angle above 1e-6 by more than f / t^2 ~ 2e-3 relative, and from
    # 1e-4 on by less than 1e-7 relative (Sign's 1 - 2 t / pi against the unfloored formula)
    t = torch.tensor([1e-6, 1e-4, 1e-2, 0.5, 3.0], dtype=F64)
    one = torch.ones_like(t)
    sigma, _ = L.Sign().rule(one, torch.cos(t), one)
    got = (1 - sigma) * math.pi / 2
    assert float(((got - t) / t)[1:].abs().max()) < 1e-7
    assert float(((got - t) / t).abs().max()) < 5e-3
