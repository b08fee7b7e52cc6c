"""The largest stable gradient-descent step for squared loss with a fixed kernel.

Gradient descent ``theta_{k+1} = theta_k - eta grad C`` on ``C = (1/(2N)) sum ||f - y||^2``
moves the linearized residual by ``(I - eta Theta / N)``; every mode shrinks iff
``|1 - eta lam_k / N| < 1``, i.e. ``eta < 2 N / lam_max``. With heavy-ball momentum ``mu``
(``torch.optim.SGD(momentum=mu)``) a mode's recursion ``r' = (1 + mu - a) r - mu r_prev``,
``a = eta lam / N``, is stable iff ``0 < a < 2 (1 + mu)``: ``eta < 2 (1 + mu) N / lam_max``.

In neural-tangents' units (loss divided by ``N*O``) the same step reads ``eta_nt = O * eta``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InvalidArgumentError
from . import _kernels as K

__all__ = ["max_learning_rate"]


def max_learning_rate(
    ntk_train_train: Any, *, momentum: float = 0.0, dtype: torch.dtype = K.DEFAULT_DTYPE
) -> float:
    """``2 (1 + momentum) N / lam_max(Theta)``: steps below it converge, above it diverge.

    Args:
        ntk_train_train: scalar ``(N, N)`` or full ``(N, N, O, O)`` train kernel.
        momentum: heavy-ball momentum ``mu`` in ``[0, 1)``.

    Returns:
        The critical learning rate (a float; ``inf`` for a zero kernel).

    Example:
        >>> ntk = torch.eye(4, dtype=torch.float64) * 2.0
        >>> max_learning_rate(ntk)
        4.0
    """
    if not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
        raise InvalidArgumentError(f"`momentum` must be a float in [0, 1), got {momentum!r}")
    kt = K.train_kernel("ntk_train_train", ntk_train_train, dtype=dtype)
    lam_max = float(torch.linalg.eigvalsh(kt.matrix)[-1])
    if lam_max <= 0:
        return float("inf")
    return 2.0 * (1.0 + momentum) * kt.n / lam_max
