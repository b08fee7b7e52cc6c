"""``torchntk kernel``: the empirical or infinite-width NTK of a model on a dataset or data file.

The data is a built-in dataset (``--data digits|mnist1d|circle``, with its own train/test split:
``--n-train``, ``--n-test``, ``--data-seed``) or a file (``--data train.npz [--test test.npz]``). The
model is built in (``--width``, ``--depth``, ``--activation``: the theory's fully connected network
as a torchntk.layers spec) or given as a Python file (``--model net.py[:name]`` defining an
``nn.Module``, a spec, or a factory of either). ``--analytic`` computes the infinite-width NNGP and
NTK of a spec, or of a model file's module converted by :func:`torchntk.layers.from_module`
(``--w-std``, ``--b-std`` as its scales); otherwise the empirical NTK of the finite network (a spec's
``module`` drawn from ``--seed``, or the given module as it is, refused like the Python API refuses
it in training mode). Output by extension: ``.npz`` / ``.pt`` (arrays ``ntk`` (N, N) [, ``nngp``]
and, with test inputs, ``ntk_test_train`` (M, N) [, ``nngp_test_train``], and a fingerprint of the
inputs that ``predict`` and ``spectrum`` check) or a ``.zarr`` store computed in tiles by
:func:`torchntk.scale.tiled_kernel` (``--block-size``, ``--memory``, ``--executor``, ``--scheduler``;
with test inputs it holds the (M, N) kernel only), resumable with ``torchntk kernel --resume STORE
[--model FILE]``. An existing output is never overwritten without ``--force``.

Trust: a model file is Python code that the user names on the command line, and ``--model`` runs
it as any script would run. Everything else is data: data and kernel files are read as arrays
(a ``.pt`` holding any other Python object is refused), and ``--resume`` never imports the model
file a store names: a store computed from a model file needs ``--model`` again, and the file must
have the sha256 recorded in the store.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..empirical._functional import check_deterministic
from ._common import CLIError, builtin_spec, check_new, check_writable, file_sha256, load_model_file, model_ref, plain
from ._datasets import add_split_arguments, is_builtin, load_inputs
from ._fingerprint import RECORD, inputs_record


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("kernel", help="compute an empirical or infinite-width NTK and save it",
                       description=plain(__doc__.split("\n\n")[1]), epilog=plain(__doc__.split("\n\n")[2]))
    p.add_argument("--data", help="training inputs: a built-in dataset (digits, mnist1d, circle; its test split "
                                   "gives the (M, N) test/train kernel too) or a .npz/.pt file with array 'x', or .npy")
    p.add_argument("--test", help="held-out inputs of a data file (same formats): also computes the (M, N) "
                                   "test/train kernel")
    add_split_arguments(p)
    p.add_argument("--model", help="Python file defining an nn.Module or a torchntk.layers spec (file.py[:name]); "
                                    "with --resume: the same file again, checked against the store")
    p.add_argument("--width", type=int, default=None, help="built-in network: hidden width (default 512)")
    p.add_argument("--depth", type=int, default=None, help="built-in network: number of Dense layers (default 3)")
    p.add_argument("--activation", default=None, help="built-in network: relu, erf, gelu, tanh, abs (default relu)")
    p.add_argument("--w-std", dest="w_std", type=float, default=None, help="built-in network: W_std (default 1)")
    p.add_argument("--b-std", dest="b_std", type=float, default=None, help="built-in network: b_std (default 0.1)")
    p.add_argument("--outputs", type=int, default=None, help="built-in network: output dimension (default 1)")
    p.add_argument("--analytic", action="store_true", help="infinite-width NNGP/NTK of the spec instead of the empirical NTK")
    p.add_argument("--mode", default=None, choices=("mean", "full", "diagonal"),
                   help="empirical NTK mode (default mean: the scalar (N, N) kernel)")
    p.add_argument("--seed", type=int, default=None, help="seed of the finite network drawn from a spec (default 0)")
    p.add_argument("--out", default=None, help="output: .npz, .pt, or .zarr (a tiled store; default kernel.npz); "
                                               "an existing file is refused unless --force")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out (a .zarr store is deleted "
                                                        "and computed again)")
    p.add_argument("--block-size", "--tile", dest="block_size", type=int, default=None,
                   help=".zarr: tile edge in examples (default: from --memory; --tile: deprecated name)")
    p.add_argument("--memory", default=None, help=".zarr: memory budget of a tile (default 2GiB)")
    p.add_argument("--executor", default="inprocess", choices=("inprocess", "dask"), help=".zarr: where tiles run")
    p.add_argument("--scheduler", default=None, help=".zarr with dask: scheduler address tcp://host:8786 (default: a local cluster)")
    p.add_argument("--resume", metavar="STORE.zarr", default=None,
                   help="finish an interrupted .zarr store (settings are read from it; a store "
                        "computed from a model file also needs --model with that file)")
    p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bar")
    p.add_argument("--sketch", type=int, default=None, metavar="K",
                   help="empirical NTK: an unbiased estimate from the per-example gradients projected to K "
                        "numbers (even; torchntk.empirical.sketched_ntk), for models too large for the exact "
                        "kernel; in a .zarr store every tile projects with the same draw")
    p.add_argument("--sketch-seed", dest="sketch_seed", type=int, default=None, metavar="S",
                   help="with --sketch: the seed of the projection (default 0)")
    p.add_argument("--features", type=int, default=None, metavar="M",
                   help="with --analytic: save random features (phi_ntk, phi_nngp: (N, ~2M), (N, M)) of the "
                        "spec's kernels instead of the N x N kernels (torchntk.features; --seed draws them)")
    return p


def _save(out: Path, arrays: dict[str, np.ndarray], x: torch.Tensor, xt: torch.Tensor | None) -> int:
    """Write ``arrays`` to ``.npz`` or ``.pt`` with the fingerprint record of the inputs ``x``
    (train) and ``xt`` (test, or None) they were computed on, and say so."""
    record = inputs_record(x, xt)
    if out.suffix == ".npz":
        with open(out, "wb") as fh:   # a file object: numpy would append ".npz" to another name
            np.savez(fh, **arrays, **{RECORD: np.array(record)})
    else:
        torch.save({**{k: torch.from_numpy(v) for k, v in arrays.items()}, RECORD: record}, out)
    print(f"wrote {out}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))
    return 0


def _features(args: argparse.Namespace, req: dict[str, Any], out: Path) -> int:
    """``--features M``: feature matrices whose inner products approximate the kernels."""
    from ..errors import TorchNTKError
    from ..features import FeatureMap

    if not req["analytic"]:
        raise CLIError("--features approximates the infinite-width kernels: add --analytic")
    if args.features < 2:
        raise CLIError(f"--features must be an int >= 2, got {args.features}")
    if out.suffix not in (".npz", ".pt"):
        raise CLIError(f"with --features, --out must end in .npz or .pt, got {str(out)!r}")
    x, xt = _inputs(req)
    spec, _ = _build(req, x)
    try:
        fm = FeatureMap(spec, args.features, seed=int(req["seed"]))
        arrays = {}
        for suffix, data in (("", x), ("_test", xt)):
            if data is not None:
                f = fm(data)
                arrays["phi_nngp" + suffix] = f.nngp.numpy()
                if f.ntk is not None:
                    arrays["phi_ntk" + suffix] = f.ntk.numpy()
    except TorchNTKError as err:
        raise CLIError(str(err)) from None
    return _save(out, arrays, x, xt)


_REQUEST_KEYS = ("data", "test", "n_train", "n_test", "data_seed", "model", "width", "depth", "activation",
                 "w_std", "b_std", "outputs", "analytic", "mode", "seed", "sketch", "sketch_seed")
#: The built-in network's options and their defaults (refused with --model, which they do not shape).
_BUILTIN = {"width": 512, "depth": 3, "activation": "relu", "w_std": 1.0, "b_std": 0.1, "outputs": 1}
#: The options that --model --analytic passes on to torchntk.layers.from_module (as W_std, b_std).
_FROM_MODULE_SCALES = {"w_std": "W_std", "b_std": "b_std"}


def _request(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that define the kernel (stored in a .zarr manifest for --resume)."""
    req = {k: getattr(args, k) for k in _REQUEST_KEYS}
    req["mode"] = req["mode"] or "mean"
    if req["sketch"] is None:
        if req["sketch_seed"] is not None:
            raise CLIError("--sketch-seed draws the projection of --sketch: add --sketch K")
        del req["sketch"], req["sketch_seed"]   # the request of an exact kernel, as before --sketch
    else:
        if req["analytic"]:
            raise CLIError("--sketch projects the gradients of a finite network: it does not apply with --analytic")
        if req["sketch"] < 2 or req["sketch"] % 2:
            raise CLIError(f"--sketch must be an even int >= 2, got {req['sketch']}")
        req["sketch_seed"] = 0 if req["sketch_seed"] is None else req["sketch_seed"]
    scales = {}
    if req["model"]:
        scales = {k: req[k] for k in _FROM_MODULE_SCALES} if req["analytic"] else {}
        given = [k for k in _BUILTIN if req[k] is not None and k not in scales]
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise CLIError(f"{flags} shape{'s' if len(given) == 1 else ''} the built-in network only; "
                           "with --model the network is the one in the model file (drop them; with "
                           "--analytic, --w-std and --b-std set the scales of from_module)")
    req.update({k: v for k, v in _BUILTIN.items() if req[k] is None})
    req.update(scales)          # None: from_module's own default
    for k in ("data", "test"):
        if req[k] is not None and not is_builtin(req[k]):
            req[k] = os.path.abspath(req[k])
    if req["model"]:
        path, name = model_ref(req["model"])
        req["model"] = os.path.abspath(path) + (":" + name if name else "")
        req["model_sha256"] = file_sha256(path)
    return req


