"""Sketches of the structured features, layer by layer (private; see :mod:`.sketch`).

A covered layer's weight gradient is ``X[i, a] = ws * sum_p g[i, a, p] A[i, p]^T`` (``C x K``:
the cotangents ``g`` of its output at ``P`` positions and its input patches ``A``, see
:mod:`.structured`). Each half of the sketch projects it with ``r`` independent Kronecker
sign projections of ``m1 x m2`` numbers each (``k_h = r m1 m2``, the half's size):

    h[i, a] = ws / sqrt(k_h) * [ S1_rho X[i, a] S2_rho^T ]_{rho = 1..r},
    S1_rho X S2_rho^T = sum_p (S1_rho g[i, a, p]) (S2_rho A[i, p])^T,

with ``S1_rho (m1, C)`` and ``S2_rho (m2, K)`` of independent random signs. The right-hand
side never forms ``X`` (route ``"positions"``: the cotangents and patches projected, then one
small product per replica); a layer with many positions and a small ``C K`` forms the
per-example gradients ``X`` first (route ``"weights"``), whichever costs fewer flops. Both
routes compute the same projection (they differ by rounding), so the route never changes
what a seed draws.

Since ``E[S^T S] = m I`` for an ``(m, d)`` sign matrix, ``E <h[i, a], h[j, b]> = <X[i, a],
X[j, b]>``: the estimate is unbiased. Its variance: for ``X = Y`` of stable rank ``s =
|X|_F^4 / |X^T X|_F^2`` (at most the number of positions), the relative variance of
``|h|^2`` is about ``2 (1 + (m1 + m2) / s) / k_h``, against ``2 / k_h`` for a dense Gaussian
projection of the same size: the factor ``1 + (m1 + m2) / s`` is what the speed costs.
:func:`kron_shape` trades that factor against the flops of the projections; a layer of one
position (a rank-one gradient, ``s = 1``) gets ``m1 = m2 = 1``, the factor 3 of the product
of two sign projections (a larger side, cheaper, was measured to give errors 1.9x the
estimate on a GPT-2 model). A tensor sketch (the circular convolution of the factors' count sketches, by
FFT) has the same factor for rank one (its collisions are shared along rows and columns too)
and ran 2x slower than these matrix products on the CPU, so it is not used.

An embedding's "patches" are one-hot rows (``S1 e_id`` is a column of ``S1``: a gather), and the
uses of a weight tied between an embedding and an output head share its ``S1, S2`` (the
projection is linear, so the sum of the uses' projections is the projection of the total
gradient). Everything else the structured features hold as explicit vectors (biases, norms'
scales and shifts, the per-group gradients of a grouped convolution) is count-sketched by the
caller, like the Jacobians of the parameters outside covered layers.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

import torch

from .structured import LayerShape, StructuredBackend

#: The stable rank the shape rule of :func:`kron_shape` assumes for a gradient summed over
#: several positions (a transformer's cotangents at initialization are close to parallel
#: across positions), and the largest ``m1 + m2`` it allows.
ASSUMED_RANK = 2.0
MAX_SIDES = 40


def kron_shape(k_h: int, c: int, k: int, o_c: float, o_k: float, several: bool) -> tuple[int, int, int]:
    """``(r, m1, m2)`` with ``r m1 m2 = k_h`` for a weight ``C x K`` whose ``C``-side factors
    come ``o_c`` per position and example (the cotangents of ``O`` outputs: ``O``; an
    embedding's ids: 0, a gather) and its ``K``-side factors ``o_k`` (a layer's inputs: 1; an
    embedding's cotangents: ``O``): ``m1, m2`` powers of two, ``m1 <= C``, ``m2 <= K``, ``m1 +
    m2 <= MAX_SIDES``, that minimize the projections' flops ``k_h (o_c C / m2 + o_k K / m1)``
    times the variance factor ``1 + (m1 + m2) / ASSUMED_RANK``: the least work for a given
    error. A gradient of one position (``several=False``: rank one, factor ``1 + m1 + m2``)
    gets ``m1 = m2 = 1``: the smallest factor (3). The rule sees only the layer's sizes, not
    the numbers of examples or positions, so a seed draws the same projection for inputs of
    any length."""
    if not several:
        return k_h, 1, 1
    best = (math.inf, 1, 1)
    m1 = 1
    while m1 <= c and k_h % m1 == 0:
        m2 = 1
        while m2 <= k and k_h % (m1 * m2) == 0 and m1 + m2 <= MAX_SIDES:
            score = (o_c * c / m2 + o_k * k / m1) * (1 + (m1 + m2) / ASSUMED_RANK)
            best = min(best, (score, m1, m2))
            m2 *= 2
        m1 *= 2
    _, m1, m2 = best
    return k_h // (m1 * m2), m1, m2


def signs(seed: int, index: int, part: int, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """A ``(rows, cols)`` matrix of independent random signs, a function of ``(seed, index,
    part)`` and the shape (64 per random word), in the dtype and on the device of ``like``.
    Kept in a cache of at most :data:`SIGNS_CACHE_BYTES` (least recently used out first), since
    the calls of a session draw the same matrices again; the result must not be modified."""
    key = (int(seed), index, part, rows, cols, like.dtype, like.device)
    hit = _SIGNS.get(key)
    if hit is not None:
        _SIGNS.move_to_end(key)
        return hit
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 7919 * index + 104_729 * (part + 1) + 5)
    n = rows * cols
    words = torch.randint(-(1 << 63), (1 << 63) - 1, (-(-n // 64), 1), generator=g, dtype=torch.int64)
    bits = (words >> torch.arange(64, dtype=torch.int64)) & 1
    s = (bits.flatten()[:n].view(rows, cols).to(torch.int8) * 2 - 1).to(device=like.device, dtype=like.dtype)
    size = s.numel() * s.element_size()
    if size <= SIGNS_CACHE_BYTES:
        _SIGNS[key] = s
        global _SIGNS_HELD
        _SIGNS_HELD += size
        while _SIGNS_HELD > SIGNS_CACHE_BYTES and _SIGNS:
            _, old = _SIGNS.popitem(last=False)
            _SIGNS_HELD -= old.numel() * old.element_size()
    return s


#: Bytes of sign matrices kept between calls by :func:`signs`.
SIGNS_CACHE_BYTES = 256 << 20
_SIGNS: OrderedDict = OrderedDict()
_SIGNS_HELD = 0


def clear_signs() -> None:
    """Empty the cache of :func:`signs`."""
    global _SIGNS_HELD
    _SIGNS.clear()
    _SIGNS_HELD = 0


def route_flops(o: int, n: int, p: int, c: int, k: int, r: int, m1: int, m2: int) -> tuple[float, float]:
    """Flops of the routes ``"positions"`` and ``"weights"`` for ``n`` examples."""
    k_h = r * m1 * m2
    positions = 2 * o * n * p * c * r * m1 + 2 * n * p * k * r * m2 + 2 * o * n * p * k_h
    weights = 2 * o * n * p * c * k + 2 * o * n * c * k * r * m2 + 2 * o * n * c * k_h
    return positions, weights


def _pairs(U: torch.Tensor, V: torch.Tensor, r: int, m1: int, m2: int, u_out: bool, v_out: bool) -> torch.Tensor:
    """``sum_p U[., p, rho, :] (x) V[., p, rho, :]`` as ``(O, N, r m1 m2)`` for ``U (O|., N, P, r m1)``
    and ``V (O|., N, P, r m2)`` (``u_out``/``v_out``: whether the factor has the output axis)."""
    U = U.unflatten(-1, (r, m1))
    V = V.unflatten(-1, (r, m2))
    lhs = ("o" if u_out else "") + "npra"
    rhs = ("o" if v_out else "") + "nprb"
    h = torch.einsum(f"{lhs},{rhs}->onrab", U, V)
    return h.reshape(h.shape[0], h.shape[1], -1)


class KronSketch:
    """The Kronecker projections of both halves of a sketch (``2 k_h`` numbers, the halves'
    replicas side by side: one product per factor for both) for the covered layers of a
    structured backend; explicit vectors go to ``count (flat (O, N, F), name, scale)``.

    With ``exact=True`` the parameters of :func:`exact_names` are not projected: their scaled
    factors are kept, per block, in :attr:`kept` (``name -> [(G (O, b, P, C), A (b, P, K))]``
    for a weight, ``[(u (O, b, F), None)]`` for a vector) for exact products."""

    def __init__(self, backend: StructuredBackend, k_h: int, seed: int, index: dict[str, int],
                 count: Callable[[torch.Tensor, str, float], None], exact: bool = False) -> None:
        self.backend, self.k_h, self.seed = backend, k_h, seed
        self.index, self.count = index, count
        self.kept: dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]] = {}
        o = backend.out_dim
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # the factors, drawn once per call
        self.shapes: dict[str, tuple[int, int, int]] = {}  # weight name -> (r, m1, m2)
        for lay in backend.layers:
            if lay.weight is None or lay.weight in self.shapes:
                continue
            sh = backend.shapes.get(lay.name) or LayerShape(P=1, K=1, C=1)
            c, kk = _weight_dims(lay, sh)
            if lay.tied or lay.kind == "embedding":  # the table's ids are gathered, an output
                # head's cotangents projected; the embedding's cotangents on the other side
                head = any(u.tied for u in backend.layers if u.weight == lay.weight)
                self.shapes[lay.weight] = kron_shape(k_h, c, kk, o if head else 0, o + head, True)
            else:
                # one position with a cotangent (a Linear on (N, K) inputs, the layers after a
                # causal model's last attention): a rank-one gradient
                self.shapes[lay.weight] = kron_shape(k_h, c, kk, o, 1, sh.active > 1)
        self.exact = exact_names(backend, self.shapes, o * 2 * k_h) if exact else frozenset()

    def _factors(self, name: str, c: int, k: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``S1 (2 r m1, C)`` and ``S2 (2 r m2, K)`` of a weight, one row per (replica, side
        index), the first half's ``r`` replicas first (each half's drawn from ``(seed, index,
        2 half)`` and ``(seed, index, 2 half + 1)``)."""
        hit = self.cache.get(name)
        if hit is None:
            r, m1, m2 = self.shapes[name]
            i = self.index[name]
            hit = (torch.cat([signs(self.seed, i, 2 * h, r * m1, c, like) for h in range(2)]),
                   torch.cat([signs(self.seed, i, 2 * h + 1, r * m2, k, like) for h in range(2)]))
            self.cache[name] = hit
        return hit

    def _table_factors(self, name: str, v: int, d: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors of an embedding group's table ``(V, d)``, ``S1`` transposed ``(V, 2 r m1)``
        (rows gathered at the ids, or multiplied by a head's cotangents)."""
        key = name + "/table"
        hit = self.cache.get(key)
        if hit is None:
            S1, S2 = self._factors(name, v, d, like)
            hit = self.cache[key] = (S1.T.contiguous(), S2)
        return hit

    def _vector(self, flat: torch.Tensor, name: str, scale: float) -> None:
        if name in self.exact:
            self.kept.setdefault(name, []).append((flat * scale, None))
        else:
            self.count(flat, name, scale)

    def add(self, feats: list, out: torch.Tensor) -> None:
        """Add the projections of the layer features ``feats`` (of a block of examples) to
        ``out (O, N, 2 k_h)``."""
        for lf in feats:
            lay = lf.lay
            if lf.method == "use":
                u = lf.use
                if lay.bias is not None:
                    self._vector(u.gs, lay.bias, lay.bs)
                self._use(lay, u, out)
                continue
            if lf.method == "jw":  # norms and grouped convolutions: explicit gradients
                if lay.weight is not None and lf.u is not None:
                    self._vector(lf.u, lay.weight, lay.ws)
                if lay.bias is not None and lf.v is not None:
                    self._vector(lf.v, lay.bias, lay.bs)
                continue
            if lf.method == "p1":  # one position: u (O, N, C), v (N, K)
                if lay.bias is not None:
                    self._vector(lf.u, lay.bias, lay.bs)
                if lay.weight is not None:
                    self._weight(lay, lf.u[:, :, None], lf.v[:, None], out)
                continue
            if lay.bias is not None:  # "pair": u (O, N, P, C), v (N, P, K), gs (O, N, C)
                self._vector(lf.gs, lay.bias, lay.bs)
            if lay.weight is not None:
                self._weight(lay, lf.u, lf.v, out)

    def _weight(self, lay, G: torch.Tensor, A: torch.Tensor, out: torch.Tensor) -> None:
        if lay.weight in self.exact:
            self.kept.setdefault(lay.weight, []).append((G * lay.ws, A))
            return
        o, n, p, c = G.shape
        k = A.shape[-1]
        r, m1, m2 = self.shapes[lay.weight]
        S1, S2 = self._factors(lay.weight, c, k, G)
        scale = lay.ws / math.sqrt(self.k_h)
        positions, weights = route_flops(o, n, p, c, k, 2 * r, m1, m2)
        if positions <= weights:
            h = _pairs(G @ S1.T, A @ S2.T, 2 * r, m1, m2, True, False)
        else:
            X = torch.einsum("onpc,npk->onck", G, A)
            T = (X @ S2.T).unflatten(-1, (2 * r, m2))  # (O, N, C, 2r, m2)
            h = torch.einsum("rac,oncrb->onrab", S1.view(2 * r, m1, c), T).reshape(o, n, -1)
        out.add_(h, alpha=scale)

    def _use(self, lay, u, out: torch.Tensor) -> None:
        """One use of an embedding group's weight ``(V, d)``: ids and cotangents (embedding) or
        cotangents and inputs (a tied Linear head)."""
        if lay.weight is None:
            return
        scale = lay.ws / math.sqrt(self.k_h)
        r, m1, m2 = self.shapes[lay.weight]
        v, d = lay.module.weight.shape
        if lay.kind == "embedding":
            ids, G = u.rows, u.cols  # (N, P), (O, N, P, d)
            S1t, S2 = self._table_factors(lay.weight, v, d, G)
            U = S1t[ids]  # (N, P, 2 r m1): the columns of S1 at the ids
            h = _pairs(U, G @ S2.T, 2 * r, m1, m2, False, True)
        else:
            G, A = u.rows, u.cols  # (O, N, P, V), (N, P, d)
            S1t, S2 = self._table_factors(lay.weight, v, d, G)
            used = G.flatten(0, 2).any(0)  # words without cotangent (unselected logits) add nothing
            if not bool(used.all()):
                keep = torch.nonzero(used).flatten()
                G, S1t = G[..., keep], S1t[keep]
            h = _pairs(G @ S1t, A @ S2.T, 2 * r, m1, m2, True, False)
        out.add_(h, alpha=scale)


def exact_names(backend: StructuredBackend, shapes: dict[str, tuple[int, int, int]], budget: int) -> frozenset[str]:
    """The parameters whose products are cheaper exact than projected, at most ``budget``
    numbers per example in all (the ``O k`` numbers of the features: the exact products then
    cost at most as much as the features' products, and their factors take at most as much
    memory): first the weights of rank-one gradients (one position with a cotangent; ``O C + K``
    numbers, projected with the variance factor 3 at ``2 k (O C + K)`` flops per example), then
    the explicit vectors (biases, norms' scales and shifts, grouped convolutions' weights: ``O F``).
    The choice depends on the layers' sizes only (never on the number of examples), so the
    tiles of a kernel and the whole kernel choose alike. ``shapes`` holds the covered weights
    (:class:`KronSketch`); a tied or embedding weight is a group of uses (never rank one), a
    grouped convolution's weight a vector."""
    o = backend.out_dim
    rank_one, vectors = [], []
    for lay in backend.layers:
        sh = backend.shapes.get(lay.name) or LayerShape(P=1, K=1, C=1)
        method = backend.methods[lay.name]
        if method in ("p1", "pair") and lay.weight in shapes and sh.active <= 1:
            rank_one.append((lay.weight, o * sh.C + sh.K))
        if method == "use":
            if lay.bias is not None:
                vectors.append((lay.bias, o * lay.module.weight.shape[0]))
            continue
        if method in ("norm", "jw"):
            if lay.weight is not None:
                vectors.append((lay.weight, o * lay.module.weight.numel()))
        if lay.bias is not None:
            vectors.append((lay.bias, o * lay.module.bias.numel()))
    chosen, used = set(), 0
    for name, size in rank_one + vectors:
        if name not in chosen and used + size <= budget:
            chosen.add(name)
            used += size
    return frozenset(chosen)


def _weight_dims(lay, sh: LayerShape) -> tuple[int, int]:
    """``(C, K)`` of a covered weight: rows (outputs; the table's rows for an embedding group)
    and columns (patch numbers; the table's width)."""
    if lay.kind == "embedding" or lay.tied:
        v, d = lay.module.weight.shape
        return v, d
    return sh.C, sh.K


def _uses(backend: StructuredBackend, weight: str) -> list[LayerShape]:
    return [backend.shapes.get(lay.name) or LayerShape(P=1, K=1, C=1)
            for lay in backend.layers if lay.weight == weight]
