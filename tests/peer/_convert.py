"""Layout conversion and the one translation torchntk -> neural-tangents shared by the peer tests.

An architecture is written once as a *recipe*, a small tree of plain data, and built for either
library by :func:`build` (torchntk's channels-first spec) or :func:`build_stax` (the peer's
channels-last ``stax`` triple). A node is

- ``("serial", [node, ...])``: the nodes one after the other;
- ``("fan", [branch, ...], "sum" | "concat")``: ``FanOut(len) > parallel(*branches) > FanInSum``
  (or ``FanInConcat`` on the channel axis), each branch a list of nodes, ``[]`` the identity;
- ``(name, {argument: value})``: one layer, named and parameterized as ``torchntk.layers.<name>``.

``width`` scales every hidden width (``Dense.out_dim``, ``Conv.out_chan``, the attention
channels), so that the same architecture can be drawn at growing width for the Monte Carlo
arbiter. The conventions lined up here (see /work/shared/peer/README.md and
docs/peer-differences.md):

- images and sequences are ``(N, C, *spatial)`` here, ``(N, *spatial, C)`` in the peer: channel
  axes (``LayerNorm``, ``FanInConcat``) and ``Conv``'s dimension numbers follow;
- ``b_std=0`` means *no bias* in torchntk, but a bias parameter initialized at 0 in the peer,
  which in standard parameterization adds 1 to the NTK (its gradient): it is sent as ``None``;
- choice strings are upper case in the peer; ``pos_emb_decay_fn`` is named (``"inverse"``,
  ``"exp"``, ``"inverse_sqrt"``) and built for torch or numpy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

Recipe = tuple

# hidden-width arguments of each layer (scaled by ``width``)
_WIDTHS = {
    "Dense": ("out_dim",),
    "Conv": ("out_chan",),
    "GlobalSelfAttention": ("n_chan_out", "n_chan_key", "n_chan_val", "n_chan_pos_emb"),
}

# Decays of the positional covariance R[p, a] = decay(|p - a|^p_norm): positive definite for
# p_norm <= 2 (exp(-|x|^a), (1 + |x|^a)^-s are characteristic functions for a <= 2). "exp_growing"
# is not a covariance: torchntk refuses it, the peer returns an indefinite kernel.
def _jnp():
    import jax.numpy as jnp

    return jnp


DECAY_FNS = {
    "inverse": (lambda d: 1.0 / (1.0 + d), lambda d: 1.0 / (1.0 + d)),
    "exp": (lambda d: torch.exp(-d), lambda d: _jnp().exp(-d)),  # traced under jax.jit: jnp, not np
    "inverse_sqrt": (lambda d: (1.0 + d) ** -0.5, lambda d: (1.0 + d) ** -0.5),
    "exp_growing": (torch.exp, lambda d: _jnp().exp(d)),
}


def to_peer(x: torch.Tensor) -> np.ndarray:
    """Channels-first torch batch ``(N, C, *spatial)`` -> channels-last numpy batch (flat as is)."""
    a = x.numpy()
    return a if a.ndim == 2 else np.moveaxis(a, 1, -1)


def scaled(kw: dict, name: str, width: float, fixed: tuple[str, ...] = ()) -> dict:
    """``kw`` with the hidden widths of layer ``name`` multiplied by ``width`` (at least 1)."""
    kw = dict(kw)
    for key in _WIDTHS.get(name, ()):
        if key in kw and kw[key] is not None and key not in fixed and width != 1:
            kw[key] = max(1, int(round(kw[key] * width)))
    return kw


def _attention_kw(kw: dict, *, peer: bool) -> dict:
    kw = dict(kw)
    decay = kw.pop("pos_emb_decay_fn", None)
    if decay is not None:
        kw["pos_emb_decay_fn"] = DECAY_FNS[decay][1 if peer else 0]
    if peer:
        for key in ("attention_mechanism", "pos_emb_type"):
            if key in kw:
                kw[key] = kw[key].upper()
        if kw.get("b_std") == 0:
            kw["b_std"] = None
    return kw


def _walk(node: Recipe, leaf: Any, lib: Any, concat_axis: int, width: float, readout: bool) -> Any:
    """Build ``node`` with ``leaf(name, kw)`` for the layers and ``lib``'s combinators."""
    kind = node[0]
    if kind == "serial":
        nodes = node[1]
        return lib.serial(*[
            _walk(n, leaf, lib, concat_axis, width, readout and i == len(nodes) - 1) for i, n in enumerate(nodes)
        ])
    if kind == "fan":
        branches = [
            lib.serial(*[_walk(n, leaf, lib, concat_axis, width, False) for n in b]) if b else lib.Identity()
            for b in node[1]
        ]
        fan_in = lib.FanInSum() if node[2] == "sum" else lib.FanInConcat(axis=concat_axis)
        return lib.serial(lib.FanOut(len(branches)), lib.parallel(*branches), fan_in)
    name, kw = node
    # the readout (the recipe's last layer) keeps its output width
    return leaf(name, scaled(kw, name, width, ("out_dim", "out_chan") if readout else ()))


