"""The cost model behind ``implementation="auto"`` and the memory figures of the tiling (private).

Notation: ``N1, N2`` examples, ``O`` outputs, ``P`` differentiated parameters, ``F ~ 2 P``
forward flops per example (a dense-network estimate), ``s`` bytes per number.

* ``jacobian``: features ``3 F O`` flops per example (``O`` backward passes), products
  ``2 N1 N2 O^2 P`` flops in ``"full"`` mode and ``2 N1 N2 O P`` otherwise; memory ``O P s`` per
  example (its Jacobian).
* ``ntvp``: ``N2 O`` columns, each a backward pass over ``x2`` and a forward-mode pass over
  ``x1``: ``3 F N2 O (N1 + N2)`` flops; memory a chunk of ``P``-vectors and activations.
* ``structured``: see :mod:`torchntk.empirical.structured` (``StructuredBackend.flops``):
  ``O`` batched backward passes (``3 F O`` per example) and, per covered layer of width
  ``C`` out and ``K`` in, ``2 N1 N2 (O^2 C + K)`` flops (full) or ``2 N1 N2 (O C + K)``
  (diagonal, mean); uncovered parameters cost as in ``jacobian``. Memory ``O`` cotangents and one
  input per covered layer per example.

``auto`` takes the implementation with the fewest estimated flops among those whose blocks of
at least one example fit in the memory budget (``ntvp`` always does); all implementations give
the same kernel up to rounding, so the choice only affects time and memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._functional import Functional
from .jacobian import JacobianBackend
from .ntvp import NtvpBackend


@dataclass
class Plan:
    """The chosen backend and its memory figures (bytes) for :func:`plan_block`."""

    backend: object
    flops: float
    fixed_bytes: float
    example_bytes: float
    pair_bytes: float


def _entries(mode: str, o: int) -> int:
    return {"full": o * o, "diagonal": o, "mean": 1}[mode]


def _itemsize(fm: Functional, acc_dtype: torch.dtype | None) -> int:
    dt = next(iter(fm.params.values())).dtype
    size = torch.empty((), dtype=dt).element_size()
    if acc_dtype is not None:
        size = max(size, torch.empty((), dtype=acc_dtype).element_size())
    return size


def jacobian_plan(fm, n1, n2, o, mode, per_layer, s) -> Plan:
    p = sum(t.numel() for t in fm.params.values())
    e = _entries(mode, o)
    flops = 6 * p * o * (n1 + n2) + 2 * n1 * n2 * (o * o if mode == "full" else o) * p
    parts = len(fm.params) if per_layer else 1
    return Plan(JacobianBackend(fm, o), flops, n1 * n2 * e * s * parts, 2 * o * p * s, 3 * e * s)


def ntvp_plan(fm, n1, n2, o, mode, per_layer, s, budget) -> Plan:
    p = sum(t.numel() for t in fm.params.values())
    e = _entries(mode, o)
    parts = len(fm.params) if per_layer else 1
    flops = 6 * p * n2 * o * (n1 + n2) * parts
    room = (budget or 2 * 1024**3) / 4
    chunk = int(max(1, room // max(3 * p * s, 1)))
    return Plan(NtvpBackend(fm, o, chunk=chunk), flops, n1 * n2 * e * s * parts, 8 * p * s / max(n2, 1), 3 * o * o * s)


def plan(
    fm: Functional,
    x1: torch.Tensor,
    n2: int,
    o: int,
    mode: str,
    implementation: str,
    budget: int | None,
    per_layer: bool,
    acc_dtype: torch.dtype | None,
) -> Plan:
    """Pick (``"auto"``) or build the backend for ``implementation`` with its memory figures."""
    n1 = x1.shape[0]
    s = _itemsize(fm, acc_dtype)
    candidates: dict[str, Plan] = {}
    if implementation in ("auto", "jacobian"):
        candidates["jacobian"] = jacobian_plan(fm, n1, n2, o, mode, per_layer, s)
    if implementation in ("auto", "ntvp"):
        candidates["ntvp"] = ntvp_plan(fm, n1, n2, o, mode, per_layer, s, budget)
    if implementation in ("auto", "structured"):
        try:
            from .structured import structured_plan
        except ImportError:  # pragma: no cover - first increment: structured not yet built
            if implementation == "structured":
                raise
        else:
            candidates["structured"] = structured_plan(fm, x1, n1, n2, o, mode, per_layer, s)
    if implementation != "auto":
        return candidates[implementation]
    limit = budget or 2 * 1024**3
    feasible = {
        k: v for k, v in candidates.items()
        if k == "ntvp" or v.fixed_bytes + 2 * v.example_bytes + v.pair_bytes <= limit
    }
    return min(feasible.values(), key=lambda pl: pl.flops)
