"""Sketched empirical NTK: random projections of the per-example gradients to ``k`` dimensions.

For every example ``x_i`` and output ``a`` the gradient ``g_ia = d f_a(x_i) / d theta`` (``P``
numbers) is projected to ``k`` numbers by two independent count sketches of ``k / 2`` buckets
each, one after the other:

    phi_ia = [ S_1 g_ia, S_2 g_ia ] / sqrt(2),     (S g)_c = sum_{p : h(p) = c} s(p) g_p

with, per sketch, a bucket ``h(p)`` uniform in ``{0, ..., k/2 - 1}`` and a sign ``s(p) = +-1``
drawn for every parameter entry. Then ``E[<phi_ia, phi_jb>] = <g_ia, g_jb> = Theta[i, j, a, b]``
exactly (unbiased), and the variance of each entry is at most ``(Theta_ia,ia Theta_jb,jb +
Theta_ia,jb^2) / k`` (that of a dense Gaussian projection), so the relative Frobenius error is
about ``sqrt((1 + effective rank) / k)``. The two halves are independent sketches: the error of
a kernel is estimated from the kernels of the halves, ``||Theta_1 - Theta_2||_F / 2`` (each half
has twice the variance of the whole, and the halves' difference four times).

No ``P x k`` matrix is ever formed, and the projection is one of two:

* ``implementation="jacobian"``: the count sketches above of per-example Jacobians from
  :func:`torchntk.empirical.jacobian.jacobians`, on blocks of examples and groups of parameter
  tensors sized by the memory budget (``block x O x group size`` numbers at a time); the
  buckets and signs of a parameter tensor are drawn again from a generator seeded by ``(seed,
  its index)`` whenever they are needed.
* ``implementation="structured"``: the factors of the structured implementation (one forward
  pass and one batched backward pass per block of examples, :mod:`.structured`); the weight of
  every covered Linear, convolution, embedding (tied or not) gets a sum of Kronecker sign
  projections of its factors (:mod:`._layer_sketch`, never its per-example gradient), the other
  tensors (biases, norms, grouped convolutions, parameters outside covered layers) the count
  sketch above. Also unbiased; the Kronecker projections add a factor ``1 + (m1 + m2) / s``
  to the variance of their layers (``s`` the stable rank of a per-example gradient, ``m1, m2``
  the sides of the projections), the price of skipping the Jacobian.
* ``"auto"`` (the default): structured when the model has covered layers and their factors can
  be computed, else jacobian.

A seed gives the same projection on every call of the same implementation (the features of two
batches can be compared; :func:`sketched_ntk` projects ``x1`` and ``x2`` with the same one).
The projected features are what data attribution (TRAK-style scores) and the feature-space
solvers of :mod:`torchntk.features` take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from .._checks import check_batches, check_choice
from .._memory import memory_budget
from .._progress import progress_bar
from ..errors import InvalidArgumentError
from ._cost import entry, planning_threads
from ._failures import is_capability_error, unsupported
from ._functional import Functional, OutputSelector, ParamSelector, make_functional, model_input, plain_input
from ._guards import check_finite_model, check_per_example
from ._layer_sketch import KronSketch
from ._modes import MODES, finalize, gram
from .jacobian import jacobians
from .structured import StructuredBackend, pair_part

__all__ = ["gradient_features", "sketched_ntk", "SketchedKernel"]


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 2 or k % 2:
        raise InvalidArgumentError(f"`sketch` (k) must be an even int >= 2, got {k!r}")
    return k


def _hashes(numel: int, half: int, seed: int, index: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The buckets and signs of one parameter tensor for both sketches (drawn again on each call)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 7919 * index + 17)
    out = []
    for _ in range(2):
        bucket = torch.randint(0, half, (numel,), generator=g)
        sign = torch.randint(0, 2, (numel,), generator=g, dtype=torch.int8) * 2 - 1
        out.append((bucket.to(device), sign.to(device)))
    return out


def _groups(fm: Functional, limit: float) -> list[list[str]]:
    """Parameter names in consecutive groups of at most ``limit`` entries (one tensor at least)."""
    groups: list[list[str]] = [[]]
    size = 0
    for name, p in fm.params.items():
        if groups[-1] and size + p.numel() > limit:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += p.numel()
    return groups


def _blocks(n: int, b: int) -> Iterator[slice]:
    for s in range(0, n, b):
        yield slice(s, min(s + b, n))


#: How the per-example gradients are projected (see the module docstring).
IMPLEMENTATIONS = ("auto", "structured", "jacobian")


def gradient_features(
    model: nn.Module | Callable,
    x: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    params: ParamSelector = None,
    output: OutputSelector = None,
    memory: int | float | str | None = None,
    block_size: int | None = None,
    progress: bool | None = None,
    implementation: str = "auto",
) -> torch.Tensor:
    """Projected per-example gradients ``phi (N, O, k)``: ``<phi[i, a], phi[j, b]>`` is an unbiased
    estimate of the empirical NTK ``Theta[i, j, a, b]`` (see the module docstring).

    Args:
        model, params, output: as in :func:`torchntk.empirical_ntk`.
        x: inputs ``(N, ...)``.
        k: the sketch size (even): the features have ``k`` columns.
        seed: of the projection; the same seed (and implementation) gives the same projection
            on every call, so features of different batches can be compared.
        memory: budget of the per-example gradients held at once (default:
            :func:`torchntk._memory.default_memory`, a share of the memory available).
        block_size: examples per block (default: as many as ``memory`` allows, at most 64).
        progress: a bar over the blocks (``None``: shown past 2 s on a terminal).
        implementation: ``"structured"`` (Kronecker projections of the covered layers' factors,
            no per-example Jacobian of them), ``"jacobian"`` (count sketches of per-example
            Jacobians) or ``"auto"``: structured when the model has covered layers and their
            features can be computed, else jacobian.

    Returns:
        ``(N, O, k)`` in the dtype of the model's parameters.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
        >>> gradient_features(net, torch.randn(5, 3), 64).shape
        torch.Size([5, 2, 64])
    """
    return _features(model, [x], k, seed, params, output, memory, block_size, progress, implementation)[0][0]


Kept = dict[str, list[tuple[torch.Tensor, "torch.Tensor | None"]]]


def _features(model, xs: list, k, seed, params, output, memory, block_size, progress,
              implementation: str, exact: bool = False) -> list[tuple[torch.Tensor, Kept]]:
    """:func:`gradient_features` of every input of ``xs``, all with the same projection, each
    with the factors of the parameters kept for exact products (``exact=True``, structured
    only: :func:`._layer_sketch.exact_names`; else none)."""
    k = _check_k(k)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgumentError(f"`seed` must be an int, got {seed!r}")
    implementation = check_choice("implementation", implementation, IMPLEMENTATIONS)
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise InvalidArgumentError(f"`block_size` must be a positive int, got {block_size!r}")
    budget = memory_budget(memory)
    with torch.inference_mode(False), torch.enable_grad():
        fm = make_functional(model, params, output)
        names = ["x"] if len(xs) == 1 else ["x1", "x2"]
        pair = check_batches(*(model_input(name, x, fm) for x, name in zip(xs, ["x1", "x2"])))
        checked = [plain_input(x) for x in pair if x is not None]
        check_finite_model(fm)
        with planning_threads():
            ent = entry(fm, checked[0], names[0])  # the cached plan: output width, structured probe
            if not ent.per_example:
                check_per_example(fm, checked[0])
                ent.per_example = True
        out_dim = ent.out_dim
        for x, name in zip(checked[1:], names[1:]):
            if fm.probe(x, name) != out_dim:  # pragma: no cover - the probe raises first
                raise InvalidArgumentError(f"`{name}` gives another number of outputs than `x1`")
        backend = None
        if implementation != "jacobian":
            backend = _structured_backend(fm, ent.probe, out_dim)
            if backend is None and implementation == "structured":
                raise InvalidArgumentError(
                    "implementation='structured' needs covered layers (Linear, Conv, Embedding, "
                    "LayerNorm ...) among the selected parameters; use 'jacobian' or 'auto'")
        if backend is not None:
            try:
                return [_structured(fm, backend, x, k, seed, budget, block_size, progress, exact) for x in checked]
            except Exception as err:  # noqa: BLE001 - "auto" moves on, an explicit choice reports
                if not is_capability_error(err):
                    raise
                if implementation == "structured":
                    raise unsupported("structured", err) from err
        return [(_jacobian(fm, x, out_dim, k, seed, budget, block_size, progress), {}) for x in checked]


def _index(fm: Functional) -> dict[str, int]:
    return {name: i for i, name in enumerate(fm.params)}


def _count_sketch(phi: torch.Tensor, flat: torch.Tensor, numel_index: int, half: int, seed: int,
                  scale: float = 1.0) -> None:
    """Add both count sketches of ``flat (b, O, F)`` (one parameter tensor's gradients) to ``phi (b, O, k)``."""
    for part, (bucket, sign) in enumerate(_hashes(flat.shape[-1], half, seed, numel_index, flat.device)):
        s = sign.to(flat.dtype) if scale == 1.0 else sign.to(flat.dtype) * scale
        phi[:, :, part * half:(part + 1) * half].index_add_(2, bucket, flat * s)


def _jacobian(fm: Functional, x: torch.Tensor, out_dim: int, k: int, seed: int, budget: int,
              block_size: int | None, progress: bool | None) -> torch.Tensor:
    """Count sketches of per-example Jacobians, in blocks of examples and groups of tensors."""
    item = fm.dtype.itemsize
    total = sum(p.numel() for p in fm.params.values())
    # the Jacobian of a block of b examples and a group of G entries: b * O * G numbers (x3
    # for vmap's temporaries); blocks of up to 64 examples, groups of what is left
    b = block_size or int(max(1, min(64, x.shape[0], budget / (3 * item * out_dim * max(total, 1)))))
    groups = _groups(fm, max(1.0, budget / (3 * item * out_dim * b)))
    index = _index(fm)
    half = k // 2
    dev = next(iter(fm.params.values())).device
    phi = torch.zeros(x.shape[0], out_dim, k, dtype=fm.dtype, device=dev)
    blocks = list(_blocks(x.shape[0], b))
    bar = progress_bar(len(blocks) * len(groups), "gradient_features", progress)
    try:
        for rows in blocks:
            for names in groups:
                jac = jacobians(fm, x[rows], names)
                for name, j in jac.items():
                    _count_sketch(phi[rows], j.reshape(j.shape[0], out_dim, -1), index[name], half, seed)
                bar.update()
    finally:
        bar.close()
    return phi / math.sqrt(2.0)


def _methods(layers, shapes) -> dict[str, str]:
    """The structured features the projections take: the raw cotangents and patches
    (``"pair"``, ``"p1"`` for one position), the factors of embeddings and tied heads
    (``"use"``), explicit gradients of norms and grouped convolutions (``"norm"``, ``"jw"``)."""
    out = {}
    for lay in layers:
        sh = shapes[lay.name]
        if sh.kind in ("embedding", "tied"):
            out[lay.name] = "use"
        elif sh.kind == "norm":
            out[lay.name] = "norm"
        elif sh.G > 1:
            out[lay.name] = "jw"
        else:
            out[lay.name] = "p1" if sh.P == 1 else "pair"
    return out


def _structured_backend(fm: Functional, probe: tuple, out_dim: int) -> StructuredBackend | None:
    """The structured backend of the projections from the structured ``probe`` of
    :func:`._cost.entry`, or None when no layer is covered."""
    layers, shapes, fallback = probe[:3]
    if fm.module is None or not layers:
        return None
    return StructuredBackend(fm, out_dim, layers, _methods(layers, shapes), fallback, shapes)


def _structured(fm: Functional, backend: StructuredBackend, x: torch.Tensor, k: int, seed: int, budget: int,
                block_size: int | None, progress: bool | None, exact: bool = False) -> tuple[torch.Tensor, Kept]:
    """Kronecker projections of the covered layers (:mod:`._layer_sketch`), count sketches of
    everything else, in blocks of examples; with ``exact``, the factors of the parameters of
    :func:`._layer_sketch.exact_names` kept instead of projected."""
    o, half, item = backend.out_dim, k // 2, fm.dtype.itemsize
    index = _index(fm)
    # per example: the cotangents and inputs of every covered layer and their projections
    # (x3 for temporaries), the Jacobians of the uncovered parameters, the features
    per = sum((o + 2) * sh.P * sh.C + 2 * sh.P * sh.K for sh in backend.shapes.values())
    per = 3 * per + 3 * o * sum(fm.params[n].numel() for n in backend.fallback) + 2 * o * k
    b = block_size or int(max(1, min(64, x.shape[0], budget / (item * max(per, 1)))))
    dev = next(iter(fm.params.values())).device
    acc = torch.zeros(o, x.shape[0], k, dtype=fm.dtype, device=dev)  # output-major, as the factors
    blocks = list(_blocks(x.shape[0], b))
    bar = progress_bar(len(blocks), "gradient_features", progress)
    outs: list[torch.Tensor] = [acc]  # the block being filled
    hashes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # both halves' buckets and signs

    def count(flat: torch.Tensor, name: str, scale: float) -> None:
        """Both count sketches of ``flat (O, b, F)`` into the block, in one ``index_add_``."""
        hit = hashes.get(name)
        if hit is None:
            (b1, s1), (b2, s2) = _hashes(flat.shape[-1], half, seed, index[name], flat.device)
            hit = hashes[name] = (torch.cat([b1, b2 + half]), torch.cat([s1, s2]).to(flat.dtype))
        bucket, sign = hit
        outs[0].index_add_(2, bucket, flat.repeat(1, 1, 2) * (sign * scale))

    sketch = KronSketch(backend, half, seed, index, count, exact)
    try:
        for rows in blocks:
            feats, jac = backend.features(x[rows])
            outs[0] = block = acc[:, rows]
            sketch.add(feats, block)  # (O, b, k), a view
            for name, j in jac.items():
                _count_sketch(block.transpose(0, 1), j.reshape(j.shape[0], o, -1), index[name], half, seed)
            bar.update()
    finally:
        bar.close()
    phi = acc.transpose(0, 1).contiguous()
    return phi / math.sqrt(2.0), sketch.kept


@dataclass
class SketchedKernel:
    """A sketched empirical NTK and its estimated error.

    Attributes:
        kernel: the estimate, in the shape of ``mode`` (the features' dtype, or ``accumulate_dtype``).
        error: estimated relative Frobenius error ``||kernel - Theta||_F / ||Theta||_F``, from the
            two independent halves of the sketch.
        k: the sketch size.
    """

    kernel: torch.Tensor
    error: float
    k: int


def _contract(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    a, b = a.double(), b.double()
    if mode == "full":
        return torch.einsum("iak,jbk->ijab", a, b)
    diag = torch.einsum("iak,jak->ija", a, b)
    return diag if mode == "diagonal" else diag.mean(-1)


#: The axes of the two examples in the internal layout of each mode (:mod:`._modes`).
_EXAMPLE_AXES = {"full": (1, 3), "diagonal": (1, 2), "mean": (0, 1)}


def _runs(blocks: list) -> list:
    """Consecutive blocks of kept factors joined along the examples where their shapes allow
    (a weight's blocks may keep different numbers of positions)."""
    out: list = []
    for u, a in blocks:
        last = out[-1] if out else None
        if last is not None and (a is None) == (last[1] is None) and u.shape[2:] == last[0].shape[2:] \
                and (a is None or a.shape[1:] == last[1].shape[1:]):
            out[-1] = (torch.cat([last[0], u], 1), None if a is None else torch.cat([last[1], a], 0))
        else:
            out.append((u, a))
    return out


def _exact_part(kept1: Kept, kept2: Kept, mode: str, out_dim: int) -> torch.Tensor | None:
    """The exact kernel of the parameters kept by the sketch, in float64 and the public shape
    of ``mode``: ``sum <u1, u2>`` over a vector's per-example gradients ``u``, and ``sum_{p,q}
    (g1[p] . g2[q]) (a1[p] . a2[q])`` over a weight's cotangents ``g`` and inputs ``a``."""
    if not kept1:
        return None
    ax1, ax2 = _EXAMPLE_AXES[mode]
    total = None
    for name, blocks in kept1.items():
        rows = []
        for u1, a1 in _runs(blocks):
            row = []
            for u2, a2 in _runs(kept2[name]):
                if a1 is None:
                    row.append(gram(u1.double(), u2.double(), mode))
                else:
                    row.append(pair_part(u1.double(), a1.double(), u2.double(), a2.double(), mode))
            rows.append(torch.cat(row, ax2))
        part = torch.cat(rows, ax1)
        total = part if total is None else total.add_(part)
    return finalize(total, mode, out_dim)


def sketched_ntk(
    model: nn.Module | Callable,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    k: int = 4096,
    seed: int = 0,
    mode: str = "full",
    params: ParamSelector = None,
    output: OutputSelector = None,
    memory: int | float | str | None = None,
    block_size: int | None = None,
    progress: bool | None = None,
    accumulate_dtype: torch.dtype | None = None,
    implementation: str = "auto",
    exact_parts: bool = True,
) -> SketchedKernel:
    """The empirical NTK estimated from :func:`gradient_features` of size ``k``, with its error.

    With ``exact_parts`` (the default; structured implementation only) the parameters whose
    exact products cost less than their projections are not projected but contracted exactly:
    the weights of rank-one per-example gradients (a Linear map at one position with a
    cotangent, such as an MLP's layers or a causal model's layers after its last attention),
    then biases and norms' scales and shifts, while their factors take at most the ``O k``
    numbers per example of the features (:func:`._layer_sketch.exact_names`; the choice depends
    on the layers' sizes, not on ``N``). The estimate stays unbiased, its variance is that of
    the projected parameters alone, and ``error`` estimates the whole error. A model whose
    parameters all qualify (a small MLP) gets its exact kernel and ``error == 0``.
    ``exact_parts=False`` projects every parameter, as :func:`gradient_features` does.

    ``empirical_ntk(model, x1, x2, sketch=k, seed=seed, mode=mode)`` returns its ``kernel``. The
    products are summed in float64 and returned in the features' dtype (the model's parameters')
    or ``accumulate_dtype``.
    Cost: the features of every example (:func:`gradient_features`: the factors of the
    structured implementation and their projections, or one Jacobian per example) and
    ``N1 N2 O^2 k`` (full) or ``N1 N2 O k`` flops for the products, instead of ``P`` in place of
    ``k``, plus at most as much for the exact parts; memory ``(N1 + N2) O k`` for the features
    (at most twice that with the exact parts). ``implementation`` as in :func:`gradient_features`.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
        >>> x = torch.randn(6, 3)
        >>> est = sketched_ntk(net, x, k=512, mode="mean", exact_parts=False)
        >>> est.kernel.shape, 0 < est.error < 1
        (torch.Size([6, 6]), True)
        >>> sketched_ntk(net, x, k=512, mode="mean").error  # every layer is cheaper exact here
        0.0
    """
    mode = check_choice("mode", mode.lower() if isinstance(mode, str) else mode, MODES)
    xs = [x1] if x2 is None else [x1, x2]
    if not isinstance(exact_parts, bool):
        raise InvalidArgumentError(f"`exact_parts` must be True or False, got {exact_parts!r}")
    feats = _features(model, xs, k, seed, params, output, memory, block_size, progress, implementation,
                      exact_parts)
    (f1, kept1), (f2, kept2) = feats[0], feats[-1]
    half = k // 2
    # the halves are scaled by 1/sqrt(2) inside phi: each half's own estimate is 2 <phi_h, phi_h'>
    k1 = 2 * _contract(f1[..., :half], f2[..., :half], mode)
    k2 = 2 * _contract(f1[..., half:], f2[..., half:], mode)
    kernel = (k1 + k2) / 2
    exact = _exact_part(kept1, kept2, mode, f1.shape[1])
    if exact is not None:  # k1 - k2 stays the error of the projected part
        kernel = kernel + exact
    if x2 is None:
        kernel = (kernel + kernel.transpose(0, 1) if mode != "full" else kernel + kernel.permute(1, 0, 3, 2)) / 2
    norm = float(torch.linalg.vector_norm(kernel))
    error = float(torch.linalg.vector_norm(k1 - k2)) / 2 / max(norm, 1e-300)
    return SketchedKernel(kernel.to(accumulate_dtype or f1.dtype), error, k)
