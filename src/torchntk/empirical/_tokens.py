"""Structured rules for the layers of transformers: embeddings (tied or not), norms (private).

**Embeddings.** ``y[s] = W[id_s]`` for a table ``W (V, d)`` and the ids ``id_s`` of the ``P``
positions of an example. With output cotangents ``g[i, a, s] = d f_a(x_i) / d y[s]`` (``d``
numbers), the per-example gradient scatters them into the used rows,
``dF_a/dW = sum_s e_{id_is} g[i, a, s]^T`` (rows of ``padding_idx`` get nothing), so

    Theta_W[i, j, a, b] = sum_{s, t : id_is = id_jt} g[i, a, s] . g[j, b, t].

**Tied weights.** A language model's output head ``logits = W h`` (an ``nn.Linear`` whose
weight is the embedding table) adds ``sum_t g_h[i, a, t] h[i, t]^T`` (``g_h`` the cotangents
of the logits, ``h`` the head's inputs) to the same gradient. Every use ``u`` of ``W`` is a sum
over positions of a row factor (``V`` numbers) times a column factor (``d`` numbers): the ids
(one-hot rows) and the cotangents for an embedding, the cotangents and the inputs for a Linear
layer. The kernel of ``W`` is the sum over all pairs of uses ``(u, w)`` of

    sum_{s, t} <row_u[i, s], row_w[j, t]> <col_u[i, s], col_w[j, t]>,

where the product of two one-hot rows is ``[id_is = id_jt]`` and that of a one-hot row with a
cotangent is the cotangent's entry at the id (a gather): no ``V x d`` gradient is formed.

**Norms.** ``nn.LayerNorm`` / ``nn.RMSNorm`` with an affine map, ``y = gamma * xhat + beta``
over ``D`` normalized numbers at each of ``P`` positions: ``dF_a/dgamma = sum_s g[i, a, s] *
xhat[i, s]`` and ``dF_a/dbeta = sum_s g[i, a, s]``, explicit ``D``-vectors whose Gram
products give the kernel.

**Positions without cotangent.** Positions whose cotangent is zero for every example of a
block and every output (the positions after the last one a causal model's selected output
reads, at the layers after its last attention) contribute nothing: they are dropped from the
features of that block (:func:`active_positions`), exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._layers import LayerInfo


def active_positions(G: torch.Tensor) -> torch.Tensor | None:
    """The positions of cotangents ``G (O, N, P, C)`` that are not all zero (NaN counts as
    non-zero), or ``None`` when all are."""
    keep = G.any(3).any(1).any(0)  # any() of floats: non-zero or NaN, without a bool copy of G
    return None if bool(keep.all()) else torch.nonzero(keep).flatten()


def normalized(lay: LayerInfo, a: torch.Tensor) -> torch.Tensor:
    """``xhat`` of a norm layer's input ``a``: ``(a - mean) / sqrt(var + eps)`` (LayerNorm) or
    ``a / sqrt(mean(a^2) + eps)`` (RMSNorm), over the normalized shape, as ``(N, P, D)``."""
    m = lay.module
    shape = tuple(m.normalized_shape)
    if type(m) is torch.nn.LayerNorm:
        xh = F.layer_norm(a, shape, None, None, m.eps)
    else:
        xh = F.rms_norm(a, shape, None, m.eps)
    return xh.reshape(a.shape[0], -1, math.prod(shape))


def norm_grads(lay: LayerInfo, a: torch.Tensor, G: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-example gradients ``(O, N, D)`` of a norm's scale and shift from cotangents ``G (O, N, P, D)``."""
    gw = gb = None
    if lay.weight is not None:
        xh = normalized(lay, a).reshape(G.shape[1:])
        gw = torch.einsum("onpd,npd->ond", G, xh)
    if lay.bias is not None:
        gb = G.sum(2)
    return gw, gb


@dataclass
class UseFeat:
    """One use of an embedding group's weight ``W (V, d)`` for a block of examples: the row and
    column factors per position (``rows``: ids ``(N, P)`` of an embedding or cotangents
    ``(O, N, P, V)`` of a Linear layer; ``cols``: cotangents ``(O, N, P, d)`` of an embedding
    or inputs ``(N, P, d)`` of a Linear layer), and a Linear layer's bias gradient ``(O, N, V)``."""

    lay: LayerInfo
    rows: torch.Tensor
    cols: torch.Tensor
    gs: torch.Tensor | None = None

    def take(self, r: slice) -> "UseFeat":
        emb = self.lay.kind == "embedding"
        rows = self.rows[r] if emb else self.rows[:, r]
        cols = self.cols[:, r] if emb else self.cols[r]
        return UseFeat(self.lay, rows, cols, None if self.gs is None else self.gs[:, r])


