"""The structured implementation: the per-layer factorization of the NTK.

For a covered layer ``y = ws * W (patches of a) + bs * b`` (see :mod:`._layers`) with
output cotangents ``g[i, a] = d f_a(x_i) / d y(x_i)`` of shape ``(P, C)`` and input patches
``A[i]`` of shape ``(P, K)``, the per-example gradients are ``dF_a/dW = ws * g[i, a]^T A[i]`` and
``dF_a/db = bs * sum_p g[i, a, p]``, so the layer's part of the kernel is

    Theta_W[i, j, a, b] = ws^2 * sum_{p, q} (g[i, a, p] . g[j, b, q]) (A[i, p] . A[j, q])
    Theta_b[i, j, a, b] = bs^2 * (sum_p g[i, a, p]) . (sum_q g[j, b, q])

For ``P = 1`` (a Linear layer on ``(N, K)`` inputs) this is the elementwise product of the Gram
matrix of the cotangents (``N O x N O``, contracted over the ``C`` output features) and the
Gram matrix of the inputs (``N x N`` over ``K``): ``2 N1 N2 (O^2 C + K)`` flops instead of the
``2 N1 N2 O^2 C K`` of the Jacobian path. For ``P > 1`` (convolutions, token axes) each layer
takes the cheaper, by a flop count, of

* ``"jw"``: per-example weight gradients ``g^T A`` (``(O, C, K)`` per example), then their
  Gram: ``2 N O P C K`` + ``2 N1 N2 O^2 C K`` flops;
* ``"pair"``: the patch-pair contraction above: ``2 N1 N2 (O^2 P^2 C + P^2 K + O^2 P^2)`` flops.

A grouped convolution (``groups = g``) has a block-diagonal weight: group ``h`` maps the
``h``-th ``K / g`` slice of each patch to the ``h``-th ``C / g`` slice of the output channels, so
its part is the sum over groups of the formula above restricted to those slices (``"jw"``
forms the per-group ``g^T A`` blocks; ``"pair"`` sums the per-group patch-pair contractions).
Dilation and padding only change which input numbers form a patch (:func:`._layers.patches`).

The cotangents of all ``O`` outputs come from one batched backward pass
(``torch.autograd.grad(..., is_grads_batched=True)``) after one forward pass with hooks. A
language model's head, whose selected label-word logits use a few of its ``V`` outputs, would
spend most of that pass in a dense ``(O N P, V) @ (V, d)`` product: the graph is cut at the
head's input (:func:`._sparse_head.sparse_head`), its cotangent formed from the used columns
only (:func:`._sparse_head.input_cotangent`), and a second pass starts from the output and the
head's input. In the ``"diagonal"`` and ``"mean"`` modes only the output pairs ``a == b``
are formed (``O`` times fewer flops). Embeddings (also tied to an output head) and LayerNorm/RMSNorm affine maps
have the rules of :mod:`._tokens` (method ``"use"`` and ``"norm"``), and positions without
cotangent are dropped from a block's features. Parameters outside covered layers (custom
modules, attention parameters outside Linear maps, weights tied between other layers) are
handled by the Jacobian path (``vmap``), or, for models that ``vmap`` cannot
trace (recurrent layers, custom autograd functions), by the per-example autograd loop of
:mod:`.autograd` (``StructuredBackend(..., loop=True)``); the kernel is exact either way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ._functional import Functional
from ._layers import Capture, LayerInfo, cotangent_layout, find_layers, patches
from ._modes import Accumulator, pair_view
from ._sparse_head import layer_cotangents, sparse_head
from ._tokens import (
    UseFeat,
    active_positions,
    mixes_rows,
    norm_grads,
    probe_cotangents,
    use_features,
    use_pair,
    weight_groups,
)
from .autograd import per_example_jacobians
from .jacobian import contract_jacobians, jacobians


@dataclass
class LayerShape:
    """Per-example sizes of a covered layer: ``P`` positions, ``K`` inputs, ``C`` outputs
    (``K`` and ``C`` over all ``G`` groups of a grouped convolution)."""

    P: int
    K: int
    C: int
    G: int = 1
    kind: str = "linear"  # "linear", "embedding", "norm" or "tied" (a Linear use of a tied weight)
    Pa: int = -1  # positions with a cotangent in the probe (-1: all P)
    Ca: int = -1  # output features with a cotangent in the probe (-1: all C, or not probed)

    @property
    def active(self) -> int:
        return self.P if self.Pa < 0 else self.Pa


def probe_layers(
    fm: Functional, x: torch.Tensor
) -> tuple[list[LayerInfo], dict[str, LayerShape], list[str], set[str]]:
    """Covered layers, their shapes, the parameter names left to the Jacobian path, and the
    names of the torch functions the model called.

    Runs the model on two examples (``x[:2]``, or ``x[0]`` twice) with hooks and a usage
    tracker (see :mod:`._layers`), and one backward pass of a random output cotangent (two,
    one per example, when a lookup was expanded: :func:`._tokens.probe_cotangents`), which tells each layer's active positions
    (:func:`._tokens.active_positions`, for the cost model). A layer whose input or output has
    no batch axis of two is left out, except an embedding of ids shared by the batch (expanded
    to it, when that leaves the output unchanged and each row's cotangent comes from its own
    example).
    """
    if fm.module is None:
        return [], {}, list(fm.params), set()
    layers = find_layers(fm.module, fm.params)
    params = dict(fm.params)
    owner: dict[int, set[str]] = {}
    for lay in layers:
        for n in (lay.weight, lay.bias):
            if n is not None:
                if params[n] is fm.params[n]:
                    params[n] = params[n].detach().requires_grad_(True)
                owner.setdefault(id(params[n]), set()).add(lay.name)
    xb = x[:2] if x.shape[0] >= 2 else x[[0, 0]]
    with torch.enable_grad(), Capture(layers, track=owner, batch=2) as cap:
        out = fm(params, xb)
    outside = {n for n in params if id(params[n]) in cap.tracker.outside}
    once = [lay.name for lay in layers if len(cap.calls[lay.name]) == 1]
    by_name = {lay.name: lay for lay in layers}
    # active positions matter for the layers of transformers (Linear maps over positions,
    # embeddings, norms) and expanded lookups; MLPs and CNNs skip the backward pass
    seq = [n for n in once if _over_positions(by_name[n], cap.calls[n][0])]
    grads = dict.fromkeys(once, False)
    if seq or cap.expanded:
        grads.update(zip(once, probe_cotangents(out, [cap.calls[n][0].y for n in once], bool(cap.expanded))))
    dropped = set()
    if cap.expanded:  # the expansion to the batch must leave the function and its rows per example
        plain = fm.probed_output(xb)
        if plain is None:
            with torch.no_grad():
                plain = fm(fm.params, xb)
        same = plain.shape == out.shape and torch.allclose(plain, out.detach(), rtol=1e-6, atol=0.0)
        dropped = {n for n in cap.expanded if not same or mixes_rows(grads.get(n, False))}
    kept, recs = [], []
    for lay in layers:
        calls = cap.calls[lay.name]
        if len(calls) != 1 or lay.name in dropped:  # unused, or called more than once (shared module)
            continue
        if calls[0].a.shape[:1] != (2,) or calls[0].y.shape[:1] != (2,):
            continue  # no batch axis: its per-example gradients are not its rows
        w = None if lay.weight in outside else lay.weight
        b = None if lay.bias in outside else lay.bias
        if w is None and b is None:
            continue
        kept.append(replace(lay, weight=w, bias=b, tied=lay.tied and w is not None))
        recs.append(calls[0])
    # a tied weight is covered only when every use of it is
    uses: dict[str, int] = {}
    for lay in layers:
        if lay.tied:
            uses[lay.weight] = uses.get(lay.weight, 0) + 1
    found: dict[str, int] = {}
    for lay in kept:
        if lay.tied:
            found[lay.weight] = found.get(lay.weight, 0) + 1
    for k, lay in enumerate(kept):
        if lay.tied and found[lay.weight] != uses[lay.weight]:
            kept[k] = replace(lay, weight=None, tied=False)
    pairs = [(lay, r) for lay, r in zip(kept, recs) if lay.weight is not None or lay.bias is not None]
    kept = [lay for lay, _ in pairs]
    shapes = {}
    for lay, rec in pairs:
        g = grads[lay.name]
        p, k = _positions(lay, rec)
        c = rec.y.shape[1] if lay.conv_dims else rec.y.shape[-1]
        kind = "tied" if lay.tied and lay.kind == "linear" else lay.kind
        pa = ca = -1
        if g is None:
            pa = 0
        elif g is not False:
            G = cotangent_layout(lay, g.detach())
            pa = len(_active(G, p))
            ca = int(G.any(2).any(1).any(0).sum()) if lay.kind == "linear" and not lay.conv_dims else -1
        shapes[lay.name] = LayerShape(P=p, K=k, C=c, G=lay.groups, kind=kind, Pa=pa, Ca=ca)
    covered = {n for lay in kept for n in (lay.weight, lay.bias) if n is not None}
    return kept, shapes, [n for n in fm.params if n not in covered], cap.tracker.functions


def _positions(lay: LayerInfo, rec) -> tuple[int, int]:
    """``(P, K)`` of a layer call: positions and numbers per patch (1 for an embedding's ids)."""
    if lay.kind == "embedding":
        return rec.a[0].numel(), 1
    if lay.conv_dims:  # one patch of C_in * prod(kernel) numbers per output position
        return rec.y[0, 0].numel(), lay.module.weight[0].numel() * lay.groups
    pt = patches(lay, rec.a[:1])
    return pt.shape[1], pt.shape[2]


def _over_positions(lay: LayerInfo, rec) -> bool:
    """A transformer's layer: an embedding, a norm, or a Linear map over several positions."""
    return lay.kind != "linear" or (lay.conv_dims == 0 and _positions(lay, rec)[0] > 1)


def _active(G: torch.Tensor, p: int) -> torch.Tensor:
    keep = active_positions(G)
    return torch.arange(p) if keep is None else keep


def choose_method(sh: LayerShape, o: int, n1: int, n2: int, mode: str, pair_limit: float) -> str:
    """``"use"`` for embeddings and tied Linear uses (:mod:`._tokens`), ``"norm"`` for norms,
    ``"p1"`` for one position; else ``"jw"`` or ``"pair"``, whichever costs fewer flops (over
    the active positions)."""
    if sh.kind in ("embedding", "tied"):
        return "use"
    if sh.kind == "norm":
        return "norm"
    if sh.P == 1 and sh.G == 1:
        return "p1"
    e = o * o if mode == "full" else o
    p = sh.active
    jw = 2 * (n1 + n2) * o * sh.C * p * sh.K / sh.G + 2 * n1 * n2 * e * sh.C * sh.K / sh.G
    pair = 2 * n1 * n2 * p**2 * (e * sh.C + sh.K + e * sh.G)
    if pair < jw and n1 * n2 * e * p**2 <= pair_limit:
        return "pair"
    return "jw"


def layer_flops(sh: LayerShape, method: str, o: int, n1: int, n2: int, mode: str) -> float:
    """Estimated flops of one layer's part of an ``n1 x n2`` kernel (features and products;
    for ``"use"`` only its bias: the weight's part is :func:`group_flops`)."""
    e = o * o if mode == "full" else o
    p = sh.active
    if method == "use":
        return 2 * n1 * n2 * e * sh.C if sh.kind == "tied" else 0.0
    if method == "norm":
        return 4 * (n1 + n2) * o * p * sh.C + 4 * n1 * n2 * e * sh.C
    if method == "p1":
        return 2 * n1 * n2 * (e * sh.C + sh.K)
    if method == "jw":
        return 2 * (n1 + n2) * o * sh.C * p * sh.K / sh.G + 2 * n1 * n2 * e * sh.C * (sh.K / sh.G + 1)
    return 2 * n1 * n2 * p**2 * (e * sh.C + sh.K + e * sh.G) + 2 * n1 * n2 * e * sh.C


@dataclass
class _LayerFeat:
    lay: LayerInfo
    method: str
    u: torch.Tensor | None  # p1: G (O, N, C); jw: JW (O, N, C*K); pair: G (O, N, P, C)
    v: torch.Tensor | None  # p1: A (N, K);    jw: sum_p G (O, N, C); pair: A (N, P, K)
    gs: torch.Tensor | None = None  # pair: sum_p G (O, N, C)
    use: UseFeat | None = None  # use: the factors of :mod:`._tokens`

    def take(self, rows: slice) -> "_LayerFeat":
        if self.use is not None:
            return _LayerFeat(self.lay, self.method, None, None, None, self.use.take(rows))

        def cut(t, axis):
            return None if t is None else (t[rows] if axis == 0 else t[:, rows])

        v_axis = 1 if self.method == "jw" else 0
        return _LayerFeat(self.lay, self.method, cut(self.u, 1), cut(self.v, v_axis), cut(self.gs, 1))


class StructuredBackend:
    """Blocked-kernel backend: features are per-layer cotangents and input patches."""

    name = "structured"

    def __init__(self, fm: Functional, out_dim: int, layers: list[LayerInfo], methods: dict[str, str],
                 fallback: list[str], shapes: dict[str, LayerShape] | None = None, loop: bool = False) -> None:
        self.fm, self.out_dim = fm, out_dim
        self.layers, self.methods, self.fallback = layers, methods, fallback
        self.groups = weight_groups(layers)
        self.shapes = shapes or {}
        self.loop = loop  # uncovered parameters by the autograd loop instead of vmap
        self.state: dict = {}
        self.copy = False  # layer outputs passed on as copies (the forward updates them in place)
        self.head = sparse_head(layers, self.shapes)  # its input cotangent formed sparsely
        if loop:
            self.name = "structured+autograd"

    def features(self, x: torch.Tensor) -> tuple[list[_LayerFeat], dict[str, torch.Tensor]]:
        fm = self.fm
        feats = self._covered(x) if self.layers else []
        if not self.fallback:
            return feats, {}
        if self.loop:
            return feats, per_example_jacobians(fm, x, self.fallback, self.state)
        return feats, jacobians(fm, x, self.fallback)

    def _covered(self, x: torch.Tensor) -> list[_LayerFeat]:
        """Features of the covered layers; a forward that updates a recorded layer input or
        output in place runs again with copies (:class:`._layers.Capture`), once per backend."""
        fm, o = self.fm, self.out_dim
        params = dict(fm.params)
        for lay in self.layers:
            for n in (lay.weight, lay.bias):
                if n is not None:
                    params[n] = params[n].detach().requires_grad_(True)
        n = x.shape[0]
        head = None if self.head is None else self.head.name
        with torch.enable_grad(), Capture(self.layers, copy=self.copy, batch=n, cut=head) as cap:
            out = fm(params, x)
            for lay in self.layers:
                calls = cap.calls[lay.name]
                if len(calls) != 1 or calls[0].y.shape[:1] != (n,):  # a RuntimeError: "auto" moves on
                    raise RuntimeError(
                        f"the structured plan is stale: layer {lay.name!r} ran "
                        f"{len(calls)} times in this forward pass (once in the planning probe), "
                        f"or on a batch other than the {n} examples (the model's computation "
                        "depends on its weights or inputs)"
                    )
            recs = [cap.calls[lay.name][0] for lay in self.layers]
            retry = not self.copy and any(r.overwritten() for r in recs)
            cut = None
            if cap.cut_input is not None:
                cut = (self.layers.index(self.head), self.head, cap.cut_input)
            gs = None if retry else layer_cotangents(out, [r.y for r in recs], self.state, cut)
        del out, params
        if retry:
            self.copy = True
            return self._covered(x)
        feats = []
        for lay, rec, g in zip(self.layers, recs, gs):
            if g is None:
                g = rec.y.new_zeros((o, *rec.y.shape))
            feats.append(self._layer_features(lay, rec.a, g.detach()))
        return feats

    def _layer_features(self, lay: LayerInfo, a: torch.Tensor, g: torch.Tensor) -> _LayerFeat:
        method = self.methods[lay.name]
        G = cotangent_layout(lay, g)  # (O, N, P, C)
        if method == "norm":
            return _LayerFeat(lay, "jw", *norm_grads(lay, a, G))
        check = self._sparse(lay)
        if method == "use":
            A = None if lay.kind == "embedding" else patches(lay, a)
            return _LayerFeat(lay, method, None, None, None, use_features(lay, a, G, A, check))
        if lay.groups > 1:
            return self._grouped_features(lay, method, a, G)
        if method == "p1":
            A = patches(lay, a)[:, 0] if lay.weight is not None else None
            return _LayerFeat(lay, method, G[:, :, 0], A)
        A = patches(lay, a) if lay.weight is not None else None
        Gs = G.sum(2) if lay.bias is not None else None
        keep = active_positions(G) if A is not None and check else None
        if keep is not None:  # positions without cotangent contribute nothing
            G, A = G[:, :, keep], A[:, keep]
        if method == "jw":
            return _LayerFeat(lay, method, None if A is None else _weight_grads(G, A), Gs)
        return _LayerFeat(lay, method, G.contiguous(), A, Gs)

    def _sparse(self, lay: LayerInfo) -> bool:
        """Whether to look for positions without cotangent in a block: when the planning probe
        found some (a full pass over the cotangents; keeping zero positions is exact too)."""
        sh = self.shapes.get(lay.name)
        return sh is None or 0 <= sh.Pa < sh.P

    def _grouped_features(self, lay: LayerInfo, method: str, a: torch.Tensor, G: torch.Tensor) -> _LayerFeat:
        """Features of a grouped convolution: ``"jw"`` blocks ``(O, N, G * C/G * K/G)`` or, for
        ``"pair"``, the cotangents and patches split by group ``(O, N, P, G, C/G)``, ``(N, P, G, K/G)``."""
        o, n, p, c = G.shape
        h = lay.groups
        Gs = G.sum(2) if lay.bias is not None else None
        A = patches(lay, a).reshape(n, p, h, -1) if lay.weight is not None else None
        Gh = G.reshape(o, n, p, h, c // h)
        if method == "pair":
            return _LayerFeat(lay, method, Gh.contiguous(), A, Gs)
        JW = None
        if A is not None:
            JW = torch.einsum("onphc,nphk->onhck", Gh, A).reshape(o, n, -1)
        return _LayerFeat(lay, "jw", JW, Gs)

    def take(self, f, rows: slice):
        """The features of the examples ``rows`` (features are per example)."""
        feats, jac = f
        return [lf.take(rows) for lf in feats], {k: v[rows] for k, v in jac.items()}

    def contract(self, f1, f2, mode: str, acc: Accumulator) -> None:
        feats1, jac1 = f1
        feats2, jac2 = f2
        for a, b in zip(feats1, feats2):
            lay = a.lay
            ws2, bs2 = lay.ws**2, lay.bs**2
            if a.method == "use":
                if lay.bias is not None:
                    acc.add(lay.bias, acc.gram(acc.cast(a.use.gs), acc.cast(b.use.gs), mode), bs2)
                continue
            if a.method == "p1":
                gg = acc.gram(acc.cast(a.u), acc.cast(b.u), mode)
                if lay.weight is None:
                    acc.add(lay.bias, gg, bs2)
                    continue
                aa = acc.cast(a.v) @ acc.cast(b.v).T
                if lay.bias is None:
                    acc.add(lay.weight, gg, pair_view(aa.mul_(ws2), mode))
                elif acc.per_layer:
                    acc.add(lay.bias, gg * bs2)
                    acc.add(lay.weight, gg, pair_view(aa.mul_(ws2), mode))
                else:
                    acc.add("", gg, pair_view(aa.mul_(ws2).add_(bs2), mode))
                continue
            if lay.bias is not None:
                src1 = a.v if a.method == "jw" else a.gs
                src2 = b.v if b.method == "jw" else b.gs
                acc.add(lay.bias, acc.gram(acc.cast(src1), acc.cast(src2), mode), bs2)
            if lay.weight is None:
                continue
            if a.method == "jw":
                acc.add(lay.weight, acc.gram(acc.cast(a.u), acc.cast(b.u), mode), ws2)
            elif lay.groups > 1:
                part = sum(
                    pair_part(acc.cast(a.u[:, :, :, h]), acc.cast(a.v[:, :, h]),
                               acc.cast(b.u[:, :, :, h]), acc.cast(b.v[:, :, h]), mode)
                    for h in range(lay.groups)
                )
                acc.add(lay.weight, part, ws2)
            else:
                acc.add(lay.weight, pair_part(acc.cast(a.u), acc.cast(a.v), acc.cast(b.u), acc.cast(b.v), mode), ws2)
        if self.groups:
            uses1 = {f.lay.name: f.use for f in feats1 if f.use is not None}
            uses2 = {f.lay.name: f.use for f in feats2 if f.use is not None}
            for name, users in self.groups.items():
                part = None
                for u in users:
                    for w in users:
                        t = use_pair(uses1[u], uses2[w], mode, acc.cast)
                        part = t if part is None else part.add_(t)
                acc.add(name, part)
        contract_jacobians(jac1, jac2, mode, acc)


def _weight_grads(G: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Per-example weight gradients ``JW[a, i] = g[a, i]^T A[i]`` as ``(O, N, C*K)``.

    One batched product over the examples per output ``a``, written in place: ``A`` is not
    broadcast (copied) over the outputs, and the cotangents of a convolution, whose native
    layout ``(O, N, C, P)`` is ``G`` transposed, are read without a copy.
    """
    o, n, _, c = G.shape
    JW = G.new_empty(o, n, c, A.shape[-1])
    Gt = G.transpose(2, 3)
    for a in range(o):
        torch.bmm(Gt[a], A, out=JW[a])
    return JW.view(o, n, -1)


def pair_part(g1, a1, g2, a2, mode: str) -> torch.Tensor:
    """``sum_{p,q} (g1[a,i,p] . g2[b,j,q]) (a1[i,p] . a2[j,q])`` in the internal layout (the two
    blocks may keep different numbers of active positions ``p1``, ``p2``)."""
    o, n1, p1, c = g1.shape
    n2, p2 = g2.shape[1:3]
    app = (a1.reshape(n1 * p1, -1) @ a2.reshape(n2 * p2, -1).T).view(n1, p1, n2, p2)
    if mode == "full":
        gpp = (g1.reshape(o * n1 * p1, c) @ g2.reshape(o * n2 * p2, c).T).view(o, n1, p1, o, n2, p2)
        return torch.einsum("aipbjq,ipjq->aibj", gpp, app)
    gd = torch.bmm(g1.reshape(o, n1 * p1, c), g2.reshape(o, n2 * p2, c).transpose(1, 2)).view(o, n1, p1, n2, p2)
    if mode == "mean":
        return torch.einsum("aipjq,ipjq->ij", gd, app)
    return torch.einsum("aipjq,ipjq->aij", gd, app)
