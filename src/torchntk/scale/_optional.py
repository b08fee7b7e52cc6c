"""Lazy imports of the optional ``scale`` extras (zarr, dask.distributed) (private).

``import torchntk`` never imports them; the functions that need them call these helpers,
which raise an ImportError telling how to install the extra.
"""

from __future__ import annotations

from types import ModuleType

_HINT = "pip install 'torchntk[scale]'"


def require_zarr() -> ModuleType:
    """Return the ``zarr`` module, or raise ImportError with the install hint."""
    try:
        import zarr
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"torchntk.scale needs `zarr` to write kernel stores; install it with {_HINT}"
        ) from err
    return zarr


def require_distributed() -> ModuleType:
    """Return ``dask.distributed``, or raise ImportError with the install hint."""
    try:
        import dask.distributed as distributed
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"executor='dask' needs `dask[distributed]`; install it with {_HINT}"
        ) from err
    return distributed
