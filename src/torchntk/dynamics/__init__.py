"""Training dynamics in function space (CONVENTIONS section 4).

With a fixed kernel (the infinite-width NTK, or the empirical NTK of a linearized network),
squared-loss training is linear in function space: ``df/dt = -(1/N) Theta (f - y)``.

- :func:`mse`: closed-form train/test predictions at any time (gradient flow, gradient descent,
  momentum; ``t = inf`` is kernel regression);
- :func:`modes`: the eigenmode view (decay rates ``lam_k / N``, residual per mode, cost);
- :func:`ode`: any differentiable loss, integrated with an adaptive ODE solver;
- :func:`ensemble`, :func:`gp_posterior`: mean and covariance over infinitely many networks;
- :func:`max_learning_rate`: the largest stable gradient-descent step ``2 N / lam_max``.

Time unit: neural-tangents' ``predict`` divides the cost by ``N*O``: ``t_nt = O * t``.
"""

from __future__ import annotations

from .ensembles import EnsemblePredictor, Gaussian, ensemble, gp_posterior
from .learning_rate import max_learning_rate
from .eigenmodes import Modes, modes
from .closed_form import MSEPredictor, mse
from .integrate import ODEPredictor, cross_entropy_loss, huber_loss, ode, squared_loss

__all__ = [
    "mse",
    "MSEPredictor",
    "modes",
    "Modes",
    "ode",
    "ODEPredictor",
    "squared_loss",
    "cross_entropy_loss",
    "huber_loss",
    "ensemble",
    "EnsemblePredictor",
    "Gaussian",
    "gp_posterior",
    "max_learning_rate",
]
