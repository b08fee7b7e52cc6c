"""Exact Gaussian-process objectives of a kernel matrix: log marginal likelihood and closed-form
leave-one-out errors (float64 Cholesky with jitter handling).

For a prior covariance ``K`` (the NNGP ``Sigma`` or the NTK ``Theta`` of a spec on the training
inputs, ``(N, N)``), a noise variance ``sigma^2`` and targets ``Y`` ``(N, O)`` whose columns are
independent draws (regression outputs, or the columns of one-hot class targets):

    K_y = K + (sigma^2 + jitter) I = L L^T,        A = K_y^{-1} Y
    log p(Y) = sum_o [ -1/2 y_o^T K_y^{-1} y_o - 1/2 log|K_y| - N/2 log(2 pi) ]
             = -1/2 sum(Y * A) - O sum_i log L_ii - O N/2 log(2 pi)

Leave-one-out (Rasmussen & Williams 2006, section 5.4.2), with ``c_i = [K_y^{-1}]_ii``:

    mu_{-i} = y_i - A_i / c_i,    var_{-i} = 1 / c_i
    loo_mse = mean_{i, o} (A_io / c_i)^2
    loo_log_predictive = sum_{i, o} [ -1/2 log var_{-i} - (A_io / c_i)^2 / (2 var_{-i}) - 1/2 log(2 pi) ]

Everything is differentiable in ``K`` and ``sigma^2`` (tensors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .._checks import check_tensor
from .._kernel_checks import check_kernel, eigvalsh_psd
from ..dynamics import _kernels
from ..errors import InvalidArgumentError, ShapeError

__all__ = ["log_marginal_likelihood", "loo", "LeaveOneOut", "cholesky"]

#: Jitter tried, relative to the mean diagonal of ``K + sigma^2 I``, when the factorization fails.
JITTERS = (0.0, 1e-12, 1e-10, 1e-8, 1e-6)


def _as_targets(y: Any, n: int, device: torch.device) -> tuple[torch.Tensor, bool]:
    """``y`` as a float64 ``(N, O)`` tensor (and whether it was 1-D)."""
    y = _kernels.as_tensor("y", y, dtype=torch.float64, device=device)
    squeeze = y.ndim == 1
    if squeeze:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n:
        raise ShapeError(f"`y` must be (N={n},) or (N={n}, O) to match the kernel, got shape {tuple(y.shape)}")
    return y, squeeze


def _as_kernel(kernel: Any) -> torch.Tensor:
    """The train-train kernel checked by :func:`torchntk._kernel_checks.check_kernel` (square,
    finite, symmetric, the O(N^2) conditions of PSD), float64 and symmetrized (differentiable)."""
    return check_kernel("kernel", check_tensor("kernel", kernel), dtype=torch.float64)


def _noise(noise: Any) -> torch.Tensor | float:
    if isinstance(noise, torch.Tensor):
        if noise.ndim != 0:
            raise ShapeError(f"`noise` must be a number or a 0-dim tensor, got shape {tuple(noise.shape)}")
        value = float(noise.detach())
    elif isinstance(noise, (int, float)) and not isinstance(noise, bool):
        value = float(noise)
    else:
        raise InvalidArgumentError(f"`noise` must be a number >= 0 or a 0-dim tensor, got {noise!r}")
    if not (math.isfinite(value) and value >= 0):
        raise InvalidArgumentError(f"`noise` must be a finite variance >= 0, got {value!r}")
    return noise.to(torch.float64) if isinstance(noise, torch.Tensor) else value


def cholesky(kernel: Any, noise: Any = 0.0) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor of ``K + (sigma^2 + jitter) I`` in float64, and the jitter used.

    The jitter is the first of ``JITTERS`` (times the mean diagonal) for which the factorization
    succeeds; a kernel that needs more than 1e-6 of its diagonal is rejected.
    """
    k = _as_kernel(kernel)
    noise = _noise(noise)
    n = k.shape[0]
    eye = torch.eye(n, dtype=k.dtype, device=k.device)
    ky = k + noise * eye
    scale = float(torch.diagonal(ky.detach()).mean())
    if not scale > 0:
        raise InvalidArgumentError("`kernel + noise I` has a non-positive mean diagonal: not a covariance")
    for rel in JITTERS:
        jitter = rel * scale
        chol, info = torch.linalg.cholesky_ex(ky + jitter * eye if jitter else ky)
        if int(info) == 0:
            return chol, jitter
    eigvalsh_psd("kernel", k, kernel.dtype)
    raise InvalidArgumentError(
        f"`kernel + noise I` is not positive definite even with a jitter of {JITTERS[-1]:g} x its mean "
        "diagonal: raise `noise`"
    )


