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
(``torch.autograd.grad(..., is_grads_batched=True)``) after one forward pass with hooks. In the
``"diagonal"`` and ``"mean"`` modes only the output pairs ``a == b`` are formed (``O`` times
fewer flops). Parameters outside covered layers (LayerNorm, embeddings, custom modules, tied
weights) are handled by the Jacobian path (``vmap``), or, for models that ``vmap`` cannot
trace (recurrent layers, custom autograd functions), by the per-example autograd loop of
:mod:`.autograd` (``StructuredBackend(..., loop=True)``); the kernel is exact either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._functional import Functional
from ._layers import Capture, LayerInfo, cotangent_layout, find_layers, patches
from ._modes import Accumulator, pair_view
from .autograd import batched_grads, per_example_jacobians
from .jacobian import contract_jacobians, jacobians


@dataclass
class LayerShape:
    """Per-example sizes of a covered layer: ``P`` positions, ``K`` inputs, ``C`` outputs
    (``K`` and ``C`` over all ``G`` groups of a grouped convolution)."""

    P: int
    K: int
    C: int
    G: int = 1


def probe_layers(
    fm: Functional, x: torch.Tensor
) -> tuple[list[LayerInfo], dict[str, LayerShape], list[str], set[str]]:
    """Covered layers, their shapes, the parameter names left to the Jacobian path, and the
    names of the torch functions the model called.

    Runs one forward pass on ``x[:1]`` with hooks and a usage tracker (see :mod:`._layers`).
    """
    if fm.module is None:
        return [], {}, list(fm.params), set()
    layers = find_layers(fm.module, fm.params)
    params = dict(fm.params)
    owner = {}
    for lay in layers:
        for n in (lay.weight, lay.bias):
            if n is not None:
                params[n] = params[n].detach()
                owner[id(params[n])] = lay.name
    with torch.no_grad(), Capture(layers, track=owner) as cap:
        fm(params, x[:1])
    outside = {n for n in params if id(params[n]) in cap.tracker.outside}
    kept, shapes = [], {}
    for lay in layers:
        calls = cap.calls[lay.name]
        if len(calls) != 1:  # unused, or called more than once (shared module)
            continue
        w = None if lay.weight in outside else lay.weight
        b = None if lay.bias in outside else lay.bias
        if w is None and b is None:
            continue
        lay = LayerInfo(lay.name, lay.module, w, b, lay.ws, lay.bs, lay.conv_dims, lay.groups)
        a, y = calls[0].a, calls[0].y
        pt = patches(lay, a)
        c = y.shape[1] if lay.conv_dims else y.shape[-1]
        shapes[lay.name] = LayerShape(P=pt.shape[1], K=pt.shape[2], C=c, G=lay.groups)
        kept.append(lay)
    covered = {n for lay in kept for n in (lay.weight, lay.bias) if n is not None}
    return kept, shapes, [n for n in fm.params if n not in covered], cap.tracker.functions


def choose_method(sh: LayerShape, o: int, n1: int, n2: int, mode: str, pair_limit: float) -> str:
    """``"p1"`` for one position; else ``"jw"`` or ``"pair"``, whichever costs fewer flops."""
    if sh.P == 1 and sh.G == 1:
        return "p1"
    e = o * o if mode == "full" else o
    jw = 2 * (n1 + n2) * o * sh.C * sh.P * sh.K / sh.G + 2 * n1 * n2 * e * sh.C * sh.K / sh.G
    pair = 2 * n1 * n2 * sh.P**2 * (e * sh.C + sh.K + e * sh.G)
    if pair < jw and n1 * n2 * e * sh.P**2 <= pair_limit:
        return "pair"
    return "jw"


def layer_flops(sh: LayerShape, method: str, o: int, n1: int, n2: int, mode: str) -> float:
    """Estimated flops of one layer's part of an ``n1 x n2`` kernel (features and products)."""
    e = o * o if mode == "full" else o
    if method == "p1":
        return 2 * n1 * n2 * (e * sh.C + sh.K)
    if method == "jw":
        return 2 * (n1 + n2) * o * sh.C * sh.P * sh.K / sh.G + 2 * n1 * n2 * e * sh.C * (sh.K / sh.G + 1)
    return 2 * n1 * n2 * sh.P**2 * (e * sh.C + sh.K + e * sh.G) + 2 * n1 * n2 * e * sh.C


