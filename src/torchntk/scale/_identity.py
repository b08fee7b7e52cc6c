"""Fingerprints of what a kernel store was computed from (private).

A store's manifest records hashes of the inputs, an identity of the kernel function, and the
values of the kernel on a small probe block; resuming recomputes them and refuses to continue
when any differs (see :func:`compare_manifests`).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import platform
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .._version import __version__
from ..errors import StoreError

#: Manifest fields that must agree for a store to be resumed, with what they mean.
_CHECKED = {
    "kernel": "the kernel function (spec or model hash)",
    "x1": "the inputs x1 (data hash)",
    "x2": "the inputs x2 (data hash)",
    "symmetric": "the symmetric setting",
    "arrays": "the kernel arrays (names, shapes, dtypes)",
    "tile": "the tile size",
    "identity": "the user-supplied identity",
}


def tensor_hash(x: torch.Tensor) -> dict[str, Any]:
    """``{"sha256", "shape", "dtype"}`` of a tensor's values (device independent)."""
    arr = np.ascontiguousarray(x.detach().cpu().numpy())
    digest = hashlib.sha256(arr.view(np.uint8).reshape(-1).data).hexdigest()
    return {"sha256": digest, "shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", "")}


def module_hash(model: torch.nn.Module) -> str:
    """sha256 of a module's structure (``repr``) and every parameter and buffer value."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    h.update(repr(model).encode())
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(json.dumps(tensor_hash(value)).encode())
    return h.hexdigest()


def object_hash(obj: object) -> str:
    """sha256 of an object's pickle (its every attribute), or of its ``repr`` if it has none."""
    head = f"{type(obj).__module__}.{type(obj).__qualname__}:".encode()
    try:
        body = pickle.dumps(obj, protocol=4)
    except Exception:  # lambdas inside a spec, for instance
        body = repr(obj).encode()
    return hashlib.sha256(head + body).hexdigest()


def kernel_identity(kernel_fn: Callable) -> dict[str, Any]:
    """Identity of a kernel function: its ``torchntk_identity`` attribute, else its name."""
    ident = getattr(kernel_fn, "torchntk_identity", None)
    if ident is not None:
        return dict(ident)
    fn = getattr(kernel_fn, "__call__", kernel_fn)
    name = getattr(kernel_fn, "__qualname__", None) or type(kernel_fn).__qualname__
    module = getattr(kernel_fn, "__module__", None) or getattr(fn, "__module__", "")
    return {"callable": f"{module}.{name}"}


def versions() -> dict[str, str]:
    """Versions of the libraries that computed a store."""
    out = {"torchntk": __version__, "torch": torch.__version__, "numpy": np.__version__,
           "python": platform.python_version()}
    try:
        import zarr

        out["zarr"] = zarr.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def jsonable(value: Any, name: str = "identity") -> Any:
    """``value`` after a JSON round trip; a StoreError naming ``name`` if it is not JSON."""
    try:
        return json.loads(json.dumps(value, sort_keys=True))
    except (TypeError, ValueError) as err:
        raise StoreError(f"`{name}` must be JSON-serialisable (dicts, lists, str, numbers): {err}") from err


#: The probe block is recomputed on resume, maybe on another CPU (other SIMD and BLAS code
#: paths): its entries may differ by the rounding of two code paths, a few ulp of the largest
#: entry, and up to ``sqrt(eps) ~ 1.5e-8`` of it where the arc-cosine rules meet correlation 1
#: (the probe's diagonal); a changed kernel function differs by far more.
PROBE_RTOL = 1e-7


def _probe_close(stored: Any, current: Any) -> bool:
    a, b = np.asarray(stored, dtype=np.float64), np.asarray(current, dtype=np.float64)
    if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
        return False
    scale = float(np.nanmax(np.abs(a))) if a.size and not np.isnan(a).all() else 0.0
    return bool(np.allclose(a, b, rtol=0, atol=PROBE_RTOL * scale, equal_nan=True))


def compare_manifests(stored: Mapping[str, Any], current: Mapping[str, Any], path: str) -> None:
    """Raise StoreError naming every checked field that differs between two manifests.

    ``current["identity"] is None`` and ``current["tile"] is None`` mean "take the stored one".
    The probe values of the kernel are compared to ``PROBE_RTOL`` of their largest magnitude.
    """
    problems = []
    for key, meaning in _CHECKED.items():
        if key in ("identity", "tile") and current.get(key) is None:
            continue
        if stored.get(key) != current.get(key):
            problems.append(
                f"  - {meaning} changed: stored {_short(stored.get(key))}, now {_short(current.get(key))}"
            )
    probe_s, probe_c = stored.get("probe"), current.get("probe")
    if probe_s is not None and probe_c is not None:
        same = probe_s.keys() == probe_c.keys() and all(_probe_close(probe_s[k], probe_c[k]) for k in probe_s)
        if not same:
            problems.append(
                "  - the kernel function gives different values on the probe block "
                "(the model, its weights or the spec changed)"
            )
    if problems:
        raise StoreError(
            f"cannot resume the kernel store {path!r}: it was computed from something else:\n"
            + "\n".join(problems)
            + "\nUse a new output path, or delete the store to recompute it."
        )


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 160 else text[:157] + "..."
