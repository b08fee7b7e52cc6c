"""Sketched empirical NTK: unbiased, error ~ k^(-1/2), its own error estimate, bounded memory."""

from __future__ import annotations


import pytest
import torch

import torchntk
from torchntk.empirical.sketch import gradient_features, sketched_ntk
from torchntk.errors import InvalidArgumentError

from ._sketch_checks import check_error_law, check_unbiased


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 128), torch.nn.Tanh(), torch.nn.Linear(128, 128), torch.nn.Tanh(),
                               torch.nn.Linear(128, 3)).double()


X = torch.randn(16, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.mark.parametrize("impl", ["jacobian", "structured"])
def test_sketch_is_unbiased(impl):
    net = _net()
    exact = torchntk.empirical_ntk(net, X, mode="mean")
    check_unbiased(lambda s: sketched_ntk(net, X, k=64, seed=s, mode="mean", implementation=impl,
                                          exact_parts=False).kernel, exact)


@pytest.mark.parametrize("impl", ["jacobian", "structured"])
def test_error_falls_like_k_to_the_minus_half_and_is_estimated(impl):
    net = _net()
    exact = torchntk.empirical_ntk(net, X, mode="full")
    # the law of the projections: no parameter contracted exactly
    check_error_law(lambda k, s: sketched_ntk(net, X, k=k, seed=s, mode="full", implementation=impl,
                                              exact_parts=False), exact)


def test_features_modes_and_budget():
    net = _net()
    phi = gradient_features(net, X, 256, seed=3)
    assert phi.shape == (16, 3, 256) and phi.dtype == torch.float64
    # the same seed, the same projection: the same call repeated gives the same bytes
    assert torch.equal(phi, gradient_features(net, X, 256, seed=3))
    # a tiny budget: one example and one parameter tensor at a time; the same numbers up to rounding
    small = gradient_features(net, X, 256, seed=3, memory=1000)
    torch.testing.assert_close(small, phi, rtol=1e-12, atol=1e-14)
    # rows of a sub-batch are the rows of the batch (the projection belongs to the seed)
    torch.testing.assert_close(gradient_features(net, X[:4], 256, seed=3), phi[:4], rtol=1e-12, atol=1e-14)
    full = sketched_ntk(net, X, X[:5], k=256, seed=3, mode="full").kernel
    mean = sketched_ntk(net, X, X[:5], k=256, seed=3, mode="mean").kernel
    torch.testing.assert_close(mean, full.diagonal(dim1=2, dim2=3).mean(-1), rtol=1e-12, atol=1e-14)
    sym = sketched_ntk(net, X, k=256, seed=3, mode="full").kernel
    assert torch.equal(sym, sym.permute(1, 0, 3, 2))


@pytest.mark.parametrize("k", [0, 3, 2.0, True])
def test_bad_sketch_size(k):
    with pytest.raises(InvalidArgumentError, match="sketch"):
        gradient_features(_net(), X, k)


def test_empirical_ntk_sketch_argument():
    net = _net()
    via_api = torchntk.empirical_ntk(net, X, X[:3], mode="mean", sketch=512, seed=5)
    direct = sketched_ntk(net, X, X[:3], k=512, seed=5, mode="mean").kernel
    assert torch.equal(via_api, direct)  # the same call
    exact = torchntk.empirical_ntk(net, X, X[:3], mode="mean")
    assert _rel(via_api, exact) < 0.3
    pseudo = torchntk.empirical_ntk(net, X, mode="pseudo", sketch=512)
    assert pseudo.shape == (16, 16)
    with pytest.raises(InvalidArgumentError, match="sketch"):
        torchntk.empirical_ntk(net, X, sketch=512, implementation="ntvp")
