"""Study (f): finite width, the 1/n theory against Monte Carlo over real networks.

Three measurements, all at inputs on the unit circle scaled to ``n0 = 2``:

1. the NTK's relative variance ``E[Theta^2] / E[Theta]^2 - 1`` of ReLU MLPs (``W_std = sqrt 2``, no
   bias, the critical ReLU network) at each width and depth: infinite width predicts 0, the 1/n
   theory of :func:`torchntk.finite.corrections` its leading term, and batched Monte Carlo over
   real networks (:func:`torchntk.finite.monte_carlo_moments`) measures it;
2. the same ratio and the NNGP's ``E[f^4] / (3 E[f^2]^2) - 1`` against ``(L - 1) / n`` (hidden
   layers over width): the collapse of Hanin & Nica (``exp(c (L - 1) / n) - 1``), with the exact
   finite-width NNGP value ``prod_l (1 + 5 / n_l) - 1``;
3. the kernel's drift during training of an erf network: ``||Theta_t - Theta_0||_F`` measured along
   gradient descent and predicted to first order from the dNTK at initialization
   (:func:`torchntk.finite.predict_kernel_change`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import finite
from .. import layers as L
from . import _backend as B
from .figures import figure, save
from .training import cost

TITLE = "Finite width: the 1/n corrections"
EXPLANATION = (
    "Finite networks are not Gaussian processes: at width n and depth L their output has a "
    "fourth cumulant and their NTK fluctuates from seed to seed, both at order L/n. Left: the "
    "NTK's relative variance E[Theta^2]/E[Theta]^2 - 1 of ReLU networks (W_std = sqrt(2), no bias), "
    "Monte Carlo over real networks (points, two standard errors) against the finite-width theory "
    "(solid: the 1/n corrections with the per-layer factors compounded; dotted: their first order "
    "alone); the infinite-width theory predicts 0. Middle: the same against hidden layers / width, "
    "with the NNGP's E[f^4]/(3 E[f^2]^2) - 1 (exact at any width for ReLU: prod(1 + 5/n) - 1, about "
    "exp(5 (L-1)/n) - 1): the NNGP values of all depths and widths fall on one curve and the NTK's "
    "nearly so (Hanin & Nica); the first order holds while (L-1)/n is small and falls below beyond. "
    "Right: the kernel's drift along gradient descent (erf networks), measured and predicted to "
    "first order from the dNTK at initialization (torchntk.finite.predict_kernel_change)."
)

#: Hidden layers / width up to which the finite-width theory (``corrections``' closure) must match
#: Monte Carlo to ``TRACK_TOLERANCE`` (every cell of the default grid: 7/32 at most; the first
#: order alone is off by about ``2.5 (L - 1) / n`` relative for ReLU, 55% there).
VALID_RATIO, TRACK_TOLERANCE = 1 / 4, 0.1


def _seed(cfg, *parts: int) -> int:
    return int(np.random.SeedSequence([cfg.seed, 6, *parts]).generate_state(1)[0])


def _relu_spec(depth: int, width: int) -> L.Layer:
    return L.mlp(width, depth, 1, W_std=math.sqrt(2.0), b_std=None)


def _samples(cfg, width: int, depth: int) -> int:
    """Networks per (width, depth): the cap, or the weight budget of the cell (at least 200)."""
    return int(max(200, min(cfg.finite_samples, cfg.finite_budget // (width * width * max(depth - 1, 1)))))


def _moments(cfg, bar) -> tuple[dict, dict]:
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)  # |x|^2 / n0 = 1
    widths, depths = cfg.finite_widths, cfg.finite_depths
    shape = (len(depths), len(widths))
    rho_mc, rho_se, rho_th, rho_first, kurt_mc, kurt_se, kurt_th, kurt_exact = (np.zeros(shape) for _ in range(8))
    counts = np.zeros(shape, dtype=np.int64)
    for i, depth in enumerate(depths):
        for j, width in enumerate(widths):
            spec = _relu_spec(depth, width)
            c = finite.corrections(spec, x)
            first = finite.corrections(spec, x, method="first_order")
            s = _samples(cfg, width, depth)
            mc = finite.monte_carlo_moments(spec, x, s, seed=_seed(cfg, depth, width))
            m2, m4 = finite.exact_nngp_moments(spec, x)
            mean2 = float(mc.ntk_mean) ** 2
            rho_mc[i, j] = float(mc.ntk_variance) / mean2
            rho_se[i, j] = float(mc.ntk_variance_se) / mean2
            rho_th[i, j] = float(c.ntk_variance / c.ntk_mean**2)
            rho_first[i, j] = float(first.ntk_variance / first.ntk_infinite**2)
            g2 = float(mc.nngp_mean) ** 2
            kurt_mc[i, j] = float(mc.nngp_cumulant4) / (3 * g2)
            kurt_se[i, j] = float(mc.nngp_cumulant4_se) / (3 * g2)
            kurt_th[i, j] = float(c.nngp_cumulant4 / (3 * c.nngp_mean**2))
            kurt_exact[i, j] = float(m4 / (3 * m2 * m2)) - 1
            counts[i, j] = s
            bar.update()
    ratio = (np.asarray(depths, float)[:, None] - 1) / np.asarray(widths, float)[None, :]
    valid = ratio <= VALID_RATIO
    resolved = valid & (rho_mc > 3 * rho_se)
    err = np.abs(rho_th - rho_mc) / rho_mc
    kerr = np.abs(kurt_th - kurt_mc) / np.maximum(kurt_mc, 1e-300)
    k_resolved = valid & (kurt_mc > 3 * kurt_se)

    def within(e, se_rel):
        return e <= TRACK_TOLERANCE + 2 * se_rel

    ok = bool(np.all(within(err[resolved], (rho_se / rho_mc)[resolved]))) and bool(
        np.all(within(kerr[k_resolved], (kurt_se / np.maximum(kurt_mc, 1e-300))[k_resolved])))
    metrics = {
        "ntk_relative_variance_max_error_valid": float(err[resolved].max()) if resolved.any() else None,
        "nngp_kurtosis_max_error_valid": float(kerr[k_resolved].max()) if k_resolved.any() else None,
        "cells_checked": int(resolved.sum() + k_resolved.sum()),
        "infinite_width_error": 1.0,  # it predicts 0 for both ratios
        "corrected_tracks_monte_carlo": ok and bool(resolved.any()),
        "track_rule": f"hidden layers/width <= 1/{round(1 / VALID_RATIO)}: |theory - MC| / MC <= {TRACK_TOLERANCE} + 2 SE",
        "networks_drawn": int(counts.sum()),
    }
    arrays = {"widths": np.asarray(widths), "depths": np.asarray(depths), "rho_mc": rho_mc, "rho_se": rho_se,
              "rho_th": rho_th, "rho_first": rho_first, "kurt_mc": kurt_mc, "kurt_se": kurt_se, "kurt_th": kurt_th,
              "kurt_exact": kurt_exact, "samples": counts}
    return metrics, arrays


def _drift(cfg, bar) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(_seed(cfg, 99))
    angles = torch.rand(cfg.finite_drift_train + 4, generator=g, dtype=torch.float64) * 2 * math.pi
    pts = torch.stack([torch.cos(angles), torch.sin(angles)], 1) * math.sqrt(2.0)
    x_train, x = pts[: cfg.finite_drift_train], pts[cfg.finite_drift_train:]
    y = torch.sin(2 * angles[: cfg.finite_drift_train])[:, None]
    n = x_train.shape[0]
    steps, every = cfg.finite_drift_steps, max(1, cfg.finite_drift_steps // 10)
    recorded = np.arange(0, steps + 1, every)
    widths = cfg.finite_drift_widths
    measured, predicted = np.zeros((len(widths), len(recorded))), np.zeros((len(widths), len(recorded)))
    for i, w in enumerate(widths):
        spec = L.mlp(w, 3, 1, activation=L.Erf, W_std=1.5, b_std=cfg.b_std)
        net = B.build_module(spec, 2, _seed(cfg, 7, w))
        theta_train = B.infinite_ntk(spec, x_train)
        eta = 0.5 * n / float(torch.linalg.eigvalsh(theta_train).max())  # half the stable step
        theta0 = B.empirical_ntk(net, x)
        r0 = net(x_train).detach() - y
        pred = finite.predict_kernel_change(net, x, x_train, r0, torch.as_tensor(recorded * eta), mode="mean",
                                            normalization="mean")
        predicted[i] = pred.flatten(1).norm(dim=1).numpy() / float(theta0.norm())
        params = [p for p in net.parameters() if p.requires_grad]
        for k in range(steps + 1):
            if k % every == 0:
                measured[i, k // every] = float((B.empirical_ntk(net, x) - theta0).norm() / theta0.norm())
            if k == steps:
                break
            grads = torch.autograd.grad(cost(net(x_train), y), params)
            with torch.no_grad():
                for p, gr in zip(params, grads):
                    p.sub_(eta * gr)
        bar.update()
    early = max(1, len(recorded) // 5)  # the first fifth of the run
    rel = np.abs(predicted[:, early] - measured[:, early]) / measured[:, early]
    metrics = {"drift_prediction_error_early": {str(w): float(e) for w, e in zip(widths, rel)},
               "drift_measured_final": {str(w): float(v) for w, v in zip(widths, measured[:, -1])},
               "drift_predicted_final": {str(w): float(v) for w, v in zip(widths, predicted[:, -1])}}
    return metrics, {"drift_widths": np.asarray(widths), "drift_steps": recorded, "drift_measured": measured,
                     "drift_predicted": predicted}


def run(cfg, progress) -> tuple[dict, dict]:
    """Run the study; returns ``(metrics, arrays)``."""
    bar = progress(total=len(cfg.finite_widths) * len(cfg.finite_depths) + len(cfg.finite_drift_widths),
                   desc="finite width")
    m1, a1 = _moments(cfg, bar)
    m2, a2 = _drift(cfg, bar)
    bar.close()
    return {**m1, **m2}, {**a1, **a2}


def plot(arrays: dict, metrics: dict, fig_dir) -> list:
    """Draw the study's figure; returns the written paths."""
    fig, (ax1, ax2, ax3) = figure(3, width=5.0)
    widths, depths = arrays["widths"], arrays["depths"]
    for i, d in enumerate(depths):
        c = f"C{i}"
        ax1.errorbar(widths, arrays["rho_mc"][i], yerr=2 * arrays["rho_se"][i], fmt="o", color=c, capsize=3,
                     label=f"depth {int(d)}, Monte Carlo")
        ax1.plot(widths, arrays["rho_th"][i], "-", color=c, alpha=0.8)
        if "rho_first" in arrays:
            ax1.plot(widths, arrays["rho_first"][i], ":", color=c, alpha=0.8)
        ratio = (d - 1) / widths
        ax2.errorbar(ratio, arrays["rho_mc"][i], yerr=2 * arrays["rho_se"][i], fmt="o", color=c, capsize=2,
                     label=f"NTK, depth {int(d)}" if i == 0 else None)
        ax2.plot(ratio, arrays["rho_th"][i], "-", color=c, lw=1)
        ax2.errorbar(ratio, arrays["kurt_mc"][i], yerr=2 * arrays["kurt_se"][i], fmt="s", color=c, mfc="none",
                     capsize=2, label=r"NNGP $E f^4/3(E f^2)^2 - 1$" if i == 0 else None)
        ax2.plot(ratio, arrays["kurt_th"][i], "--", color=c, lw=1)
        ax2.plot(ratio, arrays["kurt_exact"][i], ":", color=c, lw=1.2)
    ax1.plot([], [], "k-", label="finite-width theory (closure)")
    ax1.plot([], [], "k:", label="first order in 1/n")
    ax1.set_xscale("log"), ax1.set_yscale("log")
    ax1.set_xticks(widths, [str(int(w)) for w in widths])
    ax1.tick_params(axis="x", which="minor", labelbottom=False)
    ax1.set_xlabel("width n"), ax1.set_ylabel(r"$E[\Theta^2]/E[\Theta]^2 - 1$")
    ax1.set_title("NTK fluctuations (infinite width: 0)")
    ax1.legend(fontsize=7)
    ax2.plot([], [], "k-", lw=1, label="NTK, closure")
    ax2.plot([], [], "k--", lw=1, label="NNGP, closure")
    ax2.plot([], [], "k:", lw=1.2, label="NNGP, exact: prod(1 + 5/n) - 1")
    ax2.set_xscale("log"), ax2.set_yscale("log")
    ax2.set_xlabel("hidden layers / width (colours: depths as left)"), ax2.set_title("collapse on (L - 1) / n")
    ax2.legend(fontsize=7)
    steps = arrays["drift_steps"]
    for i, w in enumerate(arrays["drift_widths"]):
        c = f"C{i}"
        ax3.plot(steps, arrays["drift_measured"][i], "o-", color=c, ms=3, label=f"width {int(w)}, measured")
        ax3.plot(steps, arrays["drift_predicted"][i], "--", color=c, label="dNTK, first order")
    ax3.set_xlabel("gradient-descent step"), ax3.set_ylabel(r"$\|\Theta_t - \Theta_0\|_F / \|\Theta_0\|_F$")
    ax3.set_title("kernel drift (erf, depth 3)")
    ax3.legend(fontsize=7)
    return [save(fig, f"{fig_dir}/finite_width.png")]
