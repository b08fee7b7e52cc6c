"""Every script in examples/ runs to completion (each in its own interpreter) and prints numbers
that hold: each printed figure is checked against an independent computation or the theory."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from torchntk.lab import relu_kernels

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))
_NUMBER = r"(-?[0-9.]+(?:e-?[0-9]+)?)"


def test_there_are_examples():
    assert len(EXAMPLES) >= 5


def check_quick_empirical_ntk(out: str) -> None:
    assert "shapes: (6, 4, 2, 2) (6, 4, 2) (6, 4)" in out
    kernel, by_hand = map(float, re.search(rf"= {_NUMBER}, by hand {_NUMBER}", out).groups())
    assert kernel == by_hand != 0.0  # ten printed decimals agree with the autograd dot product


def check_infinite_width_kernel(out: str) -> None:
    torch.manual_seed(0)  # the example's inputs
    x = torch.randn(8, 5, dtype=torch.float64).numpy()
    _, theta = relu_kernels(x, depth=3, W_std=1.0, b_std=0.1)  # the numpy arc-cosine recursion
    shown = [float(v) for v in re.search(r"diagonal: \[(.*)\]", out).group(1).split(",")]
    np.testing.assert_allclose(shown, np.diagonal(theta)[:3], rtol=1e-12)
    rel = float(re.search(rf"= {_NUMBER}", out.splitlines()[1]).group(1))
    assert 0 < rel < 0.2  # O(width^-1/2) at width 2048


def check_dynamics_vs_training(out: str) -> None:
    rows = re.findall(rf"step +([0-9]+): cost {_NUMBER}, max .* points {_NUMBER}", out)
    assert len(rows) == 8  # seed 0 of both widths
    for part in (rows[:4], rows[4:]):
        steps, cost, gap = zip(*[(int(s), float(c), float(g)) for s, c, g in part])
        assert steps == (0, 10, 50, 100) and gap[0] == 0.0  # same start
        assert all(b < a for a, b in zip(cost, cost[1:]))  # the cost goes down
    mean = {int(w): float(g) for w, g in re.findall(rf"width ([0-9]+): gap at step 100, mean of 3 seeds {_NUMBER}", out)}
    # the gap to the Theta_inf prediction is O(n^-1/2): at width 1024 a few hundredths of outputs
    # of size ~1, and it falls with the width (ratio 2 in theory; 3 seeds leave it noisy)
    assert mean[1024] < 0.1 and mean[256] / mean[1024] > 1.3
    ratio = float(re.search(rf"gap ratio width 256 / width 1024: {_NUMBER}", out).group(1))
    assert abs(ratio - mean[256] / mean[1024]) < 0.01


def check_drift_tracker(out: str) -> None:
    drift = {int(w): float(d) for w, d in re.findall(rf"width +([0-9]+): drift {_NUMBER}", out)}
    assert set(drift) == {32, 256}
    assert drift[256] < drift[32]  # lazy training: the drift falls with the width


def check_sklearn_digits(out: str) -> None:
    assert re.search(r"best training time t: (10\.0|inf)", out)
    assert float(re.search(rf"accuracy: {_NUMBER}", out).group(1)) >= 0.9


def check_bayesian_optimization(out: str) -> None:
    rows = re.findall(rf"seed ([0-9]+): .* Bayesian optimization {_NUMBER}, random search {_NUMBER}", out)
    assert len(rows) == 5
    top = float(re.search(rf"maximum on the grid {_NUMBER}", out).group(1))
    # the objective's maximum over the script's 41 x 41 grid, recomputed
    axis = np.linspace(-1, 1, 41)
    g0, g1 = np.meshgrid(axis, axis)
    assert abs(top - (np.exp(-4 * ((g0 - 0.4) ** 2 + (g1 + 0.4) ** 2)) + 0.1 * g0).max()) < 1e-4
    bo = np.array([float(b) for _, b, _ in rows])
    rs = np.array([float(r) for _, _, r in rows])
    assert (bo <= top + 1e-4).all() and (rs <= 1.05).all()
    # the surrogate earns its keep: the mean regret is well below random search's (about 3x)
    assert (top - bo).mean() < 0.5 * (top - rs).mean()


def check_language_model_ntk(out: str) -> None:
    assert re.search(r"model: .*GPT.*, [0-9]+ parameters; 32 training and 32 test sequences", out)
    rel, est = map(float, re.search(rf"relative error {_NUMBER}, estimated {_NUMBER}", out).groups())
    # k = 4096 on a one-output-pair kernel of effective rank ~10: error ~ sqrt(11 / 4096) = 0.05
    assert rel < 0.1 and 0.3 < est / rel < 3.0
    acc = float(re.search(rf"test accuracy {_NUMBER}", out).group(1))
    assert acc >= 0.65  # chance is 0.5
    top = re.search(r"move it most: \[([0-9, ]+)\]", out).group(1).split(",")
    assert len(top) == 3 and all(0 <= int(j) < 32 for j in top)


CHECKS = {
    "quick_empirical_ntk.py": check_quick_empirical_ntk,
    "infinite_width_kernel.py": check_infinite_width_kernel,
    "dynamics_vs_training.py": check_dynamics_vs_training,
    "drift_tracker.py": check_drift_tracker,
    "sklearn_digits.py": check_sklearn_digits,
    "bayesian_optimization.py": check_bayesian_optimization,
    "language_model_ntk.py": check_language_model_ntk,
}
# every example runs in the default suite (each takes seconds); none needs an optional extra
SLOW: set[str] = set()
NEEDS: dict[str, tuple[str, ...]] = {}


def test_every_example_has_a_check():
    assert {p.name for p in EXAMPLES} == set(CHECKS)


@pytest.mark.parametrize("script", [pytest.param(p, marks=pytest.mark.slow) if p.name in SLOW else p
                                    for p in EXAMPLES], ids=[p.name for p in EXAMPLES])
def test_example_prints_what_holds(script, tmp_path):
    missing = [m for m in NEEDS.get(script.name, ()) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (optional extra)")
    env = {"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"}
    if "PYTHONPATH" in os.environ:  # the tree under test, not an installed copy
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    CHECKS[script.name](proc.stdout)
