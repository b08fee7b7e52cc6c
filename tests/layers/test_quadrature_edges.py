"""Elementwise quadrature at the edges: pre-activation variances from 1e-4 to 1e4, pairs that
do not depend on the rest of the batch, and a warning where the tolerance is out of reach."""

import warnings

import pytest
import torch

from torchntk import layers as L
from torchntk.errors import AccuracyWarning
from torchntk.layers.activations._expectations import gaussian_expectations

F64 = torch.float64
CORR = torch.tensor([-1.0, -0.999, -0.5, 0.0, 0.3, 0.9, 0.99999, 1.0], dtype=F64)


def _pairs(q):
    """Pairs of variances ``q`` and ``2 q`` at the correlations ``CORR``."""
    q11, q22 = torch.full_like(CORR, q), torch.full_like(CORR, 2 * q)
    return q11, CORR * torch.sqrt(q11 * q22), q22


def _scaled_error(layer, got, q11, q12, q22):
    """|got - exact| / sqrt(E[phi(u)^2] E[phi(v)^2]) (and for phi'): the Cauchy-Schwarz scale."""
    exact = layer.rule(q11, q12, q22)
    d1, d2 = layer.rule(q11, q11, q11), layer.rule(q22, q22, q22)
    return [float(((g - e).abs() / torch.sqrt(a * b)).max()) for g, e, a, b in zip(got, exact, d1, d2)]


@pytest.mark.parametrize("layer", [L.Erf(), L.Gelu(), L.Relu(), L.Erf(a=2.0, b=0.3, c=0.5)], ids=repr)
@pytest.mark.parametrize("q", [1e-4, 1e-2, 1.0, 30.0, 1e3, 1e4])
def test_elementwise_matches_closed_forms_from_tiny_to_huge_variances(layer, q):
    q11, q12, q22 = _pairs(q)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AccuracyWarning)  # within tolerance: no warning
        got = L.Elementwise(layer.fn).rule(q11, q12, q22)
    assert max(_scaled_error(layer, got, q11, q12, q22)) < 1e-6


@pytest.mark.filterwarnings("ignore::torchntk.errors.AccuracyWarning")  # the estimate is conservative at 1e2
@pytest.mark.parametrize("q", [1e-4, 1.0, 1e2])
def test_elementwise_sin_within_tolerance_up_to_variance_100(q):
    q11, q12, q22 = _pairs(q)
    got = L.Elementwise(torch.sin).rule(q11, q12, q22)
    assert max(_scaled_error(L.Sin(), got, q11, q12, q22)) < 1e-6


def test_a_pair_does_not_depend_on_the_rest_of_the_batch():
    # (1, 0.3, 0.8) is a smooth pair for tanh and erf; the others are extreme (a kink-like scale,
    # a vanishing one), which used to switch the whole batch to another rule.
    alone = torch.tensor([1.0], dtype=F64), torch.tensor([0.3], dtype=F64), torch.tensor([0.8], dtype=F64)
    batch = tuple(torch.tensor([a[0], *rest], dtype=F64) for a, rest in zip(alone, ([1e4, 1e-4, 3e3], [-9e3, 0.0, 3e3], [1e4, 2.0, 3e3])))
    for fn in (torch.erf, torch.nn.functional.softplus):
        one = gaussian_expectations(fn, *alone)
        many = gaussian_expectations(fn, *batch)
        for a, b in zip(one, many):
            torch.testing.assert_close(b[:1], a, rtol=1e-13, atol=0)


def test_warns_where_the_tolerance_is_out_of_reach():
    # sin(100 z): neither the series (terms) nor the polar rule (nodes) resolve it
    q11, q12, q22 = _pairs(1e4)
    with pytest.warns(AccuracyWarning, match="sin"):
        L.Elementwise(torch.sin).rule(q11, q12, q22)
