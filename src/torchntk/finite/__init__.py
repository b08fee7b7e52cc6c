"""Finite-width corrections of the NNGP and NTK of MLPs, and the NTK's motion in training.

- :func:`corrections`: the 1/n shift and four-point vertex of the NNGP, the NTK's mean to
  ``O(1/n)`` and its variance at leading order (Roberts, Yaida & Hanin; Hanin & Nica);
- :func:`exact_nngp_moments`: exact second and fourth moments of ReLU-family MLPs;
- :func:`monte_carlo_moments`, :func:`sample_networks`: the same moments over real networks,
  many at once;
- :func:`kernel_velocity`, :func:`predict_kernel_change`: the empirical dNTK of any model.

See ``docs/finite.md``.
"""

from __future__ import annotations

from .expansion import Corrections, corrections
from .exact import exact_nngp_moments
from .sampling import MonteCarloMoments, monte_carlo_moments, sample_networks
from .velocity import kernel_velocity, predict_kernel_change

__all__ = [
    "Corrections",
    "MonteCarloMoments",
    "corrections",
    "exact_nngp_moments",
    "kernel_velocity",
    "monte_carlo_moments",
    "predict_kernel_change",
    "sample_networks",
]
