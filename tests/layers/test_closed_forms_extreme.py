"""Closed forms finite and accurate wherever the result is representable: variances from
1e-300 to 1e300 (input scales 1e-150 to 1e150), against 700-digit evaluations of the formulas."""

from __future__ import annotations

import itertools

import pytest
import torch

from torchntk import layers as L

mpmath = pytest.importorskip("mpmath")
F64 = torch.float64
SCALES = [1e-300, 1e-150, 1e-20, 1.0, 1e20, 1e150, 1e300]
CORR = [-0.5, 0.0, 0.3, 0.9]


def _exact(name, q11, q12, q22):
    """(sigma, sdot) of the docstring formulas in 700-digit arithmetic."""
    mp = mpmath.mp
    mp.dps = 700  # the docstring forms cancel to 1/q at correlation 1: q up to 1e300
    a, b, c = (mpmath.mpf(float(v)) for v in (q11, q12, q22))
    if name == "relu":
        s = mpmath.sqrt(max(a * c - b * b, 0))
        t = mpmath.atan2(s, b)
        return (s + (mp.pi - t) * b) / (2 * mp.pi), (mp.pi - t) / (2 * mp.pi)
    if name == "erf":
        d = (1 + 2 * a) * (1 + 2 * c)
        return (2 / mp.pi) * mpmath.asin(2 * b / mpmath.sqrt(d)), (4 / mp.pi) / mpmath.sqrt(d - 4 * b * b)
    p1, p2 = 1 + a, 1 + c  # gelu
    d = p1 * p2 - b * b
    orthant = mpmath.mpf(1) / 4 + mpmath.asin(b / mpmath.sqrt(p1 * p2)) / (2 * mp.pi)
    sigma = b * orthant + (a * c + b * b * (1 - a * c) / (p1 * p2)) / (2 * mp.pi * mpmath.sqrt(d))
    sdot = orthant + b * (1 / p1 + 1 / p2) / (2 * mp.pi * mpmath.sqrt(d)) + b / (2 * mp.pi * d * mpmath.sqrt(d))
    return sigma, sdot


LAYERS = {"relu": L.Relu(), "erf": L.Erf(), "gelu": L.Gelu()}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_closed_forms_match_high_precision_values_from_1e_minus_300_to_1e300(name):
    rows = []
    for s1, s2, c in itertools.product(SCALES, SCALES, CORR):
        q12 = float(mpmath.mpf(c) * mpmath.sqrt(mpmath.mpf(s1) * mpmath.mpf(2 * s2)))
        rows.append((s1, q12, 2 * s2))
    q11, q12, q22 = (torch.tensor(col, dtype=F64) for col in zip(*rows))
    sigma, sdot = LAYERS[name].rule(q11, q12, q22)
    assert torch.isfinite(sigma).all() and torch.isfinite(sdot).all()
    for i, (a, b, c) in enumerate(rows):
        es, ed = _exact(name, a, b, c)
        # relative to the Cauchy-Schwarz scale sqrt(sigma(q11, q11) sigma(q22, q22))
        scale = mpmath.sqrt(_exact(name, a, a, a)[0] * _exact(name, c, c, c)[0])
        assert abs(float(sigma[i]) - es) <= 1e-12 * scale, (a, b, c)
        assert abs(float(sdot[i]) - ed) <= 1e-12 * abs(ed), (a, b, c)


@pytest.mark.parametrize("act", [L.Relu(), L.Erf(), L.Gelu(), L.LeakyRelu(0.1), L.Abs()], ids=repr)
@pytest.mark.parametrize("scale", [1e-150, 1e-8, 1e8, 1e78, 1e150])
def test_kernels_finite_at_extreme_input_norms(act, scale):
    # Erf used to be inf from input scale 1e8, Gelu NaN from 1e8, Relu NaN from 1e78
    x = torch.tensor([[1.0, 0.5], [0.3, -1.0], [2.0, 2.0]], dtype=F64)
    spec = L.serial(L.Dense(16, b_std=0.0), act, L.Dense(16, b_std=0.0), act, L.Dense(1, b_std=0.0))
    k, ref = spec.kernel(x * scale), spec.kernel(x)
    for a in (k.nngp, k.ntk):
        assert torch.isfinite(a).all() and (a.diagonal() > 0).all()
    if isinstance(act, L.ABRelu):  # positively homogeneous: the kernel scales as scale^2 exactly
        torch.testing.assert_close(k.ntk / scale**2, ref.ntk, rtol=1e-13, atol=0)
        torch.testing.assert_close(k.nngp / scale**2, ref.nngp, rtol=1e-13, atol=0)


def test_erf_at_huge_scale_is_the_sign_kernel():
    # erf(s u) -> sign(u) as s -> inf: the NNGP tends to Sign's 1 - 2 t / pi
    x = torch.tensor([[1.0, 0.5], [0.3, -1.0], [2.0, 2.0]], dtype=F64)
    erf = L.serial(L.Dense(8, b_std=0.0), L.Erf()).kernel(x * 1e150).nngp
    sign = L.serial(L.Dense(8, b_std=0.0), L.Sign()).kernel(x).nngp
    torch.testing.assert_close(erf, sign, rtol=1e-13, atol=1e-15)


def test_piecewise_linear_rule_with_an_infinite_variance_raises_instead_of_recursing():
    # an upstream overflow (q = inf) once sent the scaled form into endless recursion
    # (RecursionError); now it is a NonFiniteError saying the variance overflowed
    from torchntk import layers as L
    from torchntk.errors import NonFiniteError

    q11 = torch.tensor([float("inf"), 1.0], dtype=torch.float64)
    q22 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    q12 = torch.tensor([0.5, 0.3], dtype=torch.float64)
    for act in (L.Relu(), L.ABRelu(-0.3, 1.2), L.Abs()):
        with pytest.raises(NonFiniteError, match="variance is inf"):
            act.rule(q11, q12, q22)
