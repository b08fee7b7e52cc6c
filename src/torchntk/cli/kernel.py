"""``torchntk kernel``: the empirical or infinite-width NTK of a model on a data file.

The model is built in (``--width/--depth/--activation``: the theory's fully connected network as a
:mod:`torchntk.layers` spec) or given as a Python file (``--model net.py[:name]`` defining an
``nn.Module``, a spec, or a factory of either). ``--analytic`` computes the infinite-width NNGP and
NTK of a spec; otherwise the empirical NTK of the finite network (a spec's ``module`` drawn from
``--seed``, or the given module as it is). Output by extension: ``.npz`` / ``.pt`` (arrays
``ntk`` (N, N) [, ``nngp``] and, with ``--test``, ``ntk_test_train`` (M, N) [, ``nngp_test_train``])
or a ``.zarr`` store computed in tiles by :func:`torchntk.scale.tiled_kernel`
(``--tile/--memory/--executor/--scheduler``), resumable with ``torchntk kernel --resume STORE``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._common import CLIError, builtin_spec, check_writable, load_data, load_model_file


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("kernel", help="compute an empirical or infinite-width NTK and save it",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("--data", help="training inputs: .npz/.pt with array 'x' (and 'y'), or .npy")
    p.add_argument("--test", help="held-out inputs (same formats): also computes the (M, N) test/train kernel")
    p.add_argument("--model", help="Python file defining an nn.Module or a torchntk.layers spec (file.py[:name])")
    p.add_argument("--width", type=int, default=512, help="built-in network: hidden width (default 512)")
    p.add_argument("--depth", type=int, default=3, help="built-in network: number of Dense layers (default 3)")
    p.add_argument("--activation", default="relu", help="built-in network: relu, erf, gelu, tanh, abs")
    p.add_argument("--w-std", dest="w_std", type=float, default=1.0, help="built-in network: W_std (default 1)")
    p.add_argument("--b-std", dest="b_std", type=float, default=0.1, help="built-in network: b_std (default 0.1)")
    p.add_argument("--outputs", type=int, default=1, help="built-in network: output dimension (default 1)")
    p.add_argument("--analytic", action="store_true", help="infinite-width NNGP/NTK of the spec instead of the empirical NTK")
    p.add_argument("--mode", default="mean", choices=("mean", "full", "diagonal"),
                   help="empirical NTK mode (default mean: the scalar (N, N) kernel)")
    p.add_argument("--seed", type=int, default=0, help="seed of the finite network drawn from a spec")
    p.add_argument("--out", default="kernel.npz", help="output: .npz, .pt, or .zarr (a tiled store)")
    p.add_argument("--tile", type=int, default=None, help=".zarr: tile edge in examples (default: from --memory)")
    p.add_argument("--memory", default="2GiB", help=".zarr: memory budget of a tile (default 2GiB)")
    p.add_argument("--executor", default="inprocess", choices=("inprocess", "dask"), help=".zarr: where tiles run")
    p.add_argument("--scheduler", default=None, help=".zarr with dask: scheduler address tcp://host:8786 (default: a local cluster)")
    p.add_argument("--resume", metavar="STORE.zarr", default=None,
                   help="finish an interrupted .zarr store (all other settings are read from it)")
    p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bar")
    return p


_REQUEST_KEYS = ("data", "test", "model", "width", "depth", "activation", "w_std", "b_std", "outputs",
                 "analytic", "mode", "seed")


def _request(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that define the kernel (stored in a .zarr manifest for --resume)."""
    req = {k: getattr(args, k) for k in _REQUEST_KEYS}
    for k in ("data", "test", "model"):
        if req[k] is not None:
            path, sep, name = req[k].partition(":") if k == "model" and not os.path.exists(req[k]) else (req[k], "", "")
            req[k] = os.path.abspath(path) + (sep + name if sep else "")
    return req


def _build(req: dict[str, Any], x: torch.Tensor):
    """``(spec or None, module or None)`` of the request."""
    if req["model"]:
        obj = load_model_file(req["model"])
    else:
        obj = builtin_spec(req["width"], req["depth"], req["activation"], req["w_std"], req["b_std"], req["outputs"])
    is_module = isinstance(obj, torch.nn.Module)
    if req["analytic"]:
        if is_module:
            raise CLIError("--analytic needs a torchntk.layers spec; the model file gives an nn.Module "
                           "(drop --analytic for its empirical NTK)")
        return obj, None
    if is_module:
        return None, obj.double().eval()
    gen = torch.Generator().manual_seed(int(req["seed"]))
    return obj, obj.module(tuple(x.shape[1:]), generator=gen, dtype=torch.float64).eval()