def _build(req: dict[str, Any], x: torch.Tensor, seed_given: bool = False):
    """``(spec or None, module or None)`` of the request (``seed_given``: --seed was passed)."""
    if req["model"]:
        obj = load_model_file(req["model"])
    else:
        obj = builtin_spec(req["width"], req["depth"], req["activation"], req["w_std"], req["b_std"], req["outputs"])
    is_module = isinstance(obj, torch.nn.Module)
    if req["analytic"]:
        return (_from_module(obj, req) if is_module else obj), None
    if is_module:
        if seed_given:
            raise CLIError("--seed draws the network of a spec; the model file gives an nn.Module with "
                           "its own weights (drop --seed)")
        check_deterministic(obj)   # the Python API's check: a train-mode BatchNorm/Dropout is refused
        module = obj.double()
    else:
        gen = torch.Generator().manual_seed(int(req["seed"]))
        try:
            module = obj.module(tuple(x.shape[1:]), generator=gen, dtype=torch.float64).eval()
        except Exception as err:  # noqa: BLE001  (a spec that does not fit the data)
            raise CLIError(f"the network cannot be built for inputs of shape {tuple(x.shape[1:])}: "
                           f"{type(err).__name__}: {err}") from None
    _check_forward(module, x)
    return None, module


def _from_module(model: torch.nn.Module, req: dict[str, Any]):
    """The infinite-width spec of a model file's module, by :func:`torchntk.layers.from_module`
    (``--w-std``/``--b-std`` as its ``W_std``/``b_std`` when given); the spec is printed."""
    from ..layers import from_module

    scales = {name: req[k] for k, name in _FROM_MODULE_SCALES.items() if req.get(k) is not None}
    spec = from_module(model, **scales)
    print(f"infinite-width limit of the model (torchntk.layers.from_module): {spec!r}")
    return spec


