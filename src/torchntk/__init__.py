"""torchntk: Neural Tangent Kernels for PyTorch.

The public API, re-exported explicitly:

- :func:`empirical_ntk`: the finite-width NTK of any ``nn.Module``;
- :mod:`torchntk.nn`: NTK-parameterized layers and the theory's MLP;
- :mod:`torchntk.layers`: architecture specs with exact infinite-width NNGP/NTK kernels;
- :mod:`torchntk.dynamics`: training in function space;
- the error types of :mod:`torchntk.errors`.
"""

from __future__ import annotations

from . import errors, nn
from ._version import __version__
from .errors import (
    AccuracyWarning,
    ConvergenceWarning,
    InvalidArgumentError,
    ModelStateError,
    NonFiniteError,
    ShapeError,
    SolverError,
    SpecError,
    StabilityWarning,
    StoreError,
    TorchNTKError,
    TorchNTKWarning,
    UnsupportedLayerError,
)

# -- subpackage exports --
from . import empirical  # noqa: E402  (finite-width NTK of any model)
from .empirical import empirical_ntk, linearize  # noqa: E402
from . import layers  # noqa: E402  (infinite-width architecture specs)
from .layers import Kernel  # noqa: E402
from .layers.modules.monte_carlo import monte_carlo_kernel  # noqa: E402  (Monte Carlo NNGP/NTK of any module)
from . import dynamics  # noqa: E402  (training in function space)
from . import finite  # noqa: E402  (1/n corrections of MLP kernels, the dNTK)
from . import scale  # noqa: E402  (tiled/resumable/distributed kernels, matrix-free solvers; zarr/dask lazy)
from . import lab  # noqa: E402  (studies, DriftTracker, report; matplotlib/sklearn imported lazily)

__all__ = [
    "__version__",
    "errors",
    "nn",
    "TorchNTKError",
    "InvalidArgumentError",
    "ShapeError",
    "NonFiniteError",
    "ModelStateError",
    "UnsupportedLayerError",
    "SpecError",
    "StoreError",
    "SolverError",
    "TorchNTKWarning",
    "ConvergenceWarning",
    "AccuracyWarning",
    "StabilityWarning",
    "empirical",
    "empirical_ntk",
    "linearize",
    "layers",
    "Kernel",
    "monte_carlo_kernel",
    "dynamics",
    "finite",
    "scale",
    "lab",
]