@dataclass
class _LayerFeat:
    lay: LayerInfo
    method: str
    u: torch.Tensor | None  # p1: G (O, N, C); jw: JW (O, N, C*K); pair: G (O, N, P, C)
    v: torch.Tensor | None  # p1: A (N, K);    jw: sum_p G (O, N, C); pair: A (N, P, K)
    gs: torch.Tensor | None = None  # pair: sum_p G (O, N, C)

    def take(self, rows: slice) -> "_LayerFeat":
        def cut(t, axis):
            return None if t is None else (t[rows] if axis == 0 else t[:, rows])

        v_axis = 1 if self.method == "jw" else 0
        return _LayerFeat(self.lay, self.method, cut(self.u, 1), cut(self.v, v_axis), cut(self.gs, 1))


def _cotangents(out: torch.Tensor, ys: list[torch.Tensor], state: dict) -> list[torch.Tensor | None]:
    """``d out[:, a] / d y`` for every output ``a``: tensors ``(O, *y.shape)``."""
    n, o = out.shape
    eye = torch.eye(o, dtype=out.dtype, device=out.device)
    return batched_grads(out, ys, eye[:, None, :].expand(o, n, o), state)


class StructuredBackend:
    """Blocked-kernel backend: features are per-layer cotangents and input patches."""

    name = "structured"

    def __init__(self, fm: Functional, out_dim: int, layers: list[LayerInfo], methods: dict[str, str],
                 fallback: list[str], shapes: dict[str, LayerShape] | None = None, loop: bool = False) -> None:
        self.fm, self.out_dim = fm, out_dim
        self.layers, self.methods, self.fallback = layers, methods, fallback
        self.shapes = shapes or {}
        self.loop = loop  # uncovered parameters by the autograd loop instead of vmap
        self.state: dict = {}
        self.copy = False  # layer outputs passed on as copies (the forward updates them in place)
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
        with torch.enable_grad(), Capture(self.layers, copy=self.copy) as cap:
            out = fm(params, x)
            for lay in self.layers:
                if len(cap.calls[lay.name]) != 1:  # a RuntimeError: "auto" moves on
                    raise RuntimeError(
                        f"the structured plan is stale: layer {lay.name!r} ran "
                        f"{len(cap.calls[lay.name])} times in this forward pass and once in the "
                        "planning probe (the model's computation depends on its weights or inputs)"
                    )
            recs = [cap.calls[lay.name][0] for lay in self.layers]
            retry = not self.copy and any(r.overwritten() for r in recs)
            gs = None if retry else _cotangents(out, [r.y for r in recs], self.state)
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
        if lay.groups > 1:
            return self._grouped_features(lay, method, a, G)
        if method == "p1":
            A = patches(lay, a)[:, 0] if lay.weight is not None else None
            return _LayerFeat(lay, method, G[:, :, 0], A)
        A = patches(lay, a) if lay.weight is not None else None
        Gs = G.sum(2) if lay.bias is not None else None
        if method == "jw":
            return _LayerFeat(lay, method, None if A is None else _weight_grads(G, A), Gs)
        return _LayerFeat(lay, method, G.contiguous(), A, Gs)

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
                    _pair_part(acc.cast(a.u[:, :, :, h]), acc.cast(a.v[:, :, h]),
                               acc.cast(b.u[:, :, :, h]), acc.cast(b.v[:, :, h]), mode)
                    for h in range(lay.groups)
                )
                acc.add(lay.weight, part, ws2)
            else:
                acc.add(lay.weight, _pair_part(acc.cast(a.u), acc.cast(a.v), acc.cast(b.u), acc.cast(b.v), mode), ws2)
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


def _pair_part(g1, a1, g2, a2, mode: str) -> torch.Tensor:
    """``sum_{p,q} (g1[a,i,p] . g2[b,j,q]) (a1[i,p] . a2[j,q])`` in the internal layout."""
    o, n1, p, c = g1.shape
    n2 = g2.shape[1]
    app = (a1.reshape(n1 * p, -1) @ a2.reshape(n2 * p, -1).T).view(n1, p, n2, p)
    if mode == "full":
        gpp = (g1.reshape(o * n1 * p, c) @ g2.reshape(o * n2 * p, c).T).view(o, n1, p, o, n2, p)
        return torch.einsum("aipbjq,ipjq->aibj", gpp, app)
    gd = torch.bmm(g1.reshape(o, n1 * p, c), g2.reshape(o, n2 * p, c).transpose(1, 2)).view(o, n1, p, n2, p)
    if mode == "mean":
        return torch.einsum("aipjq,ipjq->ij", gd, app)
    return torch.einsum("aipjq,ipjq->aij", gd, app)
