"""Fingerprints of the inputs a kernel file was computed on, and the check that the data given
to ``predict`` / ``spectrum`` is that data (private).

A fingerprint is :func:`torchntk.scale._identity.tensor_hash` of the float64 inputs: the SHA-256
of their C-ordered bytes with their shape and dtype, the same hash a ``.zarr`` store records of
its ``x1``/``x2``. ``torchntk kernel`` writes the record ``{"train": ..., "test": ... or null}``
as a JSON string named ``torchntk_inputs`` into every ``.npz``/``.pt`` file; a store's own
manifest gives it for ``.zarr``. A kernel file without a record (written from Python, by hand, or
by an older torchntk) is used with a warning: refusing it would refuse every kernel computed
outside the command line, and nothing in such a file can tell which inputs it belongs to.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch

from ..scale._identity import tensor_hash
from ._common import CLIError

#: The name of the record in a kernel file.
RECORD = "torchntk_inputs"


def inputs_record(x: torch.Tensor, x_test: torch.Tensor | None) -> str:
    """The JSON record of the train inputs ``x`` and the test inputs ``x_test`` (or None)."""
    return json.dumps({"train": tensor_hash(x), "test": None if x_test is None else tensor_hash(x_test)},
                      sort_keys=True)


def parse_record(text: Any, path: str) -> dict[str, Any]:
    """The record stored in kernel file ``path`` (a JSON string), checked for its fields."""
    try:
        record = json.loads(str(text))
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("train"), dict) or not (
            record.get("test") is None or isinstance(record["test"], dict)):
        raise CLIError(f"kernel file {path!r} has a corrupt {RECORD!r} record: compute it again")
    return record


def store_record(manifest: dict[str, Any]) -> dict[str, Any]:
    """The record of a ``.zarr`` store: ``x1`` are the train inputs of a symmetric store; with
    ``--test`` the store holds ``Theta(test, train)``, so ``x1`` is test and ``x2`` train."""
    if manifest.get("symmetric", True):
        return {"train": manifest.get("x1"), "test": None}
    return {"train": manifest.get("x2"), "test": manifest.get("x1")}


def check_inputs(path: str, record: dict[str, Any] | None, x: torch.Tensor, x_test: torch.Tensor | None,
                 *, data: str, test: str | None) -> str | None:
    """Refuse (CLIError) a kernel file whose record does not match the inputs given.

    ``data``/``test``: how the inputs were named (messages). Returns the warning to print (with
    :func:`warn`, once the command has succeeded) when the file has no record, else None.
    """
    if record is None or record.get("train") is None:
        return (f"kernel file {path!r} records no fingerprint of its inputs (not written by `torchntk "
                f"kernel`, or by an older version): nothing checks that it was computed on {data}; "
                "recompute it with `torchntk kernel` to have that checked")
    _compare(path, "training", record["train"], x, data)
    if x_test is not None and record.get("test") is not None:
        _compare(path, "test", record["test"], x_test, test or data)
    return None


def warn(message: str | None) -> None:
    """Print ``message`` (if any) as one ``torchntk: warning: ...`` line on stderr."""
    if message:
        print(f"torchntk: warning: {message}", file=sys.stderr)


def _compare(path: str, which: str, stored: dict[str, Any], x: torch.Tensor, given: str) -> None:
    now = tensor_hash(x.to(torch.float64))
    keys = ("sha256", "shape", "dtype")
    if any(stored.get(k) != now[k] for k in keys):
        raise CLIError(
            f"kernel file {path!r} was computed on other {which} inputs than {given}: its fingerprint is "
            f"sha256 {str(stored.get('sha256'))[:12]}... of shape {tuple(stored.get('shape') or ())}, the "
            f"inputs given have {now['sha256'][:12]}... of shape {tuple(now['shape'])}; pass the inputs "
            "the kernel was computed on, or compute the kernel for these")
