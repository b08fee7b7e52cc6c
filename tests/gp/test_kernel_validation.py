"""gp validates kernels with the one check of torchntk._kernel_checks: a non-symmetric or indefinite
kernel is refused by name, and non-finite training inputs are named as such by fit."""

from __future__ import annotations

import pytest
import torch

from torchntk import gp
from torchntk import layers as L
from torchntk.errors import InvalidArgumentError, NonFiniteError

DT = torch.float64


def _k(n=8):
    x = torch.randn(n, 3, dtype=DT, generator=torch.Generator().manual_seed(0))
    return x @ x.T / 3 + 0.1


def test_non_symmetric_kernel_is_refused_by_every_objective():
    k, y = _k(), torch.randn(8, dtype=DT)
    skew = k.clone()
    skew[0, 5] += 0.3  # still PD after symmetrization (noise 0.1): only the symmetry check catches it
    for objective in (gp.log_marginal_likelihood, gp.loo, gp.cholesky):
        with pytest.raises(InvalidArgumentError, match="`kernel` must be a symmetric kernel"):
            objective(skew, y, 0.1) if objective is not gp.cholesky else objective(skew, 0.1)
    # symmetric to rounding is accepted, and equal to the exact symmetric value to that rounding
    near = k + 1e-12 * torch.triu(torch.ones_like(k), 1)
    torch.testing.assert_close(gp.log_marginal_likelihood(near, y, 0.1), gp.log_marginal_likelihood(k, y, 0.1),
                               rtol=1e-9, atol=0)


def test_indefinite_kernel_is_named_not_blamed_on_the_noise():
    k = torch.full((6, 6), -0.35, dtype=DT) + 1.35 * torch.eye(6, dtype=DT)  # eigenvalue -0.75
    with pytest.raises(InvalidArgumentError, match="`kernel` is not positive semi-definite"):
        gp.log_marginal_likelihood(k, torch.randn(6, dtype=DT))
    nan = _k()
    nan[1, 1] = float("inf")
    with pytest.raises(NonFiniteError, match="`kernel`"):
        gp.loo(nan, torch.randn(8, dtype=DT), 0.1)


def test_fit_on_non_finite_inputs_says_so():
    x = torch.randn(10, 2, dtype=DT)
    x[3, 1] = float("nan")
    build = lambda W_std: L.serial(L.Dense(1, W_std=W_std), L.Relu(), L.Dense(1))  # noqa: E731
    with pytest.raises(NonFiniteError, match="`x`"):
        gp.fit(build, x, torch.randn(10, dtype=DT), {"W_std": 1.0}, restarts=0)
    with pytest.raises(NonFiniteError, match="`y`"):
        gp.fit(build, torch.randn(10, 2, dtype=DT), torch.full((10,), float("nan"), dtype=DT), {"W_std": 1.0})