def log_marginal_likelihood(kernel: torch.Tensor, y: Any, noise: Any = 0.0) -> torch.Tensor:
    """``log p(Y) = sum_o [-1/2 y_o^T K_y^{-1} y_o - 1/2 log|K_y| - N/2 log(2 pi)]``, ``K_y = K + sigma^2 I``.

    Args:
        kernel: ``(N, N)`` prior covariance of the training outputs (NNGP or NTK), any float
            dtype (computed in float64); gradients flow into it.
        y: ``(N,)`` or ``(N, O)`` targets (one-hot columns for classification), each column an
            independent GP draw.
        noise: ``sigma^2 >= 0``, a number or a 0-dim tensor (gradients flow into it).

    Returns:
        A 0-dim float64 tensor (the sum over outputs).

    Example:
        >>> from torch.distributions import MultivariateNormal
        >>> x, y = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
        >>> k = x @ x.T + 0.1
        >>> ref = MultivariateNormal(torch.zeros(6, dtype=torch.float64), k + 0.1 * torch.eye(6)).log_prob(y)
        >>> bool(torch.isclose(log_marginal_likelihood(k, y, noise=0.1), ref))
        True
    """
    chol, _ = cholesky(kernel, noise)
    y, _ = _as_targets(y, chol.shape[0], chol.device)
    alpha = torch.cholesky_solve(y, chol)
    n, o = y.shape
    logdet = 2.0 * torch.log(torch.diagonal(chol)).sum()
    return -0.5 * (y * alpha).sum() - 0.5 * o * logdet - 0.5 * o * n * math.log(2 * math.pi)


@dataclass(frozen=True)
class LeaveOneOut:
    """Closed-form leave-one-out results (module docstring for the formulas).

    Attributes:
        residuals: ``y_i - mu_{-i}``, ``(N, O)`` (``(N,)`` for 1-D targets).
        variances: ``var_{-i}``, ``(N,)``.
        mse: mean squared residual (0-dim).
        log_predictive: sum of the LOO log predictive densities (0-dim).
    """

    residuals: torch.Tensor
    variances: torch.Tensor
    mse: torch.Tensor
    log_predictive: torch.Tensor


def loo(kernel: torch.Tensor, y: Any, noise: Any = 0.0) -> LeaveOneOut:
    """Leave-one-out residuals, MSE and log predictive density of the GP, without refitting.

    Args: as :func:`log_marginal_likelihood`. With ``noise = 0`` the residuals are those of
    kernel regression ``K(x, X) K^{-1} y`` refitted without each point.
    """
    chol, _ = cholesky(kernel, noise)
    y, squeeze = _as_targets(y, chol.shape[0], chol.device)
    alpha = torch.cholesky_solve(y, chol)
    inv = torch.cholesky_inverse(chol)
    c = torch.diagonal(inv)
    res = alpha / c[:, None]
    var = 1.0 / c
    o = y.shape[1]
    logp = (-0.5 * o * torch.log(var).sum() - 0.5 * (res**2 / var[:, None]).sum()
            - 0.5 * res.numel() * math.log(2 * math.pi))
    return LeaveOneOut(res[:, 0] if squeeze else res, var, (res**2).mean(), logp)
