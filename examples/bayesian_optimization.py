"""Bayesian optimization with an NNGP surrogate: BoTorch's SingleTaskGP with torchntk's kernel.

Needs the optional extra ``gp`` (gpytorch and botorch). Maximizes a smooth 2-D function on the
square [-1, 1]^2 (centred inputs suit a dot-product kernel) from 6 random points plus 6 steps of log expected improvement; the NNGP's
``W_std``/``b_std`` and the noise are refitted by marginal likelihood at every step.
"""

import math

import torch
from botorch.acquisition import LogExpectedImprovement
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.optim import optimize_acqf
from gpytorch.mlls import ExactMarginalLogLikelihood

from torchntk.gpytorch import NTKKernel


def objective(x: torch.Tensor) -> torch.Tensor:
    """A bump at (0.4, -0.4) on a gentle slope; its maximum is about 1.04."""
    return torch.exp(-4 * ((x[..., 0] - 0.4) ** 2 + (x[..., 1] + 0.4) ** 2)) + 0.1 * x[..., 0]


torch.manual_seed(0)
bounds = torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)
X = 2 * torch.rand(6, 2, dtype=torch.float64) - 1
Y = objective(X)[:, None]
print(f"best of 6 random points: {float(Y.max()):.4f}")
for step in range(6):
    model = SingleTaskGP(X, Y, covar_module=NTKKernel(3, kind="nngp"))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    acq = LogExpectedImprovement(model, best_f=Y.max())
    x_new, _ = optimize_acqf(acq, bounds=bounds, q=1, num_restarts=4, raw_samples=32)
    X, Y = torch.cat([X, x_new]), torch.cat([Y, objective(x_new)[:, None]])
    k = model.covar_module
    print(f"step {step + 1}: x = ({float(x_new[0, 0]):.3f}, {float(x_new[0, 1]):.3f}), "
          f"f = {float(Y[-1]):.4f}, best = {float(Y.max()):.4f}  (W_std {k.W_std.item():.3f}, b_std {k.b_std.item():.3f})")
best = X[Y.argmax()]
print(f"best point found: ({float(best[0]):.3f}, {float(best[1]):.3f}), value {float(Y.max()):.4f}; "
      f"the maximum is near (0.41, -0.40); distance {math.dist(best.tolist(), [0.41, -0.4]):.3f}")