def use_features(lay: LayerInfo, a: torch.Tensor, G: torch.Tensor, A: torch.Tensor | None,
                 check: bool = True) -> UseFeat:
    """Features of one use: an embedding (``a`` its ids, ``G (O, N, P, d)``) or a Linear layer
    (``G (O, N, P, V)``, ``A (N, P, d)`` its inputs), positions without cotangent dropped
    (``check=False``: kept; exact too)."""
    if lay.kind == "embedding":
        ids = a.reshape(a.shape[0], -1)
        pad = lay.module.padding_idx
        if pad is not None:  # the padding row receives no gradient
            G = G.masked_fill((ids == pad)[None, :, :, None], 0)
        keep = active_positions(G) if check else None
        if keep is not None:
            ids, G = ids[:, keep], G[:, :, keep]
        return UseFeat(lay, ids, G.contiguous())
    gs = G.sum(2) if lay.bias is not None else None
    keep = active_positions(G) if check else None
    if keep is not None:
        G, A = G[:, :, keep], A[:, keep]
    return UseFeat(lay, G.contiguous(), A.contiguous(), gs)


def _factor_product(k1: str, t1: torch.Tensor, k2: str, t2: torch.Tensor, mode: str) -> torch.Tensor:
    """``<f1[., i, s], f2[., j, t]>`` of two position factors of kinds ``"idx"`` (ids
    ``(N, P)``), ``"out"`` (per output ``(O, N, P, X)``) or ``"ex"`` (``(N, P, X)``), in the
    layout ``(O|1, N1, P1, O|1, N2, P2)`` (``"full"``) or ``(O|1, N1, P1, N2, P2)``."""
    full = mode == "full"
    if k1 == "out" and k2 == "out":
        o, n1, p1, x = t1.shape
        n2, p2 = t2.shape[1:3]
        if full:
            return (t1.reshape(-1, x) @ t2.reshape(-1, x).T).view(o, n1, p1, o, n2, p2)
        return torch.bmm(t1.reshape(o, -1, x), t2.reshape(o, -1, x).transpose(1, 2)).view(o, n1, p1, n2, p2)
    if k1 == "out":  # symmetric case, computed with the roles swapped
        r = _factor_product(k2, t2, k1, t1, mode)
        return r.permute(3, 4, 5, 0, 1, 2) if full else r.permute(0, 3, 4, 1, 2)
    n1, p1 = t1.shape[:2]
    if k2 == "out":
        o, n2, p2 = t2.shape[:3]
        if k1 == "idx":
            r = t2[..., t1.reshape(-1)].view(o, n2, p2, n1, p1)  # (b, j, t, i, s)
        else:
            r = (t2.reshape(-1, t2.shape[-1]) @ t1.reshape(n1 * p1, -1).T).view(o, n2, p2, n1, p1)
        return r.permute(3, 4, 0, 1, 2)[None] if full else r.permute(0, 3, 4, 1, 2)
    n2, p2 = t2.shape[:2]
    if k1 == "idx" and k2 == "idx":
        r = t1.reshape(-1, 1) == t2.reshape(1, -1)  # bool: cast by the caller
    elif k1 == "ex" and k2 == "ex":
        r = t1.reshape(n1 * p1, -1) @ t2.reshape(n2 * p2, -1).T
    else:
        raise AssertionError("no use pairs ids with inputs")  # pragma: no cover
    r = r.view(n1, p1, n2, p2)
    return r[None, :, :, None] if full else r[None]


def _kinds(u: UseFeat) -> tuple[str, str]:
    return ("idx", "out") if u.lay.kind == "embedding" else ("out", "ex")


