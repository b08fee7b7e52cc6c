"""The demo's stated numbers: its memory need, the drift legend and the decay-rate check."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from torchntk.lab import LabConfig  # noqa: E402
from torchntk.lab import drift  # noqa: E402
from torchntk.lab.checks import evaluate  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _params(width: int, depth: int, n0: int = 2) -> int:
    """Parameters of the Fig. 1 MLP: n0 -> width -> ... -> 1 (depth affine layers, with biases)."""
    sizes = [n0] + [width] * (depth - 1) + [1]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def test_documented_demo_memory_covers_its_largest_network():
    # the empirical NTK row holds the parameters, a gradient and a forward-mode tangent and
    # product (>= 3 float64 copies; measured 5.6 GiB peak for the full preset's width 10000)
    cfg = LabConfig.preset()
    need = 3 * 8 * _params(max(cfg.fig1_widths), cfg.depth) / 1e9
    text = (ROOT / "docs" / "lab.md").read_text()
    stated = float(re.search(r"full demo needs about \*\*(\d+(?:\.\d+)?) GB\*\*", text).group(1))
    assert stated >= need and stated < 4 * need
    assert re.search(r"full demo needs about \d+ GB of memory", (ROOT / "README.md").read_text())
    quick = LabConfig.preset(quick=True)
    assert 4 * 8 * _params(max(quick.fig1_widths), quick.depth) / 1e9 < 1.0  # "the quick one fits in 1 GB"


def test_drift_legend_calls_the_theory_a_bound(tmp_path, monkeypatch):
    widths = np.array([32.0, 64.0, 128.0])
    arrays = {"widths": widths, "drift": np.array([[0.1, 0.12], [0.05, 0.06], [0.02, 0.03]]),
              "track_steps": np.arange(3), "track_drift": np.full((3, 3), 0.01),
              "track_alignment": np.full((3, 3), 0.5), "learning_rate": np.asarray(0.1)}
    import matplotlib.pyplot as plt

    figs = []
    monkeypatch.setattr(drift, "save", lambda fig, path: figs.append(fig))
    drift.plot(arrays, {}, tmp_path)
    (fig,) = figs
    labels = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    theory = [t for t in labels if "theory" in t]
    assert theory and all("bound" in t and "slope -1/2" not in t for t in theory)
    plt.close("all")


def test_decay_rate_check_names_what_it_compares():
    m = {"learned_in_eigenvalue_order": True, "measured_rates": [1.0], "max_relative_rate_error": 0.1,
         "relative_rate_errors": [0.1], "rate_error_allowance": [0.2]}
    (check,) = [c for c in evaluate({"modes": m}) if "decay rates" in c["check"]]
    assert check["passed"]
    # a 26% miss passes only where the kernel's motion explains it
    m.update(relative_rate_errors=[0.02, 0.26], rate_error_allowance=[0.06, 0.1])
    (failed,) = [c for c in evaluate({"modes": m}) if "decay rates" in c["check"]]
    assert not failed["passed"]
    # the measured rates are compared with the gradient-descent rates -log(1 - eta lambda/N)/eta
    assert "gradient-descent" in check["check"] and "log(1 - eta lambda_k / N) / eta" in check["check"]
    assert "theory_rates_gradient_descent" in check["expected"]


def test_mode_rates_are_exact_for_linear_dynamics_and_the_allowance_is_weyls_bound():
    """A residual that follows (I - eta Theta / N)^k exactly has the theory's rates to round-off;
    a kernel that moved by D has allowance D / lambda_k + 0.05 (Weyl's inequality)."""
    from torchntk.lab import modes

    rng = np.random.default_rng(0)
    N = 12
    A = rng.normal(size=(N, N))
    theta0 = A @ A.T / N + 0.1 * np.eye(N)
    lam, Q = np.linalg.eigh(theta0)
    lr = 0.5 * N / lam[-1]
    steps = np.arange(0, 61)
    r0 = rng.normal(size=N)
    resid = np.stack([Q @ ((1 - lr * lam / N) ** k * (Q.T @ r0)) for k in steps])  # (T, N)
    y = rng.normal(size=(N, 1))
    moved = 0.01 * np.diag(rng.uniform(size=N))
    sweep = {"theta0": theta0[None, None], "thetaT": (theta0 + moved)[None, None], "learning_rate": np.asarray(lr),
             "record_steps": steps, "f_train": (resid + y[:, 0])[None, None, ..., None], "y_train": y, "widths": np.asarray([64]),
             "theta_inf": theta0}
    m, _ = modes.compute(sweep)
    assert m["held_modes"] >= 2 and max(m["relative_rate_errors"]) < 1e-8
    lam_held = np.asarray(m["eigenvalues_theta0"][: m["held_modes"]])
    np.testing.assert_allclose(m["rate_error_allowance"], np.linalg.norm(moved, 2) / lam_held + 0.05, rtol=1e-12)
    assert m["rates_within_allowance"]
