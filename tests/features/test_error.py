"""Error estimate and measurement of feature maps."""

from __future__ import annotations

import math

import pytest
import torch

from torchntk import layers as L
from torchntk.errors import InvalidArgumentError
from torchntk.features import FeatureMap, expected_error, measure_error, relative_error


def _spec():
    return L.serial(L.Dense(64, b_std=0.1), L.Relu(), L.Dense(64, b_std=0.1), L.Relu(), L.Dense(1, b_std=0.1))


def test_measure_error_matches_a_direct_computation_on_the_subsample():
    x = torch.randn(40, 5, dtype=torch.float64)
    fm = FeatureMap(_spec(), 128, seed=2)
    e = measure_error(fm, x, n_sample=40)  # all rows: no subsampling
    f, k = fm(x), _spec().kernel(x)
    assert e.n_sample == 40 and e.n_features == 128
    assert math.isclose(e.ntk, relative_error(f.ntk @ f.ntk.T, k.ntk), rel_tol=1e-12)
    assert math.isclose(e.nngp, relative_error(f.nngp @ f.nngp.T, k.nngp), rel_tol=1e-12)
    assert measure_error(fm, x, n_sample=10).n_sample == 10
    # the m^(-1/2) law: 4x the error needs 16x the features
    assert e.n_features_for(e.ntk / 4) == pytest.approx(16 * 128, rel=1e-6)


def test_expected_error_brackets_the_measured_one():
    x = torch.randn(40, 5, dtype=torch.float64)
    k = _spec().kernel(x).ntk
    measured = [measure_error(FeatureMap(_spec(), 512, seed=s), x, n_sample=40).ntk for s in range(3)]
    estimate = expected_error(k, 512)
    assert sum(measured) / 3 <= estimate <= 20 * sum(measured) / 3
    r2 = float(k.trace() / torch.linalg.norm(k)) ** 2
    assert math.isclose(expected_error(k, 100, constant=1.0), math.sqrt((1 + r2) / 100), rel_tol=1e-12)


def test_error_helpers_reject_bad_input():
    fm = FeatureMap(_spec(), 8)
    with pytest.raises(InvalidArgumentError, match="n_sample"):
        measure_error(fm, torch.randn(5, 2), n_sample=1)
    with pytest.raises(InvalidArgumentError, match="fm"):
        measure_error(_spec(), torch.randn(5, 2))
    with pytest.raises(InvalidArgumentError, match="kernel"):
        expected_error(torch.ones(3), 10)
    with pytest.raises(InvalidArgumentError, match="target"):
        measure_error(fm, torch.randn(5, 2)).n_features_for(0)