def _compute(req: dict[str, Any], x: torch.Tensor, xt: torch.Tensor | None) -> dict[str, np.ndarray]:
    from .. import empirical_ntk

    spec, module = _build(req, x)
    out: dict[str, np.ndarray] = {}
    if module is None:
        k = spec.kernel(x)
        out.update(nngp=k.nngp.numpy(), ntk=k.ntk.numpy())
        if xt is not None:
            k = spec.kernel(xt, x)
            out.update(nngp_test_train=k.nngp.numpy(), ntk_test_train=k.ntk.numpy())
    else:
        out["ntk"] = empirical_ntk(module, x, mode=req["mode"]).detach().double().numpy()
        if xt is not None:
            out["ntk_test_train"] = empirical_ntk(module, xt, x, mode=req["mode"]).detach().double().numpy()
    return out


def _kernel_fn(req: dict[str, Any], x: torch.Tensor):
    from ..scale import kernel_fn_from_model, kernel_fn_from_spec

    spec, module = _build(req, x)
    if module is None:
        return kernel_fn_from_spec(spec)
    return kernel_fn_from_model(module, mode=req["mode"])


def _inputs(req: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not req["data"]:
        raise CLIError("--data is required (a .npz/.pt file with array 'x', or a .npy)")
    x, _ = load_data(req["data"])
    xt = None
    if req["test"]:
        xt, _ = load_data(req["test"])
        if xt.shape[1:] != x.shape[1:]:
            raise CLIError(f"--test inputs have per-example shape {tuple(xt.shape[1:])}, "
                           f"--data has {tuple(x.shape[1:])}")
    return x, xt


def run(args: argparse.Namespace) -> int:
    from ..scale import KernelStore, resume, tiled_kernel

    progress = not args.no_progress
    if args.resume:
        path = Path(args.resume)
        if not path.exists():
            raise CLIError(f"cannot resume {str(path)!r}: no store there")
        store = KernelStore.open(path)
        req = dict(store.manifest.get("identity") or {})
        if req.get("command") != "kernel":
            raise CLIError(f"{str(path)!r} was not written by `torchntk kernel`; resume it from Python "
                           "with torchntk.scale.resume")
        req.pop("command")
        x, xt = _inputs(req)
        fn = _kernel_fn(req, x)
        x1, x2 = (x, None) if xt is None else (xt, x)
        store = resume(path, fn, x1, x2, identity={"command": "kernel", **req}, executor=args.executor,
                       scheduler=args.scheduler, progress=progress)
        print(f"resumed {path}: {store.last_run['computed']} tiles computed, {store.last_run['skipped']} already there")
        return 0
    req = _request(args)
    x, xt = _inputs(req)
    out = Path(args.out)
    check_writable(out)
    if out.suffix == ".zarr":
        fn = _kernel_fn(req, x)
        x1, x2 = (x, None) if xt is None else (xt, x)   # with --test the store holds Theta(test, train)
        store = tiled_kernel(fn, x1, x2, out=out, tile=args.tile, memory=args.memory, executor=args.executor,
                             scheduler=args.scheduler, identity={"command": "kernel", **req}, resume=True,
                             progress=progress)
        print(f"wrote {out}: {', '.join(f'{n} {store.shape(n)}' for n in store.names)} "
              f"({store.last_run['computed']} tiles computed, {store.last_run['skipped']} already there)")
        return 0
    if out.suffix not in (".npz", ".pt"):
        raise CLIError(f"--out must end in .npz, .pt or .zarr, got {str(out)!r}")
    if args.tile is not None or args.executor != "inprocess" or args.scheduler:
        raise CLIError("--tile/--executor/--scheduler apply to a .zarr output only")
    arrays = _compute(req, x, xt)
    if out.suffix == ".npz":
        np.savez(out, **arrays)
    else:
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, out)
    print(f"wrote {out}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))
    return 0
