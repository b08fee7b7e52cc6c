"""The physics checks of the demo: each a named claim of the theory, tested on the metrics."""

from __future__ import annotations

from typing import Any


def _check(name: str, ok: bool, value: Any, expected: str) -> dict:
    return {"check": name, "passed": bool(ok), "value": value, "expected": expected}


def evaluate(metrics: dict[str, dict]) -> list[dict]:
    """The list of checks that apply to the studies present in ``metrics``."""
    out: list[dict] = []
    m = metrics.get("convergence")
    if m:
        out.append(_check("Fig. 1 analytic kernel = independent arc-cosine recursion",
                          m["fig1_max_abs_error_vs_reference"] <= 1e-8,
                          m["fig1_max_abs_error_vs_reference"], "max |difference| <= 1e-8"))
        out.append(_check("empirical NTK error falls as width^(-1/2)", -0.7 <= m["slope"] <= -0.35,
                          m["slope"], "log-log slope in [-0.7, -0.35]"))
        for w, err in m["fig1_relative_error_by_width"].items():
            if int(w) >= 10000:
                out.append(_check(f"width-{w} empirical kernel on the Fig. 1 curve", err <= 0.05,
                                  err, "relative error <= 5%"))
    m = metrics.get("drift")
    if m:
        out.append(_check("kernel drift falls with width (lazy training)", m["slope"] <= -0.4,
                          m["slope"], "log-log slope <= -0.4"))
    m = metrics.get("agreement")
    if m:
        out.append(_check("networks agree better with kernel predictions as width grows",
                          m["improving_with_width"], m["slopes"], "every RMSE slope < -0.2"))
        out.append(_check("cost non-increasing along gradient descent", m["cost_non_increasing"],
                          m["max_relative_cost_increase"], "relative increase <= 1e-9"))
        left = m.get("left_kernel_regime", {})
        if left:
            widest = max(left, key=int)
            out.append(_check(f"the widest networks (n = {widest}) stay in the kernel regime",
                              all(k is None for k in left[widest]), left[widest],
                              "no DriftTracker alarm (kernel drift <= 0.1) in any seed"))
    m = metrics.get("modes")
    if m:
        out.append(_check("modes learned in eigenvalue order", m["learned_in_eigenvalue_order"],
                          m["measured_rates"], "rates ordered as eigenvalues"))
        # the network is trained by gradient descent with step eta: the rate per unit time
        # t = eta k of mode k is -log(1 - eta lambda_k / N) / eta (-> lambda_k / N as eta -> 0)
        # each mode's tolerance is what the kernel's own motion explains (Weyl's inequality:
        # ||Theta_T - Theta_0||_2 / lambda_k) plus 5% for the eigenvectors' rotation; see lab/modes.py
        if "rate_error_allowance" in m:
            errors, allowed = m["relative_rate_errors"], m["rate_error_allowance"]
            out.append(_check("decay rates = -log(1 - eta lambda_k / N) / eta, the gradient-descent rates "
                              "(modes with lambda_k / lambda_max >= 0.1), within what the kernel's drift explains",
                              all(e <= a for e, a in zip(errors, allowed)),
                              {"errors": errors, "allowed": allowed},
                              "each relative error against theory_rates_gradient_descent <= "
                              "||Theta_T - Theta_0||_2 / lambda_k + 0.05"))
        else:  # metrics written before the allowance was recorded
            out.append(_check("decay rates = -log(1 - eta lambda_k / N) / eta, the gradient-descent rates "
                              "(modes with lambda_k / lambda_max >= 0.1)",
                              m["max_relative_rate_error"] <= 0.3, m["max_relative_rate_error"],
                              "relative error <= 30% against theory_rates_gradient_descent"))
    m = metrics.get("generalization")
    if m:
        out.append(_check("kernel regression (t = inf) classifies digits",
                          m["kernel_regression_accuracy_t_inf"] >= 0.85,
                          m["kernel_regression_accuracy_t_inf"], "held-out accuracy >= 0.85"))
        nets = m.get("network_test_accuracy_final", {})
        if nets:
            widest = max(nets, key=int)
            out.append(_check(f"trained networks classify digits (widest, n = {widest})", nets[widest] >= 0.85,
                              nets[widest], "held-out accuracy >= 0.85"))
            preds = m["kernel_prediction_accuracy_final"]
            gap = abs(nets[widest] - preds[widest])
            # the network and its Theta_inf prediction at the same training time: O(n^-1/2) apart
            out.append(_check(f"the widest network's accuracy matches its kernel prediction (n = {widest})",
                              gap <= 0.05, gap, "|network - Theta_inf prediction| held-out accuracy <= 0.05"))
    m = metrics.get("finite")
    if m:
        # the infinite-width theory predicts no fluctuations at all (relative error 1)
        out.append(_check("1/n corrections track Monte Carlo over finite networks (NTK variance, NNGP kurtosis), "
                          "where the infinite-width prediction (no fluctuations) misses them",
                          m["corrected_tracks_monte_carlo"],
                          {"ntk_variance": m["ntk_relative_variance_max_error_valid"],
                           "nngp_kurtosis": m["nngp_kurtosis_max_error_valid"], "cells": m["cells_checked"]},
                          m["track_rule"]))
    return out
