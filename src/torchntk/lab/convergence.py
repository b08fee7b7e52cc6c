"""Study (a): the empirical NTK at initialization converges to Theta_inf as the width grows.

The setting of Jacot et al.'s Figure 1: inputs on the unit circle (``n0 = 2``), the theory's ReLU
network of depth 4 (``W_std = 1``, ``beta = 0.1``). Three measurements:

1. the analytic ``Theta_inf(x0, x(gamma))``, ``x0 = (1, 0)``, ``x(gamma) = (cos gamma, sin gamma)``,
   from ``spec.kernel`` against the independent arc-cosine recursion of
   :mod:`torchntk.lab.reference` (they must agree to 1e-8);
2. the same curve from finite networks at init (the figure's widths, a few seeds);
3. the relative error ``||Theta_emp - Theta_inf||_F / ||Theta_inf||_F`` on points of the circle,
   over widths and seeds, with its fitted log-log slope (theory: ``-1/2``, the central limit
   theorem over the last hidden layer's units).
"""

from __future__ import annotations

import numpy as np
import torch

from ..layers import mlp
from . import _backend as B
from .figures import figure, power_law, save
from .reference import relu_kernels

TITLE = "Kernel convergence at initialization"
EXPLANATION = (
    "At initialization the empirical NTK of a finite network is random; as the widths grow it "
    "concentrates on the deterministic infinite-width kernel Theta_inf. Left: Jacot et al.'s "
    "Figure 1 setting (depth 4, ReLU, beta = 0.1, x0 = (1, 0), x on the unit circle): the "
    "analytic curve (from torchntk.layers, checked against an independent arc-cosine recursion) "
    "and the kernels of finite networks at two widths. Right: the relative Frobenius error on "
    "points of the circle falls as a power of the width; the theory predicts width^(-1/2) "
    "(dotted line)."
)


def _seed(cfg, *parts: int) -> int:
    return int(np.random.SeedSequence([cfg.seed, 1, *parts]).generate_state(1)[0])


def run(cfg, progress) -> tuple[dict, dict]:
    """Run the study; returns ``(metrics, arrays)``."""
    x0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    gamma = np.linspace(-np.pi, np.pi, cfg.fig1_angles)
    xg = torch.from_numpy(np.stack([np.cos(gamma), np.sin(gamma)], 1))
    spec_inf = mlp(1, cfg.depth, 1, b_std=cfg.b_std)
    theta_fig1 = B.infinite_ntk(spec_inf, x0, xg)[0].cpu().numpy()
    _, ref = relu_kernels(x0.numpy(), xg.numpy(), depth=cfg.depth, W_std=1.0, b_std=cfg.b_std)
    fig1_err = float(np.max(np.abs(theta_fig1 - ref[0])))

    rows = np.zeros((len(cfg.fig1_widths), cfg.fig1_seeds, cfg.fig1_angles))
    bar = progress(total=len(cfg.fig1_widths) * cfg.fig1_seeds + len(cfg.conv_widths) * cfg.conv_seeds,
                   desc="convergence")
    for i, w in enumerate(cfg.fig1_widths):
        spec = mlp(w, cfg.depth, 1, b_std=cfg.b_std)
        for s in range(cfg.fig1_seeds):
            net = B.build_module(spec, 2, _seed(cfg, 0, w, s))
            rows[i, s] = B.ntk_row_jvp(net, x0, xg).cpu().numpy()
            del net
            bar.update()
    fig1_rel = np.linalg.norm(rows - theta_fig1, axis=-1) / np.linalg.norm(theta_fig1)

    g = np.linspace(-np.pi, np.pi, cfg.conv_points, endpoint=False)
    xp = torch.from_numpy(np.stack([np.cos(g), np.sin(g)], 1))
    theta_inf = B.infinite_ntk(spec_inf, xp).cpu().numpy()
    errors = np.zeros((len(cfg.conv_widths), cfg.conv_seeds))
    for i, w in enumerate(cfg.conv_widths):
        spec = mlp(w, cfg.depth, 1, b_std=cfg.b_std)
        for s in range(cfg.conv_seeds):
            net = B.build_module(spec, 2, _seed(cfg, 1, w, s))
            emp = B.empirical_ntk(net, xp).cpu().numpy()
            errors[i, s] = np.linalg.norm(emp - theta_inf) / np.linalg.norm(theta_inf)
            bar.update()
    bar.close()
    mean_err = errors.mean(1)
    slope, _ = np.polyfit(np.log(cfg.conv_widths), np.log(mean_err), 1)
    metrics = {
        "fig1_max_abs_error_vs_reference": fig1_err,
        "fig1_theta_at_x0": float(theta_fig1[np.argmin(np.abs(gamma))]),
        "fig1_relative_error_by_width": {str(w): float(np.median(fig1_rel[i])) for i, w in enumerate(cfg.fig1_widths)},
        "error_by_width": {str(w): float(m) for w, m in zip(cfg.conv_widths, mean_err)},
        "slope": float(slope),
        "theory_slope": -0.5,
    }
    arrays = {"gamma": gamma, "theta_fig1": theta_fig1, "reference": ref[0], "rows": rows,
              "fig1_widths": np.asarray(cfg.fig1_widths), "widths": np.asarray(cfg.conv_widths),
              "errors": errors}
    return metrics, arrays


def plot(arrays: dict, metrics: dict, fig_dir) -> list:
    """Draw the study's figure; returns the written paths."""
    fig, (ax1, ax2) = figure(2)
    gamma = arrays["gamma"]
    styles = ["--", "-"]
    for i, w in enumerate(arrays["fig1_widths"]):
        for s, row in enumerate(arrays["rows"][i]):
            ax1.plot(gamma, row, styles[i % 2], color=f"C{i + 1}", lw=0.9, alpha=0.75,
                     label=f"width {int(w)}, at init" if s == 0 else None)
    ax1.plot(gamma, arrays["theta_fig1"], "k-", lw=2.2, label=r"$\Theta_\infty$ (analytic)")
    ax1.set_xlabel(r"angle $\gamma$ of $x = (\cos\gamma, \sin\gamma)$")
    ax1.set_ylabel(r"$\Theta(x_0, x)$")
    ax1.set_title("Fig. 1 setting: depth 4, ReLU, " + r"$\beta = 0.1$")
    ax1.set_xticks([-np.pi, -np.pi / 2, 0, np.pi / 2, np.pi], [r"$-\pi$", r"$-\pi/2$", "0", r"$\pi/2$", r"$\pi$"])
    ax1.legend(fontsize=8)
    err = arrays["errors"]
    power_law(ax2, arrays["widths"], err.mean(1), spread=err.std(1), label="mean over seeds")
    ax2.plot([], [], ":", color="gray", label="theory: slope -1/2")
    ax2.set_xlabel("width n (hidden units per layer)")
    ax2.set_ylabel(r"$\|\Theta_{emp} - \Theta_\infty\|_F \,/\, \|\Theta_\infty\|_F$")
    ax2.set_title("error of the empirical NTK at init")
    ax2.legend(fontsize=8)
    return [save(fig, f"{fig_dir}/convergence.png")]
