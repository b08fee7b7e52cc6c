"""Shared pieces of the CLI: the error type, TOML configs, data/model/kernel files (private)."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import layers as L
from ..empirical._functional import SelectOutput
from ..errors import TorchNTKError
from ..scale import KernelStore


class CLIError(TorchNTKError):
    """A user mistake on the command line: printed as one line on stderr, exit code 2."""


def plain(doc: str) -> str:
    """Docstring text for ``--help``, without reStructuredText markup: a Sphinx role such as
    ``:mod:`torchntk.layers``` becomes its target (the last dotted name after a ``~``), double
    backquotes are dropped."""
    doc = re.sub(r":(?:mod|func|class|meth|attr|data|obj):`~?([^`]+)`",
                 lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(0).count("~") else m.group(1), doc)
    return doc.replace("``", "")


# -- config files ------------------------------------------------------------------------------

def config_defaults(path: str, parser: argparse.ArgumentParser, command: str) -> dict[str, Any]:
    """Read a TOML file for ``command``: top-level keys, or those of its ``[command]`` table.

    Keys are the command's long options (``learning-rate`` or ``learning_rate``, or a
    deprecated alias such as ``tile``); an unknown key is an error, so a typo never passes
    silently.
    """
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise CLIError("TOML config files need Python >= 3.11 or `pip install tomli`") from None
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as err:
        raise CLIError(f"cannot read config file {path!r}: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise CLIError(f"config file {path!r} is not valid TOML: {err}") from None
    if isinstance(data.get(command), dict):
        data = data[command]
    allowed = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")}
    aliases = {o.lstrip("-").replace("-", "_"): a.dest for a in allowed.values() for o in a.option_strings}
    out: dict[str, Any] = {}
    for key, value in data.items():
        dest = aliases.get(key.replace("-", "_"), key.replace("-", "_"))
        if dest not in allowed:
            names = ", ".join(sorted(d.replace("_", "-") for d in allowed))
            raise CLIError(f"unknown config key {key!r} in {path} (the {command} command takes: {names})")
        action = allowed[dest]
        if isinstance(value, list):
            value = ",".join(map(str, value))
        if action.nargs == 0:            # a switch (--quick, --force...)
            if not isinstance(value, bool):
                raise CLIError(f"config key {key!r} in {path} must be true or false, got {value!r}")
        elif action.type is None:
            value = str(value)
        else:
            try:
                value = action.type(value if action.type is not str else str(value))
            except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
                raise CLIError(f"config key {key!r} in {path}: {err}") from None
        out[dest] = value
    return out


# -- data files --------------------------------------------------------------------------------

def load_data(path: str, *, need_y: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs ``x`` ``(N, ...)`` and targets ``y`` ``(N, O)`` (or None) from ``.npz``, ``.pt``, ``.npy``.

    ``.npz``/``.pt``: arrays named ``x`` and optionally ``y``; ``.npy`` or a bare tensor: ``x``.
    Inputs are float64, except integer arrays (token ids, indices), which stay integers as
    int64; a 1-D ``y`` becomes ``(N, 1)``.
    """
    p = Path(path)
    if not p.exists():
        raise CLIError(f"data file {path!r} does not exist")
    try:
        if p.suffix == ".npz":
            with np.load(p) as f:
                data = {k: f[k] for k in f.files}
        elif p.suffix == ".pt":
            data = load_pt(p, "data file")
        elif p.suffix == ".npy":
            data = np.load(p)
        else:
            raise CLIError(f"data file {path!r}: unknown format {p.suffix!r} (use .npz, .pt or .npy)")
    except CLIError:
        raise
    except Exception as err:  # noqa: BLE001  (any reader failure is the file's fault)
        raise CLIError(f"cannot read data file {path!r}: {type(err).__name__}: {err}") from None
    if not isinstance(data, dict):
        data = {"x": data}
    if "x" not in data:
        raise CLIError(f"data file {path!r} has no array 'x' (found: {', '.join(map(str, data)) or 'none'})")
    x = np.asarray(data["x"])
    integer = x.dtype.kind in "iu" if isinstance(x, np.ndarray) and x.dtype != object else False
    x = torch.as_tensor(x, dtype=torch.int64 if integer else torch.float64)
    y = data.get("y")
    if y is not None:
        y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
        if y.ndim == 1:
            y = y[:, None]
        if y.shape[0] != x.shape[0]:
            raise CLIError(f"data file {path!r}: x has {x.shape[0]} rows but y has {y.shape[0]}")
    elif need_y:
        raise CLIError(f"data file {path!r} has no targets 'y'")
    if x.ndim < 2 or x.shape[0] == 0:
        raise CLIError(f"data file {path!r}: x must be (N, features...) with N >= 1, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise CLIError(f"data file {path!r}: x contains NaN or Inf")
    return x, y


def load_pt(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and containers only.

    A file that pickles any other Python object is refused in one line (``CLIError``): data and
    kernel files are data, and unpickling an arbitrary object can run code.
    """
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        obj = f" ({found.group(1)})" if found else ""
        raise CLIError(f"{what} {str(path)!r} holds a Python object{obj} besides tensors, numbers and "
                       "containers; torchntk never unpickles objects from a data file (they can run "
                       "code): save tensors or arrays only, or use .npz") from None


# -- models ------------------------------------------------------------------------------------

_MODEL_NAMES = ("model", "spec", "make_model", "build_model")


def model_ref(ref: str) -> tuple[str, str]:
    """``(path, name)`` of ``file.py[:name]`` (a path that exists as given has no ``:name``)."""
    path, _, name = ref.partition(":") if not os.path.exists(ref) else (ref, "", "")
    return path, name


def file_sha256(path: str) -> str:
    """The sha256 of a model file's bytes (what a store records of the file it was computed from)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as err:
        raise CLIError(f"model file {path!r} cannot be read ({err.strerror or err})") from None


def load_model_file(ref: str) -> Any:
    """The object named in ``file.py[:name]``: an ``nn.Module``, a layers spec, or a factory of one.

    Without ``:name`` the file must define one of ``model``, ``spec``, ``make_model``,
    ``build_model``. A factory is called without arguments. A module-level ``output`` (a key or
    attribute name, an index, or a function of the model's output) selects the tensor of an
    ``nn.Module`` whose output is a dict, tuple or output object (as ``empirical_ntk(output=)``).
    """
    path, name = model_ref(ref)
    if not os.path.exists(path):
        raise CLIError(f"model file {path!r} does not exist")
    module_name = f"_torchntk_user_model_{abs(hash(os.path.abspath(path)))}"
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError("not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except BaseException as err:  # noqa: BLE001  (SyntaxError, ImportError, anything the file raises)
        if isinstance(err, KeyboardInterrupt):
            raise
        sys.modules.pop(module_name, None)
        where = f" (line {err.lineno})" if isinstance(err, SyntaxError) and err.lineno else ""
        raise CLIError(f"cannot import model file {path!r}: {type(err).__name__}: {err}{where}") from None
    names = [name] if name else [n for n in _MODEL_NAMES if hasattr(module, n)]
    if not names or not hasattr(module, names[0]):
        want = repr(name) if name else "one of " + ", ".join(_MODEL_NAMES)
        raise CLIError(f"model file {path!r} defines no {want}")
    obj = getattr(module, names[0])
    if not isinstance(obj, torch.nn.Module) and not _is_spec(obj) and callable(obj):
        try:
            obj = obj()
        except Exception as err:  # noqa: BLE001
            raise CLIError(f"model file {path!r}: {names[0]}() failed: {type(err).__name__}: {err}") from None
    if not isinstance(obj, torch.nn.Module) and not _is_spec(obj):
        raise CLIError(f"model file {path!r}: {names[0]} is neither an nn.Module nor a torchntk.layers spec")
    if isinstance(obj, torch.nn.Module) and hasattr(module, "output"):
        try:
            obj = SelectOutput(obj, module.output)
        except TorchNTKError as err:
            raise CLIError(f"model file {path!r}: {err}") from None
    return obj


def _is_spec(obj: Any) -> bool:
    return hasattr(obj, "kernel") and hasattr(obj, "module") and not isinstance(obj, torch.nn.Module)


def builtin_spec(width: int, depth: int, activation: str, W_std: float, b_std: float, outputs: int):
    """``depth`` Dense layers of ``width`` (the last of ``outputs``) with ``activation`` between."""
    acts = {"relu": L.Relu, "erf": L.Erf, "gelu": L.Gelu, "abs": L.Abs,
            "tanh": lambda: L.Elementwise(torch.tanh)}
    if activation not in acts:
        raise CLIError(f"unknown activation {activation!r}; expected one of {', '.join(acts)}")
    for flag, value in (("--depth", depth), ("--width", width), ("--outputs", outputs)):
        if value < 1:
            raise CLIError(f"{flag} must be >= 1, got {value}")
    return L.mlp(width, depth, outputs, activation=acts[activation], W_std=W_std, b_std=b_std)


# -- kernel files ------------------------------------------------------------------------------

class KernelFile(dict):
    """The float64 kernels of a file by name, with ``inputs``: the fingerprint record of the
    inputs they were computed on (see ``_fingerprint``), or None when the file has none."""

    inputs: dict[str, Any] | None = None


def load_kernels(path: str) -> KernelFile:
    """Kernels saved by ``torchntk kernel``: ``.npz``, ``.pt`` or a ``.zarr`` store (float64 tensors)."""
    from ._fingerprint import RECORD, parse_record, store_record

    p = Path(path)
    if not p.exists():
        raise CLIError(f"kernel file {path!r} does not exist")
    record = None
    try:
        if p.suffix == ".zarr" or p.is_dir():
            store = KernelStore.open(p)   # verify=True: a damaged tile is a StoreError naming it
            if not store.is_complete:
                raise CLIError(f"kernel store {path!r} is incomplete ({len(store.missing_tiles())} tiles "
                               "missing); finish it with `torchntk kernel --resume STORE`, adding "
                               "`--model FILE` if it was computed from a model file")
            out = {n: torch.from_numpy(np.asarray(store.to_numpy(n))) for n in store.names}
            if list(out) == ["kernel"]:                      # a bare kernel written from Python
                out = {"ntk": out["kernel"]}
            if not store.manifest.get("symmetric", True):   # written with --test: Theta(test, train)
                out = {f"{k}_test_train": v for k, v in out.items()}
            kernels = {k: v.double() for k, v in out.items()}
            record = store_record(store.manifest)
        elif p.suffix == ".npz":
            with np.load(p) as f:
                kernels = {k: torch.from_numpy(f[k]).double() for k in f.files if f[k].ndim >= 2}
                if RECORD in f.files:
                    record = parse_record(f[RECORD], path)
        elif p.suffix == ".pt":
            data = load_pt(p, "kernel file")
            if isinstance(data, torch.Tensor):
                data = {"ntk": data}
            if not isinstance(data, dict):
                raise CLIError(f"kernel file {path!r} holds a {type(data).__name__}, not tensors by name")
            if RECORD in data:
                record = parse_record(data.pop(RECORD), path)
            kernels = {k: torch.as_tensor(v).double() for k, v in data.items()
                       if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim >= 2}
        else:
            raise CLIError(f"kernel file {path!r}: unknown format {p.suffix!r} (use .npz, .pt or .zarr)")
    except TorchNTKError:  # CLIError and StoreError: already one line
        raise
    except Exception as err:  # noqa: BLE001
        raise CLIError(f"cannot read kernel file {path!r}: {type(err).__name__}: {err}") from None
    for name, value in kernels.items():
        if not torch.isfinite(value).all():
            raise CLIError(f"kernel file {path!r}: array {name!r} contains NaN or Inf")
    result = KernelFile(kernels)
    result.inputs = record
    return result


def check_new(path: str | Path, force: bool, flag: str = "--out") -> Path:
    """``path`` as an output that may be written: its folder writable (:func:`check_writable`)
    and no existing file there unless ``force`` (outputs never overwrite silently)."""
    p = check_writable(path)
    if p.exists() and not force:
        raise CLIError(f"{flag} {str(p)!r} exists: pass --force to overwrite it, or choose another path")
    return p


def check_writable(path: str | Path, *, folder: bool = False) -> Path:
    """Fail early (one line) if ``path`` (a file, or a folder when ``folder``) cannot be written.

    A results folder (``folder=True``) is created; the folder of an output file must exist.
    """
    p = Path(path)
    target = p if folder else p.parent
    if not folder and not target.exists():
        raise CLIError(f"folder of the output file {str(target)!r} does not exist (create it first)")
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / f".torchntk-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        what = "output folder" if folder else "folder of the output file"
        raise CLIError(f"{what} {str(target)!r} is not writable ({err.strerror or err})") from None
    return p


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced for RFC 8259 JSON: +-inf by the strings
    ``"inf"``/``"-inf"``, NaN by ``null`` (lists, tuples and dicts are walked)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def parse_times(text: str) -> torch.Tensor:
    """``"0,10,100,inf"`` -> float64 tensor of times."""
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"--t must be comma-separated numbers or 'inf', got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise CLIError(f"--t must be non-negative times, got {text!r}")
    return torch.tensor(values, dtype=torch.float64)
