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

* ``autograd``: ``N1 + N2`` forward passes and batched backward passes in a Python loop, then
  the products of ``jacobian``; it needs nothing but autograd, so it comes last.

``auto`` orders the implementations by estimated flops among those whose memory for the
smallest tiling (one example per block) fits in the budget (``ntvp`` always fits), leaves out
those that a cheap check (:func:`known_limits`, from the model's modules and the torch
functions seen by the structured probe) shows cannot handle the model, and appends the
fallbacks that need less of the model (``structured`` with the autograd loop for its uncovered
parameters, then ``autograd``). The caller tries them in that order. All implementations are
exact, so the choice affects time and memory only.

Plans are cached per model (weakly) and per model structure (:func:`structure_key`: a fresh
instance of an architecture planned before shares its plan), and per parameter set, input
shape, dtype, device and output selector: the output width, the structured probe and the
implementations found unable to handle the model are remembered, so a second call with the
same structure runs no probe and tries no failing implementation again.
"""

from __future__ import annotations

import contextlib
import types
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch
from torch import nn

from .._memory import format_memory
from ._blocks import plan_block
from ._functional import Functional
from ._tokens import group_flops
from .autograd import AutogradBackend
from .jacobian import JacobianBackend
from .ntvp import NtvpBackend
from .structured import StructuredBackend, choose_method, layer_flops, probe_layers

# Torch functions (as the probe sees them: the outermost call of a nest) whose CPU kernels have
# no forward-mode derivative: fused attention, and the attention of nn.MultiheadAttention.
_NO_FORWARD_AD = {
    "scaled_dot_product_attention", "_transformer_encoder_layer_fwd", "_native_multi_head_attention",
    "multi_head_attention_forward",
}
_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


@dataclass
class Plan:
    """A backend, its estimated flops and memory figures (bytes) for the tiling planner."""

    backend: object
    flops: float
    fixed_bytes: float
    example_bytes: float
    pair_bytes: float
    features: float = 0.0  # the part of ``flops`` spent on features (repeated when blocks recompute them)

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
    per = {"embedding": lambda sh: sh.P * sh.C, "norm": lambda sh: 8 * sh.P * sh.C}
    covered = sum(per.get(sh.kind, lambda sh: 2 * sh.P * sh.K * sh.C)(sh) for sh in shapes.values())
    return max(covered, 2.0 * sum(t.numel() for t in fm.params.values()))


#: Flops that one byte of features written and read back is worth in the estimates: a CPU core
#: streams a few bytes through memory in the time of one multiply-add of a large matrix product.
BYTE_FLOPS = 2.0


def pass_flops(fwd: float, o: int, n: int, weights: bool) -> float:
    """A forward pass and ``O`` backward passes on ``n`` examples: ``F`` each for the gradients
    of the layers' inputs, twice that with the per-example gradients of the weights too."""
    return fwd * n * (1 + (2 if weights else 1) * o)


def jacobian_flops(fwd: float, p: int, o: int, n1: int, n2: int, mode: str, s: int = 4) -> tuple[float, float]:
    """(all flops, the features' part) of the Jacobian path: the passes with weight gradients,
    ``O P`` numbers of Jacobian per example written and read (:data:`BYTE_FLOPS`), products."""
    e = o * o if mode == "full" else o
    feats = pass_flops(fwd, o, n1 + n2, True) + BYTE_FLOPS * 2 * (n1 + n2) * o * p * s
    return feats + 2 * n1 * n2 * e * p, feats


