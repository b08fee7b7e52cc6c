"""The sparse head of the structured backward pass (private; see :mod:`.structured`).

A language model whose outputs are the logits of a few label words has a head ``y = h W^T``
(``V`` outputs, the vocabulary) whose output cotangent is zero outside those words' columns,
yet autograd forms the head's input cotangent as a dense ``(O N P, V) @ (V, d)`` product. The
forward pass runs such a layer on a detached copy of its input (:class:`._layers.Capture`,
``cut=``), so the backward pass from the outputs stops there; :func:`input_cotangent` forms the
input cotangent from the used columns and positions, and :func:`layer_cotangents` continues the
backward pass from the outputs and the head's input together.
"""

from __future__ import annotations

import torch

from ._layers import LayerInfo, cotangent_layout, weight_matrix
from ._tokens import active_positions
from .autograd import batched_grads


#: The least number of products per example and position that the sparse head must save
#: (unused output features times inputs) to be worth a second backward pass.
SPARSE_HEAD_MIN = 1 << 16


def sparse_head(layers: list[LayerInfo], shapes: dict) -> LayerInfo | None:
    """The Linear layer (on ``(N, ..., K)`` inputs, one group) whose input cotangent is best
    formed from its output features with a cotangent only: a language model's head, whose
    selected label-word logits use ``Ca`` of its ``C`` (the vocabulary) outputs. The one with the
    most products saved, ``(C - Ca) K``, at least :data:`SPARSE_HEAD_MIN`; None if none.
    ``shapes``: the :class:`.structured.LayerShape` of each layer, from the planning probe."""
    best, most = None, SPARSE_HEAD_MIN - 1
    for lay in layers:
        sh = shapes.get(lay.name)
        if sh is None or lay.kind != "linear" or lay.conv_dims or lay.groups > 1 or not 0 <= sh.Ca < sh.C:
            continue
        saved = (sh.C - sh.Ca) * sh.K
        if saved > most:
            best, most = lay, saved
    return best


def input_cotangent(lay: LayerInfo, g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``d f / d a = ws * g W`` of a Linear layer ``y = ws * a W^T + bs * b`` (``W (C, K)``, see
    :func:`._layers.weight_matrix`) from the cotangents ``g (O, N, ..., C)`` of its output, as
    ``(O, N, P, K)``: only the output features and positions with a cotangent (for some output
    and example) enter the product, the others add exact zeros (NaN counts as a cotangent)."""
    G = cotangent_layout(lay, g)  # (O, N, P, C)
    W = weight_matrix(lay, w)
    cols = torch.nonzero(G.any(2).any(1).any(0)).flatten()
    keep = active_positions(G)
    part = (G if keep is None else G[:, :, keep])[..., cols] @ W[cols]
    if lay.ws != 1.0:
        part = part * lay.ws
    if keep is None:
        return part
    full = part.new_zeros(*G.shape[:3], W.shape[1])
    full[:, :, keep] = part
    return full


def layer_cotangents(out: torch.Tensor, ys: list[torch.Tensor], state: dict, cut: tuple | None = None) -> list[torch.Tensor | None]:
    """``d out[:, a] / d y`` for every output ``a``: tensors ``(O, *y.shape)``.

    With ``cut = (k, lay, (h, w))`` the graph of ``out`` ends at a copy of the input ``h`` of
    layer ``ys[k]`` (:class:`._layers.Capture`): one backward pass gives the cotangents of
    ``ys[k]``, :func:`input_cotangent` that of ``h``, and a second pass from ``out`` and ``h``
    together (the chain rule: every path from a layer to ``out`` either crosses the cut, and
    then reaches it through ``h``, or not) those of the other layers."""
    n, o = out.shape
    eye = torch.eye(o, dtype=out.dtype, device=out.device)[:, None, :].expand(o, n, o)
    if cut is None:
        return batched_grads(out, ys, eye, state)
    k, lay, (h, w) = cut
    gy = batched_grads(out, [ys[k]], eye, state)[0]
    outs, cots = [out], [eye]
    if gy is not None and h.requires_grad:
        outs.append(h)
        cots.append(input_cotangent(lay, gy.detach(), w).reshape(o, *h.shape))
    rest = batched_grads(outs, ys[:k] + ys[k + 1:], cots, state) if len(ys) > 1 else []
    return rest[:k] + [gy] + rest[k:]
