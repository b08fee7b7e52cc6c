"""Study (c): trained networks against the closed-form predictions of kernel gradient descent.

For each network of the sweep, its outputs on the training and held-out points at the recorded
steps are compared with ``torchntk.dynamics.mse`` predictions (gradient descent with the same
step ``eta``; ``f0`` = the network's own outputs at initialization) from two kernels:

- ``Theta_inf``, the infinite-width NTK of the spec (the theory's limit);
- ``Theta_0``, the network's own empirical NTK at initialization (the linearized network).

The RMSE over all recorded times and points falls with the width: the network follows its
linearization more closely (``~ 1/n``) and ``Theta_inf``'s prediction (``~ n^(-1/2)``).
The cost ``C`` is non-increasing along training. The networks that left the kernel regime
(their tracker's drift passed the sweep's limit, 0.1) are named with the step where it happened.
"""

from __future__ import annotations

import numpy as np
import torch

from . import _backend as B
from .figures import figure, power_law, save

TITLE = "Agreement: trained networks vs kernel predictions"
EXPLANATION = (
    "The closed form f_t - y = (I - eta Theta / N)^k (f_0 - y) (and its held-out counterpart) "
    "predicts the whole training trajectory from a kernel. Left: RMSE between the trained "
    "network's outputs and the prediction, over all recorded times, for the infinite-width "
    "kernel and for the network's own kernel at initialization (its linearization), on "
    "training and held-out points. Both fall with the width. Middle: the network (dots) and "
    "the Theta_inf prediction (lines) on the held-out circle at several times for the widest "
    "network. Right: the cost C along training, non-increasing for every width."
    " Networks whose kernel drifted by more than 10% during training (the DriftTracker alarm) are "
    "listed with the step where it happened (metrics: left_kernel_regime)."
)


def _predict(kernel, kernel_test, sweep, i, s):
    lr = float(sweep["learning_rate"])
    steps = torch.from_numpy(sweep["record_steps"].astype(np.float64))
    pred = B.mse_predictor(torch.from_numpy(kernel), torch.from_numpy(sweep["y_train"]),
                           f0_train=torch.from_numpy(sweep["f_train"][i, s, 0]), learning_rate=lr)
    f_tr, f_te = pred(steps, torch.from_numpy(kernel_test), torch.from_numpy(sweep["f_test"][i, s, 0]))
    return f_tr.reshape(len(steps), -1).cpu().numpy(), f_te.reshape(len(steps), -1).cpu().numpy()


def _alarms(sweep: dict) -> dict:
    """``{width: [step or None per seed]}``: where each network's kernel drift passed the limit."""
    steps = sweep.get("alarm_step")
    if steps is None:  # a sweep recorded before the alarm existed
        return {}
    return {str(int(w)): [int(k) if k >= 0 else None for k in row] for w, row in zip(sweep["widths"], steps)}


