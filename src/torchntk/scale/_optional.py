"""Lazy imports of the optional ``scale`` extras (zarr, dask.distributed) (private).

``import torchntk`` never imports them; the functions that need them call these helpers,
which raise an ImportError telling how to install the extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_HINT = "pip install 'torchntk[scale]'"


def _require(module: str, what: str) -> ModuleType:
    """``import module``, or an ImportError saying that ``what`` needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"{what}; install it with {_HINT}") from err


def require_zarr() -> ModuleType:
    """Return the ``zarr`` module, or raise ImportError with the install hint."""
    return _require("zarr", "torchntk.scale needs `zarr` to write kernel stores")


def require_distributed() -> ModuleType:
    """Return ``dask.distributed``, or raise ImportError with the install hint."""
    return _require("dask.distributed", "executor='dask' needs `dask[distributed]`")
