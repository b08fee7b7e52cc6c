"""Every dynamics entry point validates its kernels with the one check of torchntk._kernel_checks:
indefinite, non-symmetric or non-finite kernels are refused with the same message wherever they
enter; the stability warning's boundary does not depend on which eigensolver found lam_max."""

from __future__ import annotations

import warnings

import pytest
import torch

from torchntk import dynamics
from torchntk.errors import InvalidArgumentError, NonFiniteError, StabilityWarning

DT = torch.float64


def _psd(n=8, seed=0):
    x = torch.randn(n, 3, dtype=DT, generator=torch.Generator().manual_seed(seed))
    return x @ x.T / 3 + 0.2 + 0.05 * torch.eye(n, dtype=DT)


def _indefinite_with_valid_minors(n=6):
    """Equicorrelation rho = -0.35 on 6 points: every 2 x 2 minor 1 - rho^2 > 0, a non-negative
    diagonal, but the eigenvalue 1 + (n - 1) rho = -0.75 (the all-ones direction)."""
    return torch.full((n, n), -0.35, dtype=DT) + 1.35 * torch.eye(n, dtype=DT)


def test_ensemble_refuses_an_indefinite_nngp_prior():
    nngp, ntk, y = _indefinite_with_valid_minors(), _psd(6), torch.randn(6, dtype=DT)
    assert float(torch.linalg.eigvalsh(nngp)[0]) == pytest.approx(-0.75)
    pred = dynamics.ensemble(nngp, ntk, y)
    with pytest.raises(InvalidArgumentError, match="`nngp_train_train` is not positive semi-definite"):
        pred(1.0)
    with pytest.raises(InvalidArgumentError, match="`nngp_train_train` is not positive semi-definite"):
        pred(1.0, kind="nngp")
    # the mean alone does not use the prior covariance: still available
    assert pred(1.0, compute_cov=False).mean.shape == (6,)
    # a PSD prior gives a PSD covariance on test points (to the rounding of the products of
    # O(1) entries: 1e-12 of the prior's scale)
    k = _psd(10, seed=1)
    kx = k[6:, :6]
    good = dynamics.ensemble(k[:6, :6], ntk, y)(torch.tensor([0.5, float("inf")]), nngp_test_train=kx,
                                                ntk_test_train=kx, nngp_test_test=k[6:, 6:]).covariance
    for c in good:
        assert float(torch.linalg.eigvalsh(c)[0]) >= -1e-12 * float(k.abs().max())


def test_ensemble_and_gp_posterior_check_the_test_test_kernel():
    k = _psd(10)
    kx, kxx = k[6:, :6], k[6:, 6:].clone()
    kxx[0, 1] += 0.5
    pred = dynamics.ensemble(k[:6, :6], k[:6, :6], torch.randn(6, dtype=DT))
    with pytest.raises(InvalidArgumentError, match="`nngp_test_test` must be a symmetric kernel"):
        pred(1.0, nngp_test_train=kx, ntk_test_train=kx, nngp_test_test=kxx)
    with pytest.raises(InvalidArgumentError, match="`kernel_test_test` must be a symmetric kernel"):
        dynamics.gp_posterior(k[:6, :6], torch.randn(6, dtype=DT), kx, kxx)


def test_gp_posterior_names_an_indefinite_kernel_not_a_singular_one():
    with pytest.raises(InvalidArgumentError, match="`kernel_train_train` is not positive semi-definite"):
        dynamics.gp_posterior(_indefinite_with_valid_minors(), torch.randn(6, dtype=DT), torch.ones(2, 6, dtype=DT))


def test_modes_refuses_what_mse_refuses():
    k = _psd()
    shifted = k - float(torch.linalg.eigvalsh(k)[-1]) * torch.eye(8, dtype=DT)  # negative definite
    y = torch.randn(8, dtype=DT)
    for make in (lambda: dynamics.modes(shifted, y).eigenvalues, lambda: dynamics.mse(shifted, y)(1.0),
                 lambda: dynamics.ode("mse", shifted, y), lambda: dynamics.max_learning_rate(shifted)):
        with pytest.raises(InvalidArgumentError, match="`ntk_train_train` is not positive semi-definite"):
            make()
    for make in (lambda: dynamics.modes(_indefinite_with_valid_minors(), y[:6]).eigenvalues,
                 lambda: dynamics.mse(_indefinite_with_valid_minors(), y[:6])(1.0)):
        with pytest.raises(InvalidArgumentError, match="`ntk_train_train` is not positive semi-definite"):
            make()
    bad = k.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(NonFiniteError, match="`ntk_train_train`"):
        dynamics.modes(bad, y)


@pytest.mark.parametrize("seed", range(12))
def test_stability_warning_at_exactly_max_learning_rate(seed):
    # max_learning_rate and mse find lam_max with different eigensolvers (a few ulp apart):
    # exactly at the documented limit the warning is given every time
    x = torch.randn(30, 4, dtype=DT, generator=torch.Generator().manual_seed(seed))
    k = torch.tanh(x @ x.T / 4) + 0.1
    k = k @ k / 30  # PSD
    eta = dynamics.max_learning_rate(k)
    y = torch.randn(30, dtype=DT)
    with pytest.warns(StabilityWarning, match="max_learning_rate"):
        dynamics.mse(k, y, learning_rate=eta)(3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StabilityWarning)
        dynamics.mse(k, y, learning_rate=eta * (1 - 1e-6))(3.0)  # clearly below: no warning
