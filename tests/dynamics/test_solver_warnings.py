"""Solvers say when they fail: stiff ODEs finish fast, unstable steps warn, indefinite kernels
are refused by max_learning_rate."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch

import torchntk
from torchntk.cli import main
from torchntk.dynamics import max_learning_rate, mse, ode
from torchntk.errors import InvalidArgumentError, StabilityWarning

from ._helpers import random_kernels

D = torch.float64


def _stiff_kernel():
    """A rotated diag(1e6, 1e-3): condition 1e9."""
    q, _ = torch.linalg.qr(torch.randn(2, 2, dtype=D, generator=torch.Generator().manual_seed(0)))
    return q @ torch.diag(torch.tensor([1e6, 1e-3], dtype=D)) @ q.T


def test_stiff_ode_finishes_in_seconds_and_matches_the_closed_form():
    k, y = _stiff_kernel(), torch.tensor([[1.0], [-2.0]], dtype=D)
    t = torch.tensor([0.0, 1e-6, 1.0, 1e3], dtype=D)
    start = time.perf_counter()
    pred = ode("mse", k, y)
    f = pred(t)[0]
    assert time.perf_counter() - start < 5.0  # the explicit default took hours here
    assert pred.last_method == "LSODA"
    # the residual along the 1e-3 mode decays as exp(-t 1e-3 / 2): still 61% there at t = 1e3
    torch.testing.assert_close(f, mse(k, y)(t)[0], rtol=0, atol=1e-6)


def test_non_stiff_ode_keeps_the_explicit_method():
    ktt, _, _ = random_kernels(5, 1, seed=3)
    pred = ode("mse", ktt, torch.ones(5, dtype=D))
    pred(torch.tensor(2.0, dtype=D))
    assert pred.last_method == "DOP853"


def test_mse_warns_above_max_learning_rate_and_not_below():
    ktt, _, _ = random_kernels(6, 1, seed=5)
    y = torch.randn(6, dtype=D, generator=torch.Generator().manual_seed(1))
    eta = max_learning_rate(ktt)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StabilityWarning)
        mse(ktt, y, learning_rate=0.9 * eta)(torch.tensor(50.0))
        mse(ktt, y, learning_rate=0.9 * max_learning_rate(ktt, momentum=0.5), momentum=0.5)(torch.tensor(50.0))
    with pytest.warns(StabilityWarning, match="max_learning_rate"):
        f, _ = mse(ktt, y, learning_rate=1.5 * eta)(torch.tensor(400.0))
    assert f.abs().max() > 1e10  # the divergence the warning announces
    with pytest.warns(StabilityWarning):
        mse(ktt, y, learning_rate=1.5 * max_learning_rate(ktt, momentum=0.5), momentum=0.5)(torch.tensor(5.0))
    assert issubclass(StabilityWarning, torchntk.TorchNTKWarning)


def test_ode_warns_above_max_learning_rate():
    ktt, _, _ = random_kernels(6, 1, seed=6)
    y = torch.randn(6, 1, dtype=D, generator=torch.Generator().manual_seed(2))
    eta = max_learning_rate(ktt)
    with pytest.warns(StabilityWarning, match="ode"):
        ode("mse", ktt, y, learning_rate=1.2 * eta)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StabilityWarning)
        ode("mse", ktt, y, learning_rate=0.8 * eta)
        # softmax cross-entropy has half the curvature (one-hot targets): 1.2 eta is stable
        ode("cross_entropy", ktt, torch.nn.functional.one_hot(torch.arange(6) % 2).double(), learning_rate=1.2 * eta)


def test_max_learning_rate_refuses_indefinite_kernels_like_mse():
    k = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=D)  # eigenvalues 3 and -1
    with pytest.raises(InvalidArgumentError, match="positive semi-definite"):
        max_learning_rate(k)
    with pytest.raises(InvalidArgumentError, match="positive semi-definite"):
        mse(k, torch.ones(2, dtype=D))(torch.tensor(1.0))
    # round-off negatives are tolerated, as in mse
    a = torch.randn(5, 2, dtype=D, generator=torch.Generator().manual_seed(0))
    assert max_learning_rate(a @ a.T) == pytest.approx(2 * 5 / float(torch.linalg.eigvalsh(a @ a.T)[-1]))


def test_cli_predict_warns_above_max_learning_rate(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3))
    k = x @ x.T / 3 + 1.0
    np.savez(tmp_path / "k.npz", ntk=k)
    np.savez(tmp_path / "d.npz", x=x, y=np.sin(x[:, 0]))
    eta = 2 * 6 / np.linalg.eigvalsh(k)[-1]
    argv = ["predict", "--kernel", str(tmp_path / "k.npz"), "--data", str(tmp_path / "d.npz"),
            "--t", "0,10", "--out", str(tmp_path / "p.npz"), "--force", "--learning-rate"]
    with pytest.warns(StabilityWarning, match="max_learning_rate"):
        assert main(argv + [str(1.5 * eta)]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", StabilityWarning)
        assert main(argv + [str(0.5 * eta)]) == 0
