"""``torchntk kernel --resume STORE``: finish an interrupted ``.zarr`` store (private).

The settings are read from the store (flags that would change them are refused); a store is
data: it never makes the command import the model file it names. A store computed from a model
file needs ``--model`` with that file again, checked against the sha256 recorded in the store.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ._common import CLIError, file_sha256, model_ref


#: Types of the request fields recorded in a store (checked before a resume uses them).
_REQUEST_TYPES = {"data": str, "test": (str, type(None)), "model": (str, type(None)), "width": int,
                  "depth": int, "activation": str, "w_std": (int, float, type(None)),
                  "b_std": (int, float, type(None)),
                  "outputs": int, "analytic": bool, "mode": str, "seed": int,
                  "n_train": (int, type(None)), "n_test": (int, type(None)), "data_seed": (int, type(None)),
                  "sketch": int, "sketch_seed": int}
_OPTIONAL = ("n_train", "n_test", "data_seed", "sketch", "sketch_seed")


def _stored_request(path: Path, store: Any) -> dict[str, Any]:
    """The request recorded in a store by `torchntk kernel`, checked field by field."""
    req = store.manifest.get("identity")
    if not isinstance(req, dict) or req.get("command") != "kernel":
        raise CLIError(f"{str(path)!r} was not written by `torchntk kernel`; resume it from Python "
                       "with torchntk.scale.resume")
    req = dict(req)
    req.pop("command")
    for key, kind in _REQUEST_TYPES.items():
        if key in _OPTIONAL and key not in req:       # stores of exact kernels, or written before built-in datasets
            continue
        if key not in req or not isinstance(req[key], kind) or (kind is int and isinstance(req[key], bool)):
            raise CLIError(f"the kernel store {str(path)!r} has corrupt metadata: its recorded request "
                           f"has {key}={req.get(key)!r}; delete the store and compute it again")
    if req["model"] is not None and not isinstance(req.get("model_sha256"), str):
        raise CLIError(f"the kernel store {str(path)!r} records no sha256 of its model file (corrupt, or "
                       "written by an older torchntk): delete the store and compute it again")
    return req


#: The options of `torchntk kernel` that define a kernel or its output: --resume reads them from
#: the store, so giving one is a conflict (dest -> flag).
_CONFLICTS = {"data": "--data", "test": "--test", "n_train": "--n-train", "n_test": "--n-test",
              "data_seed": "--data-seed", "width": "--width", "depth": "--depth", "activation": "--activation",
              "w_std": "--w-std", "b_std": "--b-std", "outputs": "--outputs", "analytic": "--analytic",
              "mode": "--mode", "seed": "--seed", "out": "--out", "block_size": "--block-size",
              "memory": "--memory", "features": "--features", "force": "--force", "sketch": "--sketch",
              "sketch_seed": "--sketch-seed"}


def resume_store(args: argparse.Namespace, progress: bool) -> int:
    """``torchntk kernel --resume STORE``: finish the store with the request recorded in it."""
    from ..scale import KernelStore, resume
    from .kernel import _inputs, _kernel_fn

    path = Path(args.resume)
    if not path.exists():
        raise CLIError(f"cannot resume {str(path)!r}: no store there")
    given = [flag for dest, flag in _CONFLICTS.items() if getattr(args, dest, None) not in (None, False)]
    req = _stored_request(path, KernelStore.open(path))
    if given:
        recorded = ", ".join(f"{d}={req[d]!r}" for d, f in _CONFLICTS.items() if f in given and d in req)
        raise CLIError(f"{', '.join(given)} conflict{'s' if len(given) == 1 else ''} with --resume, which "
                       f"continues the store with the settings recorded in it"
                       f"{' (' + recorded + ')' if recorded else ''}: drop "
                       f"{'it' if len(given) == 1 else 'them'}, or write a new store with --out")
    identity = {"command": "kernel", **req}
    if req["model"] is None:
        if args.model:
            raise CLIError(f"{str(path)!r} was computed from the built-in network, not a model file: drop --model")
    else:
        # never import the file the store names: the user names it, and it must be the recorded one
        stored_path, stored_name = model_ref(req["model"])
        if not args.model:
            raise CLIError(f"{str(path)!r} was computed from the model file {stored_path!r}: pass --model "
                           "with that file to resume (a store never runs code it names)")
        given_path, given_name = model_ref(args.model)
        if not os.path.exists(given_path):
            raise CLIError(f"model file {given_path!r} does not exist")
        if given_name != stored_name:
            raise CLIError(f"--model names {given_name or 'the default object'!r} but the store was computed "
                           f"from {stored_name or 'the default object'!r} of its model file")
        if file_sha256(given_path) != req["model_sha256"]:
            raise CLIError(f"--model {given_path!r} is not the model file the store was computed from "
                           f"(its sha256 differs from the recorded {req['model_sha256'][:12]}...)")
        req["model"] = given_path + (":" + given_name if given_name else "")
    x, xt = _inputs(req)
    fn = _kernel_fn(req, x)
    x1, x2 = (x, None) if xt is None else (xt, x)
    store = resume(path, fn, x1, x2, identity=identity, executor=args.executor, scheduler=args.scheduler,
                   progress=progress)
    run = store.last_run
    repaired = f" ({run['repaired']} of them damaged)" if run.get("repaired") else ""
    print(f"resumed {path}: {run['computed']} tiles computed{repaired}, {run['skipped']} already there")
    return 0