def _check_forward(module: torch.nn.Module, x: torch.Tensor) -> None:
    """One line (CLIError) if the network cannot take the data's inputs."""
    try:
        with torch.no_grad():
            module(x[:1])
    except Exception as err:  # noqa: BLE001  (shape mismatches surface as torch RuntimeErrors)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CLIError(f"the model cannot take the inputs of --data (per-example shape "
                       f"{tuple(x.shape[1:])}): {type(err).__name__}: {first}") from None


def _compute(req: dict[str, Any], x: torch.Tensor, xt: torch.Tensor | None,
             seed_given: bool = False) -> dict[str, np.ndarray]:
    from .. import empirical_ntk

    spec, module = _build(req, x, seed_given)
    out: dict[str, np.ndarray] = {}
    if module is None:
        k = spec.kernel(x)
        out.update(nngp=k.nngp.numpy(), ntk=k.ntk.numpy())
        if xt is not None:
            k = spec.kernel(xt, x)
            out.update(nngp_test_train=k.nngp.numpy(), ntk_test_train=k.ntk.numpy())
    else:
        kw = _sketch_kwargs(req)
        out["ntk"] = empirical_ntk(module, x, mode=req["mode"], **kw).detach().double().numpy()
        if xt is not None:
            out["ntk_test_train"] = empirical_ntk(module, xt, x, mode=req["mode"], **kw).detach().double().numpy()
    return out


