"""What an implementation cannot do: run-time failures, and the torchntk error for them (private).

The vectorized paths need more of a model than plain autograd does: ``"jacobian"`` and the
uncovered part of ``"structured"`` need ``torch.func.vmap`` rules for every operation,
``"ntvp"`` forward-mode derivatives. A model may lack them (recurrent layers under ``vmap``,
``scaled_dot_product_attention`` without a forward-mode rule on the CPU, custom autograd
functions, in-place updates of captured tensors, data-dependent control flow). Such a failure is
a ``RuntimeError`` (``NotImplementedError`` included) raised while the kernel is computed;
:func:`is_capability_error` recognizes it, :func:`failing_operation` names the operation, and
:func:`unsupported` builds the :class:`~torchntk.errors.UnsupportedLayerError` of an explicit
implementation (``"auto"`` falls back instead).
"""

from __future__ import annotations

import os
import re
import traceback

import torch

from ..errors import TorchNTKError, UnsupportedLayerError

# What to use instead of each implementation when it cannot handle a model.
ALTERNATIVES = {
    "ntvp": "'jacobian' or 'autograd'",
    "jacobian": "'autograd' (or 'ntvp')",
    "structured": "'autograd'",
    "structured+autograd": "'autograd'",
}

_INTERNAL = tuple(
    os.sep + os.path.join(*part.split("/")) for part in (
        "torch/_functorch", "torch/autograd", "torch/utils", "torch/_ops.py", "torch/_tensor.py",
        "torch/overrides.py", "torch/func", "torch/_compile.py", "torch/_dynamo", "torchntk/empirical",
    )
)


def is_capability_error(err: BaseException) -> bool:
    """True for a failure of a differentiation path on a model (not a user mistake or OOM)."""
    return (
        isinstance(err, RuntimeError)
        and not isinstance(err, (TorchNTKError, torch.OutOfMemoryError))
    )


def failing_operation(err: BaseException) -> str:
    """The operation named by ``err``'s message, or the model's source line where it failed."""
    msg = str(err)
    m = re.search(r"forward AD with (\S+)", msg)
    if m:
        return f"{m.group(1)} (no forward-mode derivative)"
    m = re.search(r"[Bb]atching rule not implemented for (\S+)", msg)
    if m:
        return f"{m.group(1).rstrip('.;,')} (no vmap batching rule)"
    frames = traceback.extract_tb(err.__traceback__)
    outside = [f for f in frames if not any(part in f.filename for part in _INTERNAL)]
    where = ""
    if outside:
        f = outside[-1]
        where = f"`{(f.line or '').strip()}` ({os.path.basename(f.filename)}:{f.lineno})"
    first = msg.strip().splitlines()[0] if msg.strip() else type(err).__name__
    return f"{where}: {type(err).__name__}: {first}" if where else f"{type(err).__name__}: {first}"


def unsupported(implementation: str, err: BaseException) -> UnsupportedLayerError:
    """The error of an explicit ``implementation`` that cannot handle the model."""
    alt = ALTERNATIVES.get(implementation)
    hint = (
        f"use implementation={alt}, or 'auto', which picks one that works"
        if alt else "autograd itself cannot differentiate this model"
    )
    return UnsupportedLayerError(
        f"implementation={implementation!r} cannot handle this model: it failed at "
        f"{failing_operation(err)}; {hint}"
    )
