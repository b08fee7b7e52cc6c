"""The eigenmode view of squared-loss training with a fixed kernel.

Write ``Theta = Q diag(lam) Q^T`` (the flattened ``(D, D)`` train kernel, ``D = N`` for a
scalar kernel applied to each output, ``D = N*O`` for a full one) and ``r_t = f_t(X) - y``.
Under gradient flow each coordinate ``c_k(t) = q_k^T r_t`` decays on its own:

    c_k(t) = exp(-t lam_k / N) c_k(0)           (decay rate lam_k / N)

(gradient descent: ``(1 - eta lam_k / N)^t``). Large-eigenvalue modes are learned first; the
fraction of mode k learned by time t is ``1 - c_k(t) / c_k(0)``. The cost and its derivative:

    C(t)   = (1/(2N)) ||r_t||^2 = (1/(2N)) sum_k c_k(t)^2
    dC/dt  = -(1/N^2) r_t^T Theta r_t = -(1/N^2) sum_k lam_k c_k(t)^2  <= 0

so the cost never increases under gradient flow.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InvalidArgumentError
from . import _kernels as K
from ._spectral import factors
from .closed_form import MSEPredictor, mse

__all__ = ["modes", "Modes"]


class Modes:
    """Eigenmodes of a :class:`~torchntk.dynamics.MSEPredictor` (shares its decomposition).

    Shapes: ``D`` modes (``N`` for a scalar kernel, ``N*O`` for a full one) and ``C`` columns
    (``O`` for a scalar kernel, where every output has the same modes; ``1`` for a full one).
    Methods taking ``t`` accept a scalar or 1-D tensor (a leading time axis is then added).
    """

    def __init__(self, predictor: MSEPredictor) -> None:
        self.predictor = predictor

    @property
    def eigenvalues(self) -> torch.Tensor:
        """``lam`` (D,), ascending (round-off negatives clamped to 0)."""
        return self.predictor.eigenvalues

    @property
    def eigenvectors(self) -> torch.Tensor:
        """``Q`` (D, D), orthonormal columns."""
        return self.predictor.eigenvectors

    @property
    def decay_rates(self) -> torch.Tensor:
        """Gradient-flow decay rates ``lam_k / N`` (D,)."""
        return self.eigenvalues / self.predictor.n

    @property
    def step_factors(self) -> torch.Tensor:
        """Per-step factors ``1 - eta lam_k / N`` (D,) of gradient descent (needs a learning rate)."""
        lr = self.predictor.learning_rate
        if lr is None:
            raise InvalidArgumentError("`step_factors` needs a predictor with a learning_rate")
        return 1.0 - lr * self.eigenvalues / self.predictor.n

    @property
    def initial_coordinates(self) -> torch.Tensor:
        """``c(0) = Q^T (f_0 - y)`` of shape (D, C)."""
        self.predictor._decomposition()
        return self.predictor._coef

    @property
    def target_power(self) -> torch.Tensor:
        """Share of ``||y||^2`` on each mode: ``||q_k^T y||^2 / ||y||^2`` (D,), sums to 1."""
        p = self.predictor
        cy = self.eigenvectors.T @ p._to_state(p.y)
        power = (cy ** 2).sum(1)
        return power / power.sum().clamp_min(torch.finfo(power.dtype).tiny)

    def _e(self, t: Any) -> tuple[torch.Tensor, bool]:
        p = self.predictor
        ts, keep = K.times("t", t, integer=p.learning_rate is not None)
        lam = self.eigenvalues
        e = torch.empty(ts.shape[0], lam.shape[0], dtype=lam.dtype, device=lam.device)
        fin = torch.isfinite(ts)
        if bool(fin.any()):
            e[fin.to(lam.device)] = factors(lam, ts[fin], p.n, p.learning_rate, p.momentum,
                                            need_g=False)[0]
        if bool((~fin).any()):  # t = inf: every mode with lam > 0 is gone
            e[(~fin).to(lam.device)] = (lam == 0).to(lam.dtype)
        return e, keep

    def coordinates(self, t: Any) -> torch.Tensor:
        """Residual coordinates ``c(t) = Q^T (f_t(X) - y)``: (D, C) or (T, D, C)."""
        e, keep = self._e(t)
        out = e[:, :, None] * self.initial_coordinates[None]
        return out if keep else out[0]

    def fraction_learned(self, t: Any) -> torch.Tensor:
        """``1 - c_k(t) / c_k(0)`` per mode (D,) or (T, D): 0 at t = 0, 1 once learned."""
        e, keep = self._e(t)
        out = 1.0 - e
        return out if keep else out[0]

    def cost(self, t: Any) -> torch.Tensor:
        """``C(t) = (1/(2N)) ||f_t(X) - y||^2``: scalar or (T,)."""
        c = self.coordinates(t)
        return (c ** 2).sum((-2, -1)) / (2 * self.predictor.n)

    def cost_derivative(self, t: Any) -> torch.Tensor:
        """Gradient-flow rate ``dC/dt = -(1/N^2) r_t^T Theta r_t`` at the state of time t."""
        c = self.coordinates(t)
        lam = self.eigenvalues
        return -(lam[:, None] * c ** 2).sum((-2, -1)) / self.predictor.n ** 2


def modes(
    ntk_train_train: Any,
    y_train: Any,
    *,
    f0_train: Any = None,
    learning_rate: float | None = None,
    momentum: float | None = None,
    diag_reg: float = 0.0,
    diag_reg_mode: str = "relative",
) -> Modes:
    """Eigenmode analysis of squared-loss training; arguments as :func:`~torchntk.dynamics.mse`.

    Example:
        >>> x = torch.randn(10, 2, dtype=torch.float64)
        >>> m = modes(x @ x.T + 1.0, torch.randn(10))
        >>> m.decay_rates.shape, m.cost(torch.tensor([0.0, 1.0])).shape
        (torch.Size([10]), torch.Size([2]))
    """
    return Modes(mse(ntk_train_train, y_train, f0_train=f0_train, learning_rate=learning_rate,
                     momentum=momentum, diag_reg=diag_reg, diag_reg_mode=diag_reg_mode))
