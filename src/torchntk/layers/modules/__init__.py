"""Specs from torch modules and kernels of any module: :func:`from_module` (torch.nn -> spec,
through torch.fx) and the Monte Carlo kernels (:func:`monte_carlo_kernel`,
:func:`monte_carlo_kernels`, :class:`MonteCarloKernel`)."""

from .from_torch import from_module
from .monte_carlo import MonteCarloKernel, monte_carlo_kernel, monte_carlo_kernels

__all__ = ["from_module", "MonteCarloKernel", "monte_carlo_kernel", "monte_carlo_kernels"]
