"""Study (d): eigenmodes. The residual decays along the kernel's eigenvectors at rates lambda_k / N.

Write the network's own kernel at initialization as ``Theta_0 = Q diag(lambda) Q^T``. Under the
linear dynamics the residual's components ``Q^T (f_t - y)`` decay independently, mode ``k`` as
``exp(-t lambda_k / N)`` (gradient flow) or ``(1 - eta lambda_k / N)^k`` (gradient descent with step
``eta``, ``t = eta k``): large-eigenvalue modes are learned first. The study takes the widest
network of the sweep, projects its residual on ``Q`` over time and fits each mode's decay rate.

Rates are held against the theory only for modes with ``lambda_k / lambda_max >= 0.1`` (and an
initial component of at least 5 % of the residual, which the leakage cannot swamp): a slow
mode needs a long time to decay, during which the (slightly) drifting kernel mixes it with the
fast ones, and its small initial component is soon dominated by that leakage.

The tolerance of each held mode is set by the kernel's own motion: by Weyl's inequality an
eigenvalue of the kernel during training stays within ``||Theta_T - Theta_0||_2`` of
``lambda_k`` (``Theta_T`` the kernel after training), so the rate of mode ``k`` may miss
``lambda_k / N`` by up to ``||Theta_T - Theta_0||_2 / lambda_k`` in relative terms; a further
``MIXING`` (5%) covers the rotation of the eigenvectors, which leaks other modes' components
into the projection. A miss beyond ``||Theta_T - Theta_0||_2 / lambda_k + MIXING`` is not
explained by the drift, and the check fails.
"""

from __future__ import annotations

import numpy as np

from .figures import figure, save

TITLE = "Eigenmodes: large eigenvalues are learned first"
EXPLANATION = (
    "The training residual of the widest network, projected on the eigenvectors of its kernel "
    "at initialization, Theta_0 = Q diag(lambda) Q^T (dots), against exp(-t lambda_k / N) "
    "(lines). Each component decays on its own, at a rate set by its eigenvalue: the modes are "
    "learned in eigenvalue order. Measured rates are compared with lambda_k / N only for "
    "modes with lambda_k / lambda_max >= 0.1 (and an initial component of at least 5% of the "
    "residual): slow modes need a long time, during which the "
    "slight drift of the kernel leaks the fast modes' components into theirs, so their decay "
    "stops following one exponential. Right: fitted rate against lambda_k / N."
)

THRESHOLD = 0.1
MIN_SHARE = 0.05
MIXING = 0.05


def _fit_rate(t: np.ndarray, comp: np.ndarray, rate_hint: float) -> float:
    """Decay rate of ``|comp(t) / comp(0)|``: least-squares slope of its log through the origin.

    The window is the first two predicted e-folds, ``t <= 2 / rate_hint`` (at least the first
    recorded time after 0): later, the small leakage from other modes sets a floor.
    """
    ratio = np.abs(comp / comp[0])
    n = max(int(np.searchsorted(t, 2.0 / rate_hint, side="right")), 2)
    tt, lr = t[1:n], np.log(np.maximum(ratio[1:n], 1e-300))
    return float(-(tt @ lr) / (tt @ tt))


