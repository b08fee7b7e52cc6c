"""The cost model behind ``implementation="auto"`` and the memory figures of the tiling (private).

Notation: ``N1, N2`` examples, ``O`` outputs, ``P`` differentiated parameters, ``F`` forward
flops per example (``2 P K C`` summed over the covered Linear/Conv layers found by a probe
forward pass, plus ``2`` per other parameter), ``s`` bytes per number, ``e = O^2`` in
``"full"`` mode and ``O`` otherwise (the output pairs actually formed).

* ``jacobian``: per-example Jacobians by ``O`` backward passes, ``3 F (O + 1)`` flops per
  example plus ``O F`` for forming the per-example weight gradients (``g^T a`` for every output
  and example), then ``2 N1 N2 e P`` flops of products; memory ``O P s`` per example.
* ``ntvp``: ``N2 O`` columns, each a backward pass over ``x2`` and a forward-mode pass over
  ``x1``: ``3 F N2 O (N1 + N2)`` flops; memory: a chunk of ``P``-vectors.
* ``structured``: one batched backward for all outputs (``3 F (O + 1)`` per example) and per
  covered layer the flops of :func:`torchntk.empirical.structured.layer_flops`
  (``2 N1 N2 (e C + K)`` for a Linear layer); the uncovered parameters as in ``jacobian``.
  Memory: ``O`` cotangents and one input per covered layer per example.

``auto`` takes the implementation with the fewest estimated flops among those whose memory for
the smallest tiling (one example per block) fits in the budget (``ntvp`` always fits). All
implementations are exact, so the choice affects time and memory only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._functional import Functional
from .jacobian import JacobianBackend
from .ntvp import NtvpBackend
from .structured import StructuredBackend, choose_method, layer_flops, probe_layers


@dataclass
class Plan:
    """A backend, its estimated flops and memory figures (bytes) for the tiling planner."""

    backend: object
    flops: float
    fixed_bytes: float
    example_bytes: float
    pair_bytes: float

    def min_bytes(self) -> float:
        return self.fixed_bytes + 2 * self.example_bytes + self.pair_bytes


def _entries(mode: str, o: int) -> int:
    return {"full": o * o, "diagonal": o, "mean": 1}[mode]


def _itemsize(fm: Functional, acc_dtype: torch.dtype | None) -> int:
    dt = next(iter(fm.params.values())).dtype
    size = torch.empty((), dtype=dt).element_size()
    if acc_dtype is not None:
        size = max(size, torch.empty((), dtype=acc_dtype).element_size())
    return size


def model_flops(fm: Functional, shapes: dict) -> float:
    """Forward flops per example: covered layers exactly, 2 per other parameter."""
    covered = sum(2 * sh.P * sh.K * sh.C for sh in shapes.values())
    return max(covered, 2.0 * sum(t.numel() for t in fm.params.values()))


def jacobian_flops(fwd: float, p: int, o: int, n1: int, n2: int, mode: str) -> float:
    """Backward passes, per-example weight gradients (``O F`` per example), products."""
    e = o * o if mode == "full" else o
    return 3 * fwd * (o + 1) * (n1 + n2) + o * fwd * (n1 + n2) + 2 * n1 * n2 * e * p


def structured_plan(fm: Functional, x1: torch.Tensor, n1: int, n2: int, o: int, mode: str,
                    per_layer: bool, s: int, budget: int) -> Plan:
    """The structured backend with its flop estimate and memory figures (see the module doc)."""
    layers, shapes, fallback = probe_layers(fm, x1)
    limit = budget / 4 / s
    methods = {lay.name: choose_method(shapes[lay.name], o, n1, n2, mode, limit) for lay in layers}
    e = o * o if mode == "full" else (o if mode == "diagonal" else 1)
    fwd = model_flops(fm, shapes)
    flops = 3 * fwd * (o + 1) * (n1 + n2)
    example, pair = 0.0, 3.0 * e
    for lay in layers:
        sh, m = shapes[lay.name], methods[lay.name]
        flops += layer_flops(sh, m, o, n1, n2, mode)
        example += (o + 2) * sh.P * sh.C + sh.P * sh.K
        if m == "jw":
            example += o * sh.C * sh.K
        if m == "pair":
            pair += (o * o if mode == "full" else o) * sh.P**2 + sh.P**2
    p_fb = sum(fm.params[n].numel() for n in fallback)
    if fallback:
        e_fb = o * o if mode == "full" else o
        flops += 3 * fwd * (o + 1) * (n1 + n2) + 2 * o * (n1 + n2) * p_fb + 2 * n1 * n2 * e_fb * p_fb
        example += 2 * o * p_fb
    parts = len(fm.params) if per_layer else 1
    backend = StructuredBackend(fm, o, layers, methods, fallback, shapes)
    return Plan(backend, flops, n1 * n2 * e * s * parts, example * s, pair * s)


def plan(
    fm: Functional,
    x1: torch.Tensor,
    n2: int,
    o: int,
    mode: str,
    implementation: str,
    budget: int,
    per_layer: bool,
    acc_dtype: torch.dtype | None,
) -> Plan:
    """Pick (``"auto"``) or build the backend for ``implementation`` with its cost figures."""
    n1 = x1.shape[0]
    s = _itemsize(fm, acc_dtype)
    p = sum(t.numel() for t in fm.params.values())
    e = _entries(mode, o)
    parts = len(fm.params) if per_layer else 1
    out_bytes = n1 * n2 * e * s * parts
    candidates: dict[str, Plan] = {}
    if implementation in ("auto", "structured"):
        candidates["structured"] = structured_plan(fm, x1, n1, n2, o, mode, per_layer, s, budget)
    fwd = 2.0 * p
    if implementation == "auto":
        fwd = model_flops(fm, candidates["structured"].backend.shapes)
    if implementation in ("auto", "jacobian"):
        candidates["jacobian"] = Plan(
            JacobianBackend(fm, o), jacobian_flops(fwd, p, o, n1, n2, mode), out_bytes, 2 * o * p * s, 3 * e * s
        )
    if implementation in ("auto", "ntvp"):
        chunk = int(max(1, budget / 4 // max(3 * p * s, 1)))
        candidates["ntvp"] = Plan(
            NtvpBackend(fm, o, chunk=chunk), 3 * fwd * n2 * o * (n1 + n2) * parts, out_bytes, 0.0, 3 * o * o * s
        )
    if implementation != "auto":
        return candidates[implementation]
    feasible = [v for k, v in candidates.items() if k == "ntvp" or v.min_bytes() <= budget]
    return min(feasible, key=lambda pl: pl.flops)
