"""Every script in examples/ runs to completion (each in its own interpreter) and prints numbers
that hold: each printed figure is checked against an independent computation or the theory."""

from __future__ import annotations

import importlib.util
import math
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
    steps, cost, gap = zip(*[(int(s), float(c), float(g)) for s, c, g in rows])
    assert steps == (0, 10, 50, 100)
    # same start; then the finite network stays within O(width^-1/2) of the Theta_inf prediction
    # (about 0.1 at width 512 against outputs of size 1)
    assert gap[0] == 0.0 and max(gap) < 0.15
    assert all(b < a for a, b in zip(cost, cost[1:]))  # the cost goes down


def check_drift_tracker(out: str) -> None:
    drift = {int(w): float(d) for w, d in re.findall(rf"width +([0-9]+): drift {_NUMBER}", out)}
    assert set(drift) == {32, 256}
    assert drift[256] < drift[32]  # lazy training: the drift falls with the width


def check_sklearn_digits(out: str) -> None:
    assert re.search(r"best training time t: (10\.0|inf)", out)
    assert float(re.search(rf"accuracy: {_NUMBER}", out).group(1)) >= 0.9


def check_bayesian_optimization(out: str) -> None:
    start = float(re.search(rf"best of 6 random points: {_NUMBER}", out).group(1))
    best = [float(b) for b in re.findall(rf"best = {_NUMBER}", out)]
    assert len(best) == 6 and all(b >= a for a, b in zip([start] + best, best))  # the incumbent never drops
    x0, x1, value = map(float, re.search(rf"best point found: \({_NUMBER}, {_NUMBER}\), value {_NUMBER}", out).groups())
    # the objective of the example, recomputed at the printed (3-decimal) point
    f = math.exp(-4 * ((x0 - 0.4) ** 2 + (x1 + 0.4) ** 2)) + 0.1 * x0
    assert abs(f - value) < 0.02 and value == best[-1]


CHECKS = {
    "quick_empirical_ntk.py": check_quick_empirical_ntk,
    "infinite_width_kernel.py": check_infinite_width_kernel,
    "dynamics_vs_training.py": check_dynamics_vs_training,
    "drift_tracker.py": check_drift_tracker,
    "sklearn_digits.py": check_sklearn_digits,
    "bayesian_optimization.py": check_bayesian_optimization,
}
# the longer scripts (each several seconds of training) run with --runslow (make test-all)
SLOW = {"drift_tracker.py", "dynamics_vs_training.py", "sklearn_digits.py", "bayesian_optimization.py"}
# scripts that need an optional extra: skipped when its packages are absent
NEEDS = {"bayesian_optimization.py": ("gpytorch", "botorch")}


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