class _NamedNTK:
    """A model's kernel function whose blocks are named ``ntk`` (as in the .npz/.pt outputs)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.torchntk_identity = fn.torchntk_identity

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"ntk": self.fn(a, b)}


def _kernel_fn(req: dict[str, Any], x: torch.Tensor, seed_given: bool = False):
    from ..scale import kernel_fn_from_model, kernel_fn_from_spec

    spec, module = _build(req, x, seed_given)
    if module is None:
        return kernel_fn_from_spec(spec)
    return _NamedNTK(kernel_fn_from_model(module, mode=req["mode"], **_sketch_kwargs(req)))


def _sketch_kwargs(req: dict[str, Any]) -> dict[str, int]:
    """``sketch``/``seed`` of :func:`torchntk.empirical_ntk` for a request with ``--sketch``."""
    return {} if req.get("sketch") is None else {"sketch": int(req["sketch"]), "seed": int(req["sketch_seed"])}


def _inputs(req: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Train and test inputs of the request (a built-in dataset or files)."""
    got = load_inputs(req["data"], req["test"], n_train=req.get("n_train"), n_test=req.get("n_test"),
                      data_seed=req.get("data_seed"))
    return got.x, got.x_test


def run(args: argparse.Namespace) -> int:
    from ..scale import tiled_kernel

    progress = not args.no_progress
    if args.resume:
        from ._resume import resume_store

        return resume_store(args, progress)
    seed_given = args.seed is not None
    if args.seed is None:
        args.seed = 0
    req = _request(args)
    out = Path(args.out or "kernel.npz")
    if out.suffix not in (".npz", ".pt", ".zarr"):
        raise CLIError(f"--out must end in .npz, .pt or .zarr, got {str(out)!r}")
    if args.features is not None and out.suffix == ".zarr":
        raise CLIError(f"with --features, --out must end in .npz or .pt, got {str(out)!r}")
    if out.suffix == ".zarr":
        check_writable(out)
    else:
        check_new(out, args.force)
    if args.features is not None:
        return _features(args, req, out)
    x, xt = _inputs(req)
    if out.suffix == ".zarr":
        fn = _kernel_fn(req, x, seed_given)
        x1, x2 = (x, None) if xt is None else (xt, x)   # with --test the store holds Theta(test, train)
        _replace_store(out, args.force)                 # only once the request is known to be valid
        store = tiled_kernel(fn, x1, x2, out=out, block_size=args.block_size, memory=args.memory or "2GiB",
                             executor=args.executor,
                             scheduler=args.scheduler, identity={"command": "kernel", **req}, resume=True,
                             progress=progress)
        print(f"wrote {out}: {', '.join(f'{n} {store.shape(n)}' for n in store.names)} "
              f"({store.last_run['computed']} tiles computed, {store.last_run['skipped']} already there)")
        return 0
    if args.block_size is not None or args.memory is not None or args.executor != "inprocess" or args.scheduler:
        raise CLIError("--block-size/--memory/--executor/--scheduler apply to a .zarr output only")
    arrays = _compute(req, x, xt, seed_given)
    return _save(out, arrays, x, xt)


def _replace_store(out: Path, force: bool) -> None:
    """A ``.zarr`` output: an existing store is continued (the same request; any other is refused
    by ``tiled_kernel``) or, with ``force``, deleted first; anything else there is refused."""
    if not out.exists() or not force:
        return
    if not (out.is_dir() and (out / "zarr.json").is_file()):
        raise CLIError(f"--out {str(out)!r} exists and is not a kernel store: --force deletes only a store "
                       "(remove it yourself, or choose another path)")
    shutil.rmtree(out)
