"""The largest stable gradient-descent step for squared loss with a fixed kernel.

Gradient descent ``theta_{k+1} = theta_k - eta grad C`` on ``C = (1/(2N)) sum ||f - y||^2``
moves the linearized residual by ``(I - eta Theta / N)``; every mode shrinks iff
``|1 - eta lam_k / N| < 1``, i.e. ``eta < 2 N / lam_max``. With heavy-ball momentum ``mu``
(``torch.optim.SGD(momentum=mu)``) a mode's recursion ``r' = (1 + mu - a) r - mu r_prev``,
``a = eta lam / N``, is stable iff ``0 < a < 2 (1 + mu)``: ``eta < 2 (1 + mu) N / lam_max``.

In neural-tangents' units (loss divided by ``N*O``) the same step reads ``eta_nt = O * eta``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..errors import InvalidArgumentError, StabilityWarning
from . import _kernels as K

__all__ = ["max_learning_rate"]

#: Relative margin under :func:`critical_rate` within which a learning rate counts as at the limit.
RATE_RTOL = 1e-9


def max_learning_rate(
    ntk_train_train: Any, *, momentum: float = 0.0, dtype: torch.dtype = K.DEFAULT_DTYPE
) -> float:
    """``2 (1 + momentum) N / lam_max(Theta)``: steps below it converge, above it diverge.

    Args:
        ntk_train_train: scalar ``(N, N)`` or full ``(N, N, O, O)`` train kernel.
        momentum: heavy-ball momentum ``mu`` in ``[0, 1)``.

    Returns:
        The critical learning rate (a float; ``inf`` for a zero kernel). A kernel with an
        eigenvalue below ``-1e-7 lam_max`` (``-1e-4`` for float32) is not PSD: it raises
        ``InvalidArgumentError``, as :func:`~torchntk.dynamics.mse` does.

    Example:
        >>> ntk = torch.eye(4, dtype=torch.float64) * 2.0
        >>> max_learning_rate(ntk)
        4.0
    """
    if not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
        raise InvalidArgumentError(f"`momentum` must be a float in [0, 1), got {momentum!r}")
    kt = K.train_kernel("ntk_train_train", ntk_train_train, dtype=dtype)
    lam = K.eigvalsh_psd("ntk_train_train", kt.matrix, kt.source_dtype)
    return critical_rate(float(lam[-1]), kt.n, momentum)


def critical_rate(lam_max: float, n: int, momentum: float | None = None) -> float:
    """``2 (1 + momentum) n / lam_max`` (``inf`` for ``lam_max <= 0``)."""
    if lam_max <= 0:
        return float("inf")
    return 2.0 * (1.0 + (momentum or 0.0)) * n / lam_max


def warn_if_unstable(learning_rate: float | None, momentum: float | None, lam_max: float, n: int,
                     what: str) -> None:
    """A :class:`~torchntk.errors.StabilityWarning` when ``learning_rate`` is at or above the
    critical rate of :func:`max_learning_rate` (the top mode then grows or never decays)."""
    if learning_rate is None:
        return
    limit = critical_rate(lam_max, n, momentum)
    # lam_max from two eigensolvers (this one's and max_learning_rate's) differs by a few ulp of
    # ||K|| (backward stability: D eps ||K||); a rate equal to max_learning_rate within
    # RATE_RTOL counts as at the limit, whichever solver computed it
    if learning_rate >= limit * (1.0 - RATE_RTOL):
        warnings.warn(
            f"{what}: learning_rate={learning_rate:g} is at or above max_learning_rate={limit:.6g} "
            "(2 (1 + momentum) N / lam_max): gradient descent on this kernel diverges (its top "
            "mode does not decay), so its predictions at finite times are meaningless",
            StabilityWarning,
            stacklevel=3,
        )
