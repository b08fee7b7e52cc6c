"""The lab: finite networks held against the infinite-width theory, with figures and a report.

- :func:`run_demo` runs the five studies (kernel convergence, lazy training / drift, agreement
  with kernel predictions, eigenmodes, generalization on digits) into a results folder with JSON
  metrics, PNG figures and a self-contained HTML report; :class:`LabConfig` holds their settings.
- :class:`DriftTracker` records the empirical NTK of your own model on a probe batch during your
  training loop: drift from initialization and kernel-target alignment.
- :func:`relu_kernels` and :func:`fig1_reference`: an independent closed form of the ReLU
  network's kernels (the yardstick of the convergence study).

matplotlib and scikit-learn are imported only when figures are drawn or digits are loaded.
"""

from __future__ import annotations

from .config import LabConfig
from .demo import run_demo
from .reference import circle_points, fig1_reference, relu_kernels
from .studies import STUDIES
from .tracker import DriftTracker
from .training import Trajectory, train_full_batch

__all__ = [
    "run_demo",
    "LabConfig",
    "STUDIES",
    "DriftTracker",
    "relu_kernels",
    "fig1_reference",
    "circle_points",
    "train_full_batch",
    "Trajectory",
]
