"""Gaussian processes of a spec's kernels: exact marginal likelihood, closed-form leave-one-out
errors, and hyperparameter fitting (``W_std``, ``b_std``, activation parameters, noise, depth).

- :func:`log_marginal_likelihood`, :func:`loo`: objectives of a kernel matrix (float64 Cholesky);
- :func:`fit`: L-BFGS-B in log-space with restarts over a family ``build(**params) -> spec``;
- :func:`spec_kernel`, :func:`posterior`: the NNGP / NTK-GP prior and posterior of a spec.

See ``docs/gp.md``.
"""

from __future__ import annotations

from .fitting import FitResult, fit, posterior, spec_kernel
from .likelihood import LeaveOneOut, cholesky, log_marginal_likelihood, loo

__all__ = [
    "log_marginal_likelihood",
    "loo",
    "LeaveOneOut",
    "cholesky",
    "fit",
    "FitResult",
    "spec_kernel",
    "posterior",
]
