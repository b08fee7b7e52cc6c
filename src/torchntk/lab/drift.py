"""Study (b): lazy training. The kernel barely moves during training, less so the wider the net.

For every network of the sweep (:mod:`torchntk.lab.sweep`), the relative drift of its empirical
NTK on the training points, ``||Theta_T - Theta_0||_F / ||Theta_0||_F`` after the whole run,
against the width; the theory bounds it by ``O(width^(-1/2))`` for a fixed training time. The
:class:`~torchntk.lab.DriftTracker` histories show the drift growing during training.
"""

from __future__ import annotations

import numpy as np

from .figures import figure, power_law, save

TITLE = "Lazy training: kernel drift"
EXPLANATION = (
    "Each network is trained on the same 16 points of the circle for the same time. Its "
    "empirical NTK on those points moves during training, but by a relative amount that falls "
    "with the width (left, log-log; the theory bounds it by width^(-1/2), dotted). Right: the "
    "drift along training, recorded by torchntk.lab.DriftTracker, for each width (mean over "
    "seeds): the wide networks stay in the kernel (lazy) regime throughout."
)


#: Legend of the dotted line: the theory gives an upper bound of this order, not the slope.
DRIFT_BOUND_LABEL = "theory: bound O(width^-1/2) (the drift may fall faster)"


def compute(sweep: dict) -> tuple[dict, dict]:
    """Metrics and arrays from the sweep's kernels."""
    t0, tT = sweep["theta0"], sweep["thetaT"]
    drift = np.linalg.norm(tT - t0, axis=(-2, -1)) / np.linalg.norm(t0, axis=(-2, -1))
    mean = drift.mean(1)
    slope, _ = np.polyfit(np.log(sweep["widths"]), np.log(mean), 1)
    metrics = {
        "drift_by_width": {str(int(w)): float(m) for w, m in zip(sweep["widths"], mean)},
        "slope": float(slope),
        "theory_bound_slope": -0.5,  # drift <= C width^(-1/2): a bound, not a predicted slope
        "training_time": float(sweep["learning_rate"] * (sweep["cost"].shape[-1] - 1)),
    }
    arrays = {"widths": sweep["widths"], "drift": drift, "track_steps": sweep["track_steps"],
              "track_drift": sweep["track_drift"], "track_alignment": sweep["track_alignment"],
              "learning_rate": sweep["learning_rate"]}
    return metrics, arrays


def plot(arrays: dict, metrics: dict, fig_dir) -> list:
    fig, (ax1, ax2, ax3) = figure(3, width=4.6)
    d = arrays["drift"]
    power_law(ax1, arrays["widths"], d.mean(1), spread=d.std(1), label="after training")
    ax1.plot([], [], ":", color="gray", label=DRIFT_BOUND_LABEL)
    ax1.set_xlabel("width n")
    ax1.set_ylabel(r"$\|\Theta_T - \Theta_0\|_F / \|\Theta_0\|_F$")
    ax1.set_title("relative kernel drift vs width")
    ax1.legend(fontsize=8)
    t = arrays["track_steps"] * float(arrays["learning_rate"])
    for i, w in enumerate(arrays["widths"]):
        ax2.plot(t[1:], arrays["track_drift"][i][1:], "o-", ms=3, label=f"n = {int(w)}")
        ax3.plot(t, arrays["track_alignment"][i], "o-", ms=3, label=f"n = {int(w)}")
    ax2.set_yscale("log")
    ax2.set_xlabel(r"training time $t = \eta k$")
    ax2.set_ylabel("relative drift from init")
    ax2.set_title("DriftTracker: drift during training")
    ax2.legend(fontsize=7, ncol=2)
    ax3.set_xlabel(r"training time $t = \eta k$")
    ax3.set_ylabel(r"$\langle\Theta_t, yy^T\rangle / (\|\Theta_t\| \|yy^T\|)$")
    ax3.set_title("DriftTracker: kernel-target alignment")
    ax3.legend(fontsize=7, ncol=2)
    return [save(fig, f"{fig_dir}/drift.png")]
