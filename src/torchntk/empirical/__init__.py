"""Finite-width (empirical) Neural Tangent Kernels of any PyTorch model.

``empirical_ntk(model, x1, x2=None, mode=..., implementation=...)`` computes

    Theta[i, j, a, b] = sum_p  d f_a(x1_i) / d theta_p  *  d f_b(x2_j) / d theta_p

by per-example Jacobians (:mod:`.jacobian`), NTK-vector products (:mod:`.ntvp`) or the per-layer
factorization (:mod:`.structured`); ``linearize(model)`` is the first-order Taylor model around
the current parameters. See ``docs/empirical.md``.
"""

from ._report import EmpiricalNTKReport
from .api import empirical_ntk, flatten_kernel
from .influence import attribution
from .taylor import Linearized, linearize
from .sketch import SketchedKernel, gradient_features, sketched_ntk

__all__ = ["empirical_ntk", "flatten_kernel", "linearize", "Linearized", "gradient_features", "sketched_ntk",
           "SketchedKernel", "attribution", "EmpiricalNTKReport"]
