"""Bayesian optimization with an NNGP surrogate, against random search with the same budget.

Maximizes a bump on a gentle slope over the square [-1, 1]^2 (centred inputs suit a
dot-product kernel). Each run starts from 4 random points and takes 8 steps: at every step the
NNGP of an erf network (``torchntk.gp.fit``: ``W_std``, ``b_std`` and the noise by marginal
likelihood) is refitted, and the next point maximizes the expected improvement

    EI(x) = (m(x) - f*) Phi(z) + s(x) phi(z),   z = (m(x) - f*) / s(x)

over a 41 x 41 grid, with ``m``, ``s^2`` the GP posterior mean and variance and ``f*`` the best
value so far. Random search draws 12 uniform points. Both run from 5 seeds; the script prints
each seed's best value and the mean regret (the maximum minus the best value found).
Only torchntk is needed (the GPyTorch/BoTorch adapter is ``torchntk.gpytorch.NTKKernel``).
"""

import math
import sys

import torch

from torchntk import gp
from torchntk import layers as L

SEEDS, START, STEPS = 5, 4, 8


def objective(x: torch.Tensor) -> torch.Tensor:
    """A bump at (0.4, -0.4) on a gentle slope."""
    return torch.exp(-4 * ((x[..., 0] - 0.4) ** 2 + (x[..., 1] + 0.4) ** 2)) + 0.1 * x[..., 0]


def build(W_std, b_std):
    """An erf network: its NNGP is smooth and bounded, a good prior for a bump (a ReLU network's
    NNGP grows like |x|^2 and sends the search to the corners)."""
    return L.serial(L.Dense(512, W_std=W_std, b_std=b_std), L.Erf(),
                    L.Dense(512, W_std=W_std, b_std=b_std), L.Erf(), L.Dense(1, W_std=W_std, b_std=b_std))


axis = torch.linspace(-1, 1, 41, dtype=torch.float64)
grid = torch.cartesian_prod(axis, axis)                      # the candidates, (1681, 2)
best_possible = float(objective(grid).max())                 # the maximum on the grid
normal = torch.distributions.Normal(0.0, 1.0)


def bayesian_optimization(seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.rand(START, 2, generator=g, dtype=torch.float64) - 1
    y = objective(x)
    for _ in range(STEPS):
        mu, sd = y.mean(), y.std().clamp_min(1e-6)           # the GP models standardized values
        yn = (y - mu) / sd
        res = gp.fit(build, x, yn, {"W_std": 1.0, "b_std": 0.5}, noise=1e-4, restarts=0, max_iter=60, tol=1e-9)
        post = res.posterior(x, yn, grid)
        m = post.mean
        s = post.covariance.diagonal().clamp_min(1e-12).sqrt()
        z = (m - yn.max()) / s
        ei = (m - yn.max()) * normal.cdf(z) + s * normal.log_prob(z).exp()
        nxt = grid[ei.argmax()][None]
        x, y = torch.cat([x, nxt]), torch.cat([y, objective(nxt)])
    return float(y.max())


def random_search(seed: int) -> float:
    g = torch.Generator().manual_seed(1000 + seed)
    x = 2 * torch.rand(START + STEPS, 2, generator=g, dtype=torch.float64) - 1
    return float(objective(x).max())


if __name__ == "__main__":
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else SEEDS
    bo, rs = [], []
    for seed in range(seeds):
        bo.append(bayesian_optimization(seed))
        rs.append(random_search(seed))
        print(f"seed {seed}: best after {START + STEPS} evaluations: Bayesian optimization {bo[-1]:.4f}, "
              f"random search {rs[-1]:.4f}")
    regret_bo = sum(best_possible - b for b in bo) / seeds
    regret_rs = sum(best_possible - r for r in rs) / seeds
    print(f"maximum on the grid {best_possible:.4f}; mean regret: Bayesian optimization {regret_bo:.4f}, "
          f"random search {regret_rs:.4f} ({regret_rs / max(regret_bo, 1e-12):.1f}x larger)")
    assert math.isfinite(regret_bo)
