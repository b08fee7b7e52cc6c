"""Kernels at scale: tiled, resumable, distributed computation and matrix-free solvers.

- :func:`tiled_kernel` computes any kernel function over (x1, x2) in tiles planned from a
  memory budget, in memory or into a zarr :class:`KernelStore` that survives ``kill -9``
  (:func:`resume`), in-process or on a Dask cluster (``executor="dask"``).
- :func:`kernel_fn_from_spec` / :func:`kernel_fn_from_model` build kernel functions from an
  infinite-width spec or a finite network.
- :class:`KernelOperator` is the kernel as a ``scipy.sparse.linalg.LinearOperator`` (from a
  tensor, a store streamed tile by tile, or NTK-vector products of a model without storing the
  kernel); :func:`top_eigh`, :func:`cg_solve` and :class:`SpectralDynamics` solve with it.

zarr and dask are optional (``pip install 'torchntk[scale]'``) and imported only when used.
See ``docs/scale.md``.
"""

from __future__ import annotations

from .._memory import parse_memory
from ._budget import plan_tile
from .functions import kernel_fn_from_model, kernel_fn_from_spec, with_identity
from .operator import KernelOperator
from .solvers import cg_solve, jacobi_preconditioner, kernel_regression, nystrom, nystrom_preconditioner, top_eigh
from .spectral import SpectralDynamics
from .store import KernelStore
from .tiled import resume, tiled_kernel
from .tiles import TilePlan

__all__ = [
    "tiled_kernel",
    "resume",
    "KernelStore",
    "TilePlan",
    "kernel_fn_from_spec",
    "kernel_fn_from_model",
    "with_identity",
    "KernelOperator",
    "top_eigh",
    "cg_solve",
    "kernel_regression",
    "nystrom",
    "nystrom_preconditioner",
    "jacobi_preconditioner",
    "SpectralDynamics",
    "parse_memory",
    "plan_tile",
]