def build(node: Recipe, width: float = 1.0, *, readout: bool = True) -> Any:
    """The torchntk spec of a recipe, hidden widths times ``width`` (the readout's too unless
    ``readout``: more outputs give the Monte Carlo more samples, and the kernel of the last
    layer does not depend on its width)."""
    from torchntk import layers as L

    def leaf(name: str, kw: dict) -> Any:
        return getattr(L, name)(**(_attention_kw(kw, peer=False) if name == "GlobalSelfAttention" else kw))

    return _walk(node, leaf, L, 1, width, readout)


# Known peer defects that build_stax can work around (docs/peer-differences.md):
# "shapes": a layer without a finite-width apply_fn (ExpNormalized) makes every enclosing
# serial/parallel report its *input's* shape, so later channel counts are wrong (FanInConcat's
# weights, a standard-parameterized layer's fan-in); given a shape-keeping apply_fn (the layer
# keeps the shape), the peer's own kernel rules then propagate the right shapes.
REPAIRS = ("shapes",)


def build_stax(
    node: Recipe, width: float = 1.0, *, spatial_ndim: int = 0, repairs: tuple[str, ...] = (), zero_bias: str = "none"
) -> tuple:
    """The peer's ``(init_fn, apply_fn, kernel_fn)`` of the same recipe (inputs with
    ``spatial_ndim`` spatial axes), hidden widths times ``width``; ``repairs`` names known
    peer defects (:data:`REPAIRS`) to work around. ``zero_bias="literal"`` passes ``b_std=0``
    as is (the peer's zero-initialized bias) instead of torchntk's meaning (no bias)."""
    from neural_tangents import stax

    def leaf(name: str, kw: dict) -> Any:
        kw = dict(kw)
        if name in ("Dense", "Conv") and kw.get("b_std") == 0 and zero_bias == "none":
            kw["b_std"] = None  # torchntk's "no bias" (the peer's 0 is a zero-initialized bias)
        if name == "Conv":
            kw["filter_shape"] = tuple(kw["filter_shape"])
            kw["strides"] = None if kw.get("strides") is None else tuple(kw["strides"])
            if len(kw["filter_shape"]) == 1:
                kw["dimension_numbers"] = ("NWC", "WIO", "NWC")
        elif name in ("AvgPool", "SumPool"):
            kw["window_shape"] = tuple(kw["window_shape"])
            kw["strides"] = None if kw.get("strides") is None else tuple(kw["strides"])
        elif name == "LayerNorm":
            kw["axis"] = _peer_axes(kw.get("axis", 1), spatial_ndim)
        elif name == "GlobalSelfAttention":
            kw = _attention_kw(kw, peer=True)
        elif name == "Aggregate":
            kw = {"aggregate_axis": 1, "implementation": kw.get("implementation", "dense").upper()}
        layer = getattr(stax, name)(**kw)
        if name == "ExpNormalized" and "shapes" in repairs:
            layer = (layer[0], lambda params, x, **_: x, layer[2])
        return layer

    return _walk(node, leaf, stax, -1, width, True)


def _peer_axes(axis: int | tuple[int, ...], spatial_ndim: int) -> tuple[int, ...]:
    """torchntk's axes of ``(N, C, *spatial)`` as the peer's of ``(N, *spatial, C)``."""
    rank = spatial_ndim + 2
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        a %= rank
        out.append(rank - 1 if a == 1 else a - 1)
    return tuple(sorted(out))


def describe(node: Recipe) -> str:
    """The recipe as one line of ``>``-separated layers (``[a | b]`` for branches)."""
    kind = node[0]
    if kind == "serial":
        return " > ".join(describe(n) for n in node[1])
    if kind == "fan":
        inner = " | ".join(" > ".join(describe(n) for n in b) if b else "Identity" for b in node[1])
        return f"FanOut({len(node[1])}) > [{inner}] > FanIn{'Sum' if node[2] == 'sum' else 'Concat'}"
    name, kw = node

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else repr(v)

    return f"{name}(" + ", ".join(f"{k}={fmt(v)}" for k, v in kw.items()) + ")"
