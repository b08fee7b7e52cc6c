"""Every exported nonlinearity over input scales 1e-8 to 1e8 (float64): a finite, symmetric,
positive semi-definite kernel, or a torchntk error; and the same at its parameters' limits."""

from __future__ import annotations

import warnings

import pytest
import torch

from torchntk import layers as L
from torchntk.errors import AccuracyWarning, TorchNTKError
from torchntk.layers import activations as A
from torchntk.layers.activations.closed_forms import PARAMETER_LIMIT

F64 = torch.float64
SCALES = [1e-8, 1e-4, 1.0, 1e4, 1e8]

#: One instance (or more) of every exported nonlinearity.
CASES = {
    "ABRelu": [L.ABRelu(-0.3, 1.7)], "Relu": [L.Relu()], "LeakyRelu": [L.LeakyRelu(0.1)], "Abs": [L.Abs()],
    "Sign": [L.Sign()], "Erf": [L.Erf(), L.Erf(a=2.0, b=0.3, c=0.5)], "Sigmoid_like": [L.Sigmoid_like()],
    "Gelu": [L.Gelu()], "Sin": [L.Sin(a=1.0, b=2.0, c=0.3)], "Cos": [L.Cos()], "Rbf": [L.Rbf(0.5)],
    "Exp": [L.Exp(a=0.5, b=0.7)], "Gaussian": [L.Gaussian(), L.Gaussian(b=0.05)], "Monomial": [L.Monomial(3)],
    "Polynomial": [L.Polynomial([0.3, -1.0, 0.5, 0.2])], "Elementwise": [L.Elementwise(torch.tanh)],
    "Hermite": [L.Hermite(4), L.Hermite(40)], "RectifiedMonomial": [L.RectifiedMonomial(n) for n in (0, 1, 3)],
    "ExpNormalized": [L.ExpNormalized(), L.ExpNormalized(gamma=0.8, shift=-0.5, do_clip=True)], "Gabor": [L.Gabor()],
}


def test_every_exported_nonlinearity_is_swept():
    exported = {name for name in A.__all__ if name != "ElementwiseLayer"}
    assert exported == set(CASES) | {"ElementwiseNumerical"}  # that one: its own test below


def _x() -> torch.Tensor:
    return torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(0))


def _check(kernel: torch.Tensor, sym: float = 1e-12) -> None:
    """Finite, symmetric to ``sym`` of its largest entry (1e-12: entries (i, j) and (j, i) get the
    same covariances; SIMD and scalar code may round them an ulp apart, a few ulp through two
    layers) and PSD to 1e-9 of its largest eigenvalue: for these well-separated inputs every
    entry is exact to ~1e-13 relative (a few roundings per layer, amplified at most by the
    1 / sin(t) of the angle), and by Weyl's inequality N = 6 such errors move an eigenvalue by
    < 1e-12 of the largest; 1e-9 also covers the series and quadrature rules (1e-8 of
    E|phi phi|, squared relative errors near 1e-10 where they converge). Kernels whose largest
    entry is below 1e-290 (subnormal numbers, which carry fewer digits) are checked for
    finiteness only."""
    assert torch.isfinite(kernel).all()
    top = float(kernel.abs().max())
    assert float((kernel - kernel.T).abs().max()) <= sym * top
    if top < 1e-290:
        return
    k = kernel / top  # eigh of entries near 1e300 overflows inside LAPACK
    ev = torch.linalg.eigvalsh((k + k.T) / 2)
    assert float(ev.min()) >= -1e-9 * max(float(ev.max()), 0.0)


def _sweep(act: L.Layer, scales: list[float] = SCALES, sym: float = 1e-12) -> None:
    spec = L.serial(L.Dense(8, b_std=None), act, L.Dense(8, b_std=None), act, L.Dense(1, b_std=None))
    for scale in scales:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AccuracyWarning)  # quadrature at huge variances says so
                k = spec.kernel(_x() * scale)
        except TorchNTKError:
            continue  # a kernel beyond float64 (Exp at 1e8), or a divergent expectation (Gaussian b > 0)
        _check(k.nngp, sym)
        if k.ntk is not None:
            _check(k.ntk, sym)


@pytest.mark.parametrize("act", [a for cases in CASES.values() for a in cases], ids=repr)
def test_kernels_finite_symmetric_psd_or_an_error_from_1e_minus_8_to_1e8(act):
    _sweep(act)


def test_elementwise_numerical_is_symmetric_where_inexact():
    # neural-tangents' tensor-product Gauss-Hermite rule (degree 16) resolves tanh only up to
    # variances ~1; beyond it is off by ~1e-3 (docs/activations.md). Its factorization
    # u = sqrt(q11) z1 made that error asymmetric in (u, v) (kernel 1e-3 asymmetric at input
    # scale 1); the symmetric one keeps the kernel symmetric to rounding at every scale, and
    # PSD to the rule's own error there (checked at the scales it resolves)
    _sweep(L.ElementwiseNumerical(torch.tanh, deg=16), scales=[1e-8, 1e-4, 1.0])
    spec = L.serial(L.Dense(8, b_std=None), L.ElementwiseNumerical(torch.tanh, deg=16), L.Dense(1, b_std=None))
    for scale in (1e4, 1e8):
        k = spec.kernel(_x() * scale).ntk
        assert float((k - k.T).abs().max()) <= 1e-12 * float(k.abs().max())


LIMIT = PARAMETER_LIMIT


@pytest.mark.parametrize("make", [
    lambda p: L.ABRelu(p, -p), lambda p: L.LeakyRelu(p), lambda p: L.Erf(a=p, b=p, c=p), lambda p: L.Erf(b=1 / p),
    lambda p: L.Sin(a=p, b=p, c=p), lambda p: L.Cos(b=1 / p), lambda p: L.Rbf(p), lambda p: L.Rbf(1 / p),
    lambda p: L.Exp(a=p, b=-p), lambda p: L.Exp(b=1 / p), lambda p: L.Gaussian(a=p, b=-p), lambda p: L.Gaussian(b=1 / p),
    lambda p: L.Polynomial([p, -p, p]), lambda p: L.ExpNormalized(gamma=1 / p), lambda p: L.ExpNormalized(gamma=1e4, shift=-p),
    lambda p: L.Hermite(250), lambda p: L.Monomial(250), lambda p: L.RectifiedMonomial(60),
], ids=lambda f: "")
def test_parameters_at_their_limits_give_a_kernel_or_an_error(make):
    # |p| = 1e75 (the documented limit) and its reciprocal: NaN, inf or a raw OverflowError
    # used to come out of several rules
    _sweep(make(LIMIT))