def compute(sweep: dict) -> tuple[dict, dict]:
    W, S = sweep["f_train"].shape[:2]
    rmse = np.zeros((2, 2, W, S))          # (kernel: inf, emp) x (train, test) x widths x seeds
    pred_inf_test = None
    for i in range(W):
        for s in range(S):
            net_tr = sweep["f_train"][i, s][..., 0]
            net_te = sweep["f_test"][i, s][..., 0]
            for k, (K, Kt) in enumerate([(sweep["theta_inf"], sweep["theta_inf_test"]),
                                         (sweep["theta0"][i, s], sweep["theta0_test"][i, s])]):
                p_tr, p_te = _predict(K, Kt, sweep, i, s)
                rmse[k, 0, i, s] = np.sqrt(np.mean((net_tr - p_tr) ** 2))
                rmse[k, 1, i, s] = np.sqrt(np.mean((net_te - p_te) ** 2))
                if k == 0 and i == W - 1 and s == 0:
                    pred_inf_test = p_te
    widths = sweep["widths"]
    mean = rmse.mean(-1)
    slopes = {}
    for k, kn in enumerate(("inf", "emp")):
        for j, split in enumerate(("train", "test")):
            slopes[f"{kn}_{split}"] = float(np.polyfit(np.log(widths), np.log(mean[k, j]), 1)[0])
    costs = sweep["cost"]
    increase = np.max(np.diff(costs, axis=-1) / np.maximum(costs[..., :-1], 1e-300))
    improving = all(slopes[k] < -0.2 and mean.reshape(4, -1)[n][-1] < mean.reshape(4, -1)[n][0]
                    for n, k in enumerate(("inf_train", "inf_test", "emp_train", "emp_test")))
    metrics = {
        "rmse_theta_inf_train": dict(zip(map(str, widths.tolist()), mean[0, 0].tolist())),
        "rmse_theta_inf_test": dict(zip(map(str, widths.tolist()), mean[0, 1].tolist())),
        "rmse_theta_0_train": dict(zip(map(str, widths.tolist()), mean[1, 0].tolist())),
        "rmse_theta_0_test": dict(zip(map(str, widths.tolist()), mean[1, 1].tolist())),
        "slopes": slopes,
        "improving_with_width": bool(improving),
        "max_relative_cost_increase": float(increase),
        "cost_non_increasing": bool(increase <= 1e-9),
        "final_cost_widest": float(costs[-1, :, -1].mean()),
        "left_kernel_regime": _alarms(sweep),
    }
    arrays = {"widths": widths, "rmse": rmse, "gamma_test": sweep["gamma_test"],
              "gamma_train": sweep["gamma_train"], "y_train": sweep["y_train"],
              "f_test_widest": sweep["f_test"][-1, 0][..., 0], "pred_inf_test_widest": pred_inf_test,
              "record_steps": sweep["record_steps"], "learning_rate": sweep["learning_rate"],
              "cost": costs, "y_test": sweep["y_test"]}
    return metrics, arrays


def plot(arrays: dict, metrics: dict, fig_dir) -> list:
    fig, (ax1, ax2, ax3) = figure(3, width=4.6)
    r, widths = arrays["rmse"], arrays["widths"]
    for k, (kn, color) in enumerate(((r"$\Theta_\infty$", "C0"), (r"$\Theta_0$ (own, init)", "C3"))):
        for j, (split, marker) in enumerate((("train", "o"), ("held-out", "s"))):
            power_law(ax1, widths, r[k, j].mean(-1), label=f"{kn}, {split}", color=color, marker=marker,
                      theory_slope=None)
    ax1.set_xlabel("width n")
    ax1.set_ylabel("RMSE(network, prediction)")
    ax1.set_title("agreement over the whole training run")
    ax1.legend(fontsize=7)
    g, lr, steps = arrays["gamma_test"], float(arrays["learning_rate"]), arrays["record_steps"]
    order = np.argsort(g)
    picks = np.unique(np.linspace(0, len(steps) - 1, 4).round().astype(int))
    for c, p in enumerate(picks):
        ax2.plot(g[order], arrays["pred_inf_test_widest"][p][order], "-", color=f"C{c}",
                 label=f"t = {steps[p] * lr:.3g}")
        ax2.plot(g[order], arrays["f_test_widest"][p][order], ".", color=f"C{c}", ms=5)
    ax2.plot(arrays["gamma_train"], arrays["y_train"][:, 0], "kx", label="training targets")
    ax2.set_xlabel(r"angle $\gamma$ on the circle")
    ax2.set_ylabel(r"$f_t(x)$")
    ax2.set_title(f"width {int(widths[-1])}: network (dots) vs " + r"$\Theta_\infty$ (lines)")
    ax2.legend(fontsize=7)
    cost = arrays["cost"]
    t = np.arange(cost.shape[-1]) * lr
    for i, w in enumerate(widths):
        ax3.plot(t, cost[i].mean(0), label=f"n = {int(w)}")
    ax3.set_yscale("log")
    ax3.set_xlabel(r"training time $t = \eta k$")
    ax3.set_ylabel(r"cost $C = \frac{1}{2N}\sum\|f - y\|^2$")
    ax3.set_title("cost along gradient descent")
    ax3.legend(fontsize=7, ncol=2)
    return [save(fig, f"{fig_dir}/agreement.png")]