def compute(sweep: dict) -> tuple[dict, dict]:
    theta0 = sweep["theta0"][-1, 0]
    N = theta0.shape[0]
    lam, Q = np.linalg.eigh(theta0)
    lam, Q = lam[::-1], Q[:, ::-1]
    lr = float(sweep["learning_rate"])
    t = sweep["record_steps"] * lr
    resid = sweep["f_train"][-1, 0][..., 0] - sweep["y_train"][:, 0]      # (T, N)
    comp = resid @ Q                                                      # (T, N)
    rel = lam / lam[0]
    # held: eigenvalue ratio >= THRESHOLD, and a component of its own that is not negligible
    # (>= MIN_SHARE of the initial residual): a tiny component is swamped by leakage from the
    # large ones as soon as the kernel moves, whatever its eigenvalue
    share = np.abs(comp[0]) / np.linalg.norm(comp[0])
    held = np.flatnonzero((rel >= THRESHOLD) & (share >= MIN_SHARE))
    excluded = np.flatnonzero((rel >= THRESHOLD) & (share < MIN_SHARE))
    theory = lam / N
    theory_gd = -np.log1p(-lr * np.maximum(lam, 0) / N) / lr
    rates = np.array([_fit_rate(t, comp[:, k], max(theory_gd[k], 1e-12)) for k in range(N)])
    err = np.abs(rates[held] - theory_gd[held]) / theory_gd[held]
    # Weyl: every eigenvalue of the kernel during training is within ||Theta_T - Theta_0||_2 of its start
    moved = float(np.linalg.norm(sweep["thetaT"][-1, 0] - theta0, 2))
    allowance = moved / lam[held] + MIXING
    # ordered: a mode with a clearly larger eigenvalue (ratio > 1.25) is learned faster
    ordered = all(rates[a] > rates[b] for a in held for b in held if lam[a] > 1.25 * lam[b])
    lam_inf = np.linalg.eigvalsh(sweep["theta_inf"])[::-1]
    metrics = {
        "width": int(sweep["widths"][-1]),
        "held_modes": int(len(held)),
        "excluded_small_component": excluded.tolist(),
        "eigenvalues_theta0": lam[: max(len(held), 6)].tolist(),
        "eigenvalues_theta_inf": lam_inf[: max(len(held), 6)].tolist(),
        "measured_rates": rates[held].tolist(),
        "theory_rates_lambda_over_N": theory[held].tolist(),
        "theory_rates_gradient_descent": theory_gd[held].tolist(),
        "max_relative_rate_error": float(err.max()),
        "relative_rate_errors": err.tolist(),
        "kernel_motion_spectral": moved,
        "rate_error_allowance": allowance.tolist(),
        "rates_within_allowance": bool((err <= allowance).all()),
        "learned_in_eigenvalue_order": bool(ordered),
        "threshold": THRESHOLD,
        "min_component_share": MIN_SHARE,
    }
    arrays = {"t": t, "comp": comp, "lam": lam, "rates": rates, "held": held, "learning_rate": np.asarray(lr),
              "record_steps": sweep["record_steps"], "N": np.asarray(N)}
    return metrics, arrays


def plot(arrays: dict, metrics: dict, fig_dir) -> list:
    fig, (ax1, ax2) = figure(2)
    t, comp, lam, N = arrays["t"], arrays["comp"], arrays["lam"], int(arrays["N"])
    lr = float(arrays["learning_rate"])
    shown = [k for k in range(min(6, len(lam)))]
    for c, k in enumerate(shown):
        pred = np.abs(comp[0, k]) * (1 - lr * lam[k] / N) ** arrays["record_steps"]
        ax1.plot(t, np.abs(comp[:, k]), "o", ms=3, color=f"C{c}",
                 label=rf"$k={k + 1}$, $\lambda_k/\lambda_{{max}}={lam[k] / lam[0]:.2f}$")
        ax1.plot(t, np.maximum(pred, 1e-12), "-", color=f"C{c}", alpha=0.7)
    ax1.set_yscale("log")
    ax1.set_ylim(max(1e-6, np.abs(comp[:, shown]).min() / 2), None)
    ax1.set_xlabel(r"training time $t = \eta k$")
    ax1.set_ylabel(r"$|q_k^T (f_t - y)|$")
    ax1.set_title(r"residual per eigenmode (lines: $(1-\eta\lambda_k/N)^k \approx e^{-t\lambda_k/N}$)", fontsize=9)
    ax1.legend(fontsize=7)
    held = np.zeros(len(lam), bool)
    held[arrays["held"]] = True
    ax2.loglog(lam[held] / N, arrays["rates"][held], "o", label=r"held: $\lambda_k/\lambda_{max} \geq 0.1$, own share $\geq 5\%$")
    ax2.loglog(lam[~held] / N, np.maximum(arrays["rates"][~held], 1e-6), "x", color="gray",
               label="slow modes (not held)")
    grid = np.geomspace(lam.min() / N, lam.max() / N, 20)
    ax2.loglog(grid, grid, "k:", label=r"rate $= \lambda_k / N$")
    ax2.set_xlabel(r"$\lambda_k / N$")
    ax2.set_ylabel("fitted decay rate")
    ax2.set_title("decay rate per mode")
    ax2.legend(fontsize=7)
    return [save(fig, f"{fig_dir}/modes.png")]