def use_pair(u: UseFeat, w: UseFeat, mode: str, cast) -> torch.Tensor:
    """The weight's kernel part from the use ``u`` of block 1 and the use ``w`` of block 2, in
    the internal layout of ``mode`` (see :mod:`._modes`), scales included."""
    ru, cu = _kinds(u)
    rw, cw = _kinds(w)
    rows1, rows2 = (u.rows if ru == "idx" else cast(u.rows)), (w.rows if rw == "idx" else cast(w.rows))
    rp = _factor_product(ru, rows1, rw, rows2, mode)
    cp = _factor_product(cu, cast(u.cols), cw, cast(w.cols), mode)
    if rp.dtype != cp.dtype:
        rp = rp.to(cp.dtype)
    scale = u.lay.ws * w.lay.ws
    if mode == "full":
        out = torch.einsum("aisbjt,aisbjt->aibj", *torch.broadcast_tensors(rp, cp))
    else:
        out = torch.einsum("aisjt,aisjt->aij", *torch.broadcast_tensors(rp, cp))
        if mode == "mean":
            out = out.sum(0)
    return out.mul_(scale) if scale != 1.0 else out


def use_flops(emb1: bool, emb2: bool, p1: float, p2: float, v: int, d: int, o: int, n1: int, n2: int,
              mode: str) -> float:
    """Flops of :func:`use_pair` for uses with ``p1``, ``p2`` active positions (``emb``: an
    embedding use) of a weight ``(V, d)``: the row product (``2 e V`` per position pair for two
    Linear uses, a gather of ``O`` numbers for an embedding and a Linear use), the column
    product (``2 e d`` for two embeddings, ``2 O d`` for mixed uses, ``2 d`` for two Linear
    uses) and their combination (``2 e``)."""
    e = o * o if mode == "full" else o
    if emb1 and emb2:
        per = 1 + 2 * e * d
    elif emb1 or emb2:
        per = o + 2 * o * d
    else:
        per = 2 * e * v + 2 * d
    return n1 * n2 * p1 * p2 * (per + 2 * e)


def weight_groups(layers: list[LayerInfo]) -> dict[str, list[str]]:
    """Weight name -> the covered layers using it, for embeddings and tied weights."""
    groups: dict[str, list[str]] = {}
    for lay in layers:
        if lay.weight is not None and (lay.kind == "embedding" or lay.tied):
            groups.setdefault(lay.weight, []).append(lay.name)
    return groups


def group_flops(layers: list[LayerInfo], shapes: dict, o: int, n1: int, n2: int,
                mode: str) -> tuple[float, float]:
    """Flops of the weights of :func:`weight_groups` over all pairs of uses, and the largest
    number of position pairs per example pair (for the memory estimate)."""
    flops, most = 0.0, 0.0
    for names in weight_groups(layers).values():
        for u in names:
            for w in names:
                su, sw = shapes[u], shapes[w]
                emb_u, emb_w = su.kind == "embedding", sw.kind == "embedding"
                d = su.C if emb_u else su.K
                v = sw.C if not emb_w else (su.C if not emb_u else 0)
                flops += use_flops(emb_u, emb_w, su.active, sw.active, v, d, o, n1, n2, mode)
                most = max(most, su.active * sw.active)
    return flops, most


def probe_cotangents(out: torch.Tensor, ys: list[torch.Tensor], per_example: bool) -> list:
    """``d <w, out> / d y`` for random ``w (2, O)`` (one plain backward pass) or, with
    ``per_example=True``, ``d <w_k, out[k]> / d y`` for each of the two examples ``k`` of the
    probe batch (two passes): per recorded tensor ``y``, a tensor ``(1 or 2, *y.shape)``, None
    where ``out`` does not depend on ``y``, or False for all when the backward pass fails. A
    position gets a cotangent from some output exactly when it gets one from the random mix (but
    for a cancellation of probability zero), so one pass tells the active positions."""
    if not ys:
        return []
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype).to(out.device)
    cots = [w * (torch.arange(out.shape[0], device=out.device) == k)[:, None] for k in range(2)] if per_example else [w]
    try:  # only the cost model and the check of expanded lookups use it: a model that cannot run
        # this backward pass here fails again, and is reported, where it matters
        with torch.enable_grad():
            runs = [torch.autograd.grad(out, ys, c, retain_graph=True, allow_unused=True) for c in cots]
    except Exception:  # noqa: BLE001
        return [False] * len(ys)
    return [None if run0 is None else torch.stack([r[m] for r in runs]) for m, run0 in enumerate(runs[0])]


def mixes_rows(g: torch.Tensor | None | bool) -> bool:
    """True when the cotangent ``g (2, 2, ...)`` of :func:`probe_cotangents` (per example) of an expanded
    lookup puts example ``k``'s cotangent on another row than ``k`` (a forward reading row 0
    for every example), or is unknown (False)."""
    if g is None:
        return False
    if g is False:
        return True
    return bool(g[0, 1].ne(0).any() or g[1, 0].ne(0).any())