def recompute_factor(plan: Plan, n1: int, n2: int, budget: int) -> float:
    """How many times the features of each example are computed in the tiling the budget allows
    (1 when one block holds all examples; each row block's columns again otherwise)."""
    b = plan_block(max(n1, n2), None, budget, plan.fixed_bytes, plan.example_bytes, plan.pair_bytes)
    if b >= max(n1, n2):
        return 1.0
    rows = -(-n1 // b)
    return (n1 + rows * n2) / (n1 + n2)


def structured_plan(fm: Functional, probe: tuple, n1: int, n2: int, o: int, mode: str,
                    per_layer: bool, s: int, budget: int, loop: bool = False) -> Plan:
    """The structured backend with its flop estimate and memory figures (see the module doc).

    ``probe`` is the result of :func:`~torchntk.empirical.structured.probe_layers` (computed
    once per model structure and input shape, see the plan cache above); ``loop=True``
    differentiates the uncovered parameters by the autograd loop instead of ``vmap``.
    """
    layers, shapes, fallback = probe[:3]
    limit = budget / 4 / s
    methods = {lay.name: choose_method(shapes[lay.name], o, n1, n2, mode, limit) for lay in layers}
    e = o * o if mode == "full" else (o if mode == "diagonal" else 1)
    fwd = model_flops(fm, shapes)
    feats = pass_flops(fwd, o, n1 + n2, False)
    flops = 0.0
    example, pair = 0.0, 3.0 * e
    for lay in layers:
        sh, m = shapes[lay.name], methods[lay.name]
        flops += layer_flops(sh, m, o, n1, n2, mode)
        example += (o + 2) * sh.P * sh.C + sh.P * sh.K
        if m == "jw":
            example += o * sh.C * sh.K / sh.G
        if m == "pair":
            pair += (o * o if mode == "full" else o) * sh.active**2 + sh.active**2
    g_flops, g_pairs = group_flops(layers, shapes, o, n1, n2, mode)
    flops += g_flops
    pair += 3 * (o * o if mode == "full" else o) * g_pairs  # the two factor products and their product
    p_fb = sum(fm.params[n].numel() for n in fallback)
    if fallback:
        e_fb = o * o if mode == "full" else o
        feats += pass_flops(fwd, o, n1 + n2, True) + BYTE_FLOPS * 2 * (n1 + n2) * o * p_fb * s
        flops += 2 * n1 * n2 * e_fb * p_fb
        example += 2 * o * p_fb
    parts = len(fm.params) if per_layer else 1
    backend = StructuredBackend(fm, o, layers, methods, fallback, shapes, loop=loop)
    return Plan(backend, flops + feats, n1 * n2 * e * s * parts, example * s, pair * s, feats)


@dataclass
class Entry:
    """What is remembered for one model structure and input shape: the structured probe, the
    output width ``O`` and the implementations found unable to handle the model."""

    probe: tuple
    out_dim: int
    failed: set = field(default_factory=set)
    per_example: bool = False  # the model passed :func:`._guards.check_per_example`


def _key(fm: Functional, x1: torch.Tensor) -> tuple:
    sel = fm.output if isinstance(fm.output, (str, int, type(None))) else "callable"
    params = tuple((n, tuple(t.shape), t.dtype) for n, t in fm.params.items())
    return params, tuple(x1.shape[1:]), x1.dtype, str(x1.device), sel


# Attributes every nn.Module has (parameters, buffers, submodules, hook tables): the structure
# key covers them separately; ``training`` is kept (it changes the forward).
_MODULE_BOOKKEEPING = frozenset(vars(nn.Module())) - {"training"}
_SHARED_SIZE = 64
_SHARED: "OrderedDict[tuple, Entry]" = OrderedDict()


class _Opaque(Exception):
    """A module attribute whose value cannot be part of a structure key."""


def _value_key(v: object) -> object:
    """A hashable stand-in for a module attribute that determines the forward, by value only
    (never by ``id``, which a freed object's successor may reuse); raises :class:`_Opaque`."""
    if v is None or isinstance(v, (bool, int, float, str, torch.dtype, torch.device)):
        return (type(v).__name__, v)
    if isinstance(v, (tuple, list, frozenset)):
        return (type(v).__name__, tuple(_value_key(t) for t in v))
    if isinstance(v, (set, dict)):
        items = sorted(v.items() if isinstance(v, dict) else ((t, None) for t in v), key=repr)
        return (type(v).__name__, tuple((_value_key(k), _value_key(t)) for k, t in items))
    if isinstance(v, (types.FunctionType, types.BuiltinFunctionType)) and "<" not in v.__qualname__:
        # a module-level function (torch.relu, F.gelu): named, so it outlives any model
        return ("function", getattr(v, "__module__", None), v.__qualname__)
    raise _Opaque


def structure_key(module: nn.Module) -> tuple | None:
    """What decides a model's forward computation apart from its numbers: the module tree
    (names, classes, attributes, sharing of modules and parameters, buffer shapes), or ``None``
    when an attribute is not plain data (a config object, a tensor, a closure, a hook).

    Two modules with the same key run the same operations on inputs of the same shape, so they
    share a plan (:func:`entry`).
    """
    first: dict[int, int] = {}
    parts = []
    try:
        for k, (name, m) in enumerate(module.named_modules(remove_duplicate=False)):
            if m._forward_hooks or m._forward_pre_hooks:
                return None
            attrs = tuple(
                (a, _value_key(v)) for a, v in sorted(vars(m).items()) if a not in _MODULE_BOOKKEEPING
            )
            parts.append((name, type(m), first.setdefault(id(m), k), attrs))
    except _Opaque:
        return None
    seen: dict[int, int] = {}
    params = tuple(
        (n, tuple(p.shape), p.dtype, p.requires_grad, seen.setdefault(id(p), k))
        for k, (n, p) in enumerate(module.named_parameters(remove_duplicate=False))
    )
    buffers = tuple((n, tuple(b.shape), b.dtype) for n, b in module.named_buffers())
    return tuple(parts), params, buffers


def _rebind(ent: Entry, module: nn.Module | None) -> Entry:
    """A copy of ``ent`` whose layers point at the modules of ``module`` (``None``: at no
    module, for the shared cache, which must not keep a model alive)."""
    layers, shapes, fallback, functions = ent.probe
    layers = [replace(lay, module=None if module is None else module.get_submodule(lay.name)) for lay in layers]
    return Entry((layers, shapes, fallback, functions), ent.out_dim, set(ent.failed))


def entry(fm: Functional, x1: torch.Tensor, name: str = "x1") -> Entry:
    """The cached :class:`Entry` of ``fm`` at inputs shaped like ``x1`` (argument ``name``).

    Looked up per model instance (weakly), then per model structure (:func:`structure_key`,
    for a fresh instance of an architecture planned before); on a miss, the model runs on one
    or two examples: :meth:`Functional.probe` (checks the input and the output, gives ``O``)
    and :func:`probe_layers`.
    """
    if fm.module is None:
        return Entry(probe_layers(fm, x1), fm.probe(x1, name))
    per_model = _CACHE.setdefault(fm.module, {})
    key = _key(fm, x1)
    hit = per_model.get(key)
    if hit is not None:
        if callable(fm.output):  # selectors are not compared: O is measured again
            return replace(hit, out_dim=fm.probe(x1, name))
        return hit
    skey = structure_key(fm.module)
    shared = None if skey is None else _SHARED.get((skey, key))
    if shared is not None:
        _SHARED.move_to_end((skey, key))
        hit = _rebind(shared, fm.module)
        if callable(fm.output):
            hit.out_dim = fm.probe(x1, name)
    else:
        out_dim = fm.probe(x1, name)
        hit = Entry(probe_layers(fm, x1), out_dim)
        if skey is not None:
            _SHARED[(skey, key)] = _rebind(hit, None)
            while len(_SHARED) > _SHARED_SIZE:
                _SHARED.popitem(last=False)
    per_model[key] = hit
    return hit


@contextlib.contextmanager
def planning_threads() -> Iterator[None]:
    """Run the planning passes (:func:`entry`, the per-example check) on one thread: on two
    examples each operation is tiny, and a pool of threads waits for all of its threads at every
    operation, which costs milliseconds apiece when the cores are shared (a first call on a
    GPT-2 style model planned in 0.3-1.5 s on 2 threads of 2 busy cores, 0.07-0.12 s on one)."""
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


def known_limits(fm: Functional, functions: set[str]) -> set[str]:
    """Implementations that cannot handle the model, from cheap evidence: recurrent modules have
    no ``vmap`` rule; the fused attention kernels (``scaled_dot_product_attention``, the fast
    path of ``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention``) have no forward-mode
    rule on the CPU."""
    out: set[str] = set()
    if fm.module is not None and any(isinstance(m, nn.RNNBase) for m in fm.module.modules()):
        out |= {"jacobian", "structured"}
    if functions & _NO_FORWARD_AD:
        out.add("ntvp")
    return out


def candidates(
    fm: Functional,
    x1: torch.Tensor,
    n2: int,
    o: int,
    mode: str,
    implementation: str,
    budget: int,
    per_layer: bool,
    acc_dtype: torch.dtype | None,
    ent: Entry | None = None,
    left_out: dict[str, str] | None = None,
) -> tuple[list[Plan], Entry]:
    """The plans to try in order (one for an explicit ``implementation``) and the cache entry
    (``ent``: the :func:`entry` of ``fm`` at ``x1`` when the caller has it). ``left_out``, a
    dict, receives the implementations ``"auto"`` does not try, with the reason."""
    ent = entry(fm, x1) if ent is None else ent
    n1 = x1.shape[0]
    s = _itemsize(fm, acc_dtype)
    p = sum(t.numel() for t in fm.params.values())
    e = _entries(mode, o)
    parts = len(fm.params) if per_layer else 1
    out_bytes = n1 * n2 * e * s * parts
    fwd = model_flops(fm, ent.probe[1])
    jac_flops, jac_feats = jacobian_flops(fwd, p, o, n1, n2, mode, s)
    auto = implementation == "auto"
    plans: dict[str, Plan] = {}
    if auto or implementation == "structured":
        plans["structured"] = structured_plan(fm, ent.probe, n1, n2, o, mode, per_layer, s, budget)
    if auto or implementation == "jacobian":
        plans["jacobian"] = Plan(JacobianBackend(fm, o), jac_flops, out_bytes, 2 * o * p * s, 3 * e * s, jac_feats)
    if auto or implementation == "ntvp":
        chunk = int(max(1, budget / 4 // max(3 * p * s, 1)))
        plans["ntvp"] = Plan(
            NtvpBackend(fm, o, chunk=chunk), 3 * fwd * n2 * o * (n1 + n2) * parts, out_bytes, 0.0, 3 * o * o * s
        )
    if auto or implementation == "autograd":
        plans["autograd"] = Plan(AutogradBackend(fm, o), jac_flops, out_bytes, 2 * o * p * s, 3 * e * s, jac_feats)
    for pl in plans.values():  # blocks smaller than the batch compute the features again
        pl.flops += pl.features * (recompute_factor(pl, n1, n2, budget) - 1)
    if not auto:
        return [plans[implementation]], ent
    limits = known_limits(fm, ent.probe[3])
    why: dict[str, str] = {}
    for k in ("structured", "jacobian", "ntvp"):
        if k in ent.failed:
            why[k] = "failed on this model before (remembered)"
        elif k in limits:
            why[k] = "cannot handle this model (recurrent layers, or attention without a forward-mode rule)"
        elif k != "ntvp" and plans[k].min_bytes() > budget:
            why[k] = (f"needs {format_memory(plans[k].min_bytes())} even in blocks of one example, "
                      f"over the budget of {format_memory(budget)}")
    if left_out is not None:
        left_out.update(why)
    fast = [v for k, v in plans.items() if k in ("structured", "jacobian", "ntvp") and k not in why]
    order = sorted(fast, key=lambda pl: pl.flops)
    if ent.probe[0] and ent.probe[2] and "structured+autograd" not in ent.failed:
        order.append(structured_plan(fm, ent.probe, n1, n2, o, mode, per_layer, s, budget, loop=True))
    order.append(plans["autograd"])
    return order, ent
