"""Which layers the structured NTK covers, and their inputs as patches (private).

A covered layer computes ``y = ws * (W applied to patches of a) + bs * b``:

* ``nn.Linear`` and :class:`torchntk.nn.Linear` on inputs ``(N, *S, K)``: the patches are the
  ``P = prod(S)`` rows ``a[i, s, :]`` (``P = 1`` for the usual ``(N, K)`` input); also the
  ``Conv1D`` of Hugging Face ``transformers`` (GPT-2), a Linear layer whose weight is stored
  transposed (``y = a W + b``, ``W (K, C)``): the Gram products do not depend on that layout;
* ``nn.Conv1d/2d`` (any stride, padding, padding mode, dilation and groups) and
  :class:`torchntk.nn.Conv1d/2d`: the patches of the padded input, ``K = C_in *
  prod(kernel_size)`` numbers each (channel-major, so group ``g`` owns the ``g``-th contiguous
  ``K / groups`` slice), one per output position (``P`` of them);
* ``nn.Embedding`` (kind ``"embedding"``, no ``max_norm``, no ``scale_grad_by_freq``): the
  "patches" are the ``P`` ids it looks up; its weight may be tied to the weight of
  ``nn.Linear`` layers (a language model's output head), see :mod:`._tokens`. A lookup of ids
  without the batch axis (``(1, L)`` position ids broadcast over the batch) is expanded to the
  batch by :class:`Capture`, so every example has its own output and cotangent;
* ``nn.LayerNorm`` and ``nn.RMSNorm`` with an elementwise affine map (kind ``"norm"``): ``P``
  positions of ``K = C`` normalized numbers each.

``ws``/``bs`` are the layers' ``weight_scale``/``bias_scale`` (torchntk's layers) or 1 (torch's).
Coverage is decided by :func:`find_layers` and a probe forward pass
(:func:`torchntk.empirical.structured.probe_layers`, under :class:`Capture`, whose usage tracker
also records which torch functions the model calls): a parameter is covered only if it belongs to exactly one covered layer
(no tying), that layer runs exactly once, and the parameter is used by no operation outside that
layer's own forward. Everything else goes to the Jacobian path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from .. import nn as tnn

_OWN_TYPES = (tnn.Linear, tnn.Conv1d, tnn.Conv2d)


@dataclass
class LayerInfo:
    """A covered layer: module, its selected parameter names, its scales and its kind."""

    name: str
    module: nn.Module
    weight: str | None
    bias: str | None
    ws: float
    bs: float
    conv_dims: int  # 0 for Linear, 1 or 2 for convolutions
    groups: int = 1  # convolution groups: the weight is block diagonal over channel groups
    kind: str = "linear"  # "linear" (Linear, Conv1D, convolutions), "embedding" or "norm"
    tied: bool = False  # the weight is shared with other covered layers (an embedding group)


def layer_kind(m: nn.Module) -> str | None:
    """``"linear"``, ``"embedding"`` or ``"norm"`` when ``m`` is covered, else None."""
    if _supported(m) is not None:
        return "linear"
    t = type(m)
    if t is nn.Embedding:
        return "embedding" if m.max_norm is None and not m.scale_grad_by_freq else None
    rms = getattr(nn, "RMSNorm", None)
    if t is nn.LayerNorm or (rms is not None and t is rms):
        return "norm" if m.elementwise_affine else None
    return None


def _supported(m: nn.Module) -> int | None:
    """Spatial dims (0 for Linear) when ``m`` is covered, else None (exact types only)."""
    t = type(m)
    if t in (nn.Linear, tnn.Linear) or _is_transposed_linear(m):
        return 0
    if t in (tnn.Conv1d, tnn.Conv2d):
        return m.dims
    if t in (nn.Conv1d, nn.Conv2d):
        return 1 if t is nn.Conv1d else 2
    return None


def _is_transposed_linear(m: nn.Module) -> bool:
    """The ``Conv1D`` of ``transformers`` (recognized without importing it): ``y = a W + b``."""
    t = type(m)
    w = getattr(m, "weight", None)
    return (
        t.__name__ == "Conv1D" and t.__module__.startswith("transformers.")
        and isinstance(w, torch.Tensor) and w.ndim == 2 and getattr(m, "nf", None) == w.shape[1]
    )


def _tie_name(module: nn.Module, names: list[str], selected: dict[str, torch.Tensor]) -> str | None:
    """The selected name of a weight held by several slots, when every holder is a distinct
    embedding or plain Linear layer holding it as ``weight``, and one is an embedding (the tied
    input embedding and output head of a language model); else None."""
    sel = [n for n in names if n in selected]
    if not sel:
        return None
    holders = []
    for n in names:
        mname, _, role = n.rpartition(".")
        m = module.get_submodule(mname)
        if role != "weight" or not (type(m) in (nn.Linear, tnn.Linear) or layer_kind(m) == "embedding"):
            return None
        holders.append(m)
    if len({id(m) for m in holders}) != len(names) or not any(type(m) is nn.Embedding for m in holders):
        return None
    return sel[0]


def find_layers(module: nn.Module, selected: dict[str, torch.Tensor]) -> list[LayerInfo]:
    """Covered layers holding at least one selected parameter that is untied, or tied only
    between embeddings and Linear layers (:func:`_tie_name`)."""
    names_of: dict[int, list[str]] = {}
    for n, p in module.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(n)
    layers = []
    for mname, m in module.named_modules():
        kind = layer_kind(m)
        if kind is None:
            continue
        dims = _supported(m) or 0
        found: dict[str, str | None] = {}
        tied = False
        for role in ("weight", "bias"):
            p = getattr(m, role, None)
            full = f"{mname}.{role}" if mname else role
            names = names_of.get(id(p), []) if isinstance(p, nn.Parameter) else []
            if len(names) == 1:
                found[role] = full if full in selected else None
            elif role == "weight" and len(names) > 1 and not _is_transposed_linear(m):
                found[role] = _tie_name(module, names, selected)
                tied = found[role] is not None
            else:
                found[role] = None
        if found["weight"] is None and found["bias"] is None:
            continue
        own = type(m) in _OWN_TYPES
        ws = float(m.weight_scale) if own else 1.0
        bs = float(m.bias_scale) if own else 1.0
        groups = int(getattr(m, "groups", 1)) if dims else 1
        layers.append(LayerInfo(mname, m, found["weight"], found["bias"], ws, bs, dims, groups, kind, tied))
    return layers


class _UsageTracker(TorchFunctionMode):
    """Flags selected parameter tensors used outside the forward of their own layer."""

    def __init__(self, owner: dict[int, set[str]], stack: list[str]) -> None:
        super().__init__()
        self.owner, self.stack, self.outside = owner, stack, set()
        self.functions: set[str] = set()  # names of the torch functions the model called

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        fname = getattr(func, "__name__", "")
        self.functions.add(fname)
        if fname != "__get__":
            here = self.stack[-1] if self.stack else None
            for t in tree_leaves((args, kwargs)):
                if isinstance(t, torch.Tensor):
                    own = self.owner.get(id(t))
                    if own is not None and here not in own:
                        self.outside.add(id(t))
        return func(*args, **kwargs)


@dataclass
class Record:
    """One layer call: its input (detached) and its output (in the graph), with the version
    counters they had then (a later in-place update of either changes its counter)."""

    a: torch.Tensor
    y: torch.Tensor
    versions: tuple[int, int] = (0, 0)

    def overwritten(self) -> bool:
        """True when the model updated the recorded input or output in place after the call."""
        return (self.a._version, self.y._version) != self.versions


class Capture:
    """Context manager: forward hooks recording input and output of each covered layer call.

    With ``copy=True`` the layer's output is passed on as a copy (and its input recorded as
    one), so a forward that updates them in place (``F.relu(y, inplace=True)``, ``y[:, 0] = 0``)
    leaves the recorded tensors and the cotangent ``d f / d y`` of the layer's own output intact.

    With ``cut`` (a layer's name) that layer runs on a detached copy of its input that requires
    grad (:attr:`cut_input` holds the original input, in the graph, and the weight the call
    used): the graph ends at the copy, so a backward pass from the output stops there, and the
    cotangent of the input can be formed by the caller (:mod:`._sparse_head`).
    """

    def __init__(self, layers: list[LayerInfo], track: dict[int, set[str]] | None = None, copy: bool = False,
                 batch: int = 0, expand: bool = True, cut: str | None = None) -> None:
        self.layers, self.copy, self.cut = layers, copy, cut
        self.cut_input: tuple[torch.Tensor, torch.Tensor] | None = None  # (input, weight) of ``cut``
        self.batch, self.expand = batch, expand  # see _post: batch-1 embedding lookups
        self.expanded: set[str] = set()
        self.calls: dict[str, list[Record]] = {lay.name: [] for lay in layers}
        self.stack: list[str] = []
        self.tracker = None if track is None else _UsageTracker(track, self.stack)
        self._handles: list = []

    def __enter__(self) -> "Capture":
        for lay in self.layers:
            self._handles.append(lay.module.register_forward_pre_hook(self._pre(lay.name)))
            self._handles.append(lay.module.register_forward_hook(self._post(lay.name, lay.kind)))
        if self.tracker is not None:
            self.tracker.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.tracker is not None:
            self.tracker.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _pre(self, name: str):
        def hook(module, inputs):
            self.stack.append(name)
            if name == self.cut and inputs and isinstance(inputs[0], torch.Tensor):
                h = inputs[0]
                self.cut_input = (h, module.weight.detach())
                return (h.detach().requires_grad_(h.requires_grad), *inputs[1:])
            return None

        return hook

    def _post(self, name: str, kind: str):
        def hook(module, inputs, output):
            self.stack.pop()
            a = inputs[0].detach()
            grow = kind == "embedding" and self.expand and self.batch > 1 and a.ndim >= 1 and a.shape[0] == 1
            if grow:  # ids shared by the batch (positions): one lookup per example
                self.expanded.add(name)
                a = a.expand(self.batch, *a.shape[1:])
                output = output.expand(self.batch, *output.shape[1:])
            if self.copy:
                a = a.clone()
            self.calls[name].append(Record(a, output, (a._version, output._version)))
            if self.copy:
                return output.clone()
            return output if grow else None

        return hook


def patches(lay: LayerInfo, a: torch.Tensor) -> torch.Tensor:
    """The layer's input as patches ``(N, P, K)`` (one row per output position); the ids
    ``(N, P)`` of an embedding; ``(N, P, K)`` normalized numbers for a norm (see
    :func:`._tokens.normalized`)."""
    m, n = lay.module, a.shape[0]
    if lay.kind == "embedding":
        return a.reshape(n, -1)
    if lay.kind == "norm":
        k = math.prod(m.normalized_shape)
        return a.reshape(n, -1, k)
    if lay.conv_dims == 0:
        return a.reshape(n, -1, a.shape[-1])
    if type(m) in _OWN_TYPES:
        a = m.pad_input(a)
    else:
        pad = m._reversed_padding_repeated_twice
        if any(pad):
            mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
            a = F.pad(a, pad, mode=mode)
    dil = tuple(getattr(m, "dilation", (1,) * lay.conv_dims))
    if lay.conv_dims == 2:
        return F.unfold(a, m.kernel_size, dilation=dil, stride=m.stride).transpose(1, 2)
    k, s, d = m.kernel_size[0], m.stride[0], dil[0]
    u = a.unfold(2, (k - 1) * d + 1, s)[..., ::d]  # (N, C_in, L_out, k)
    return u.permute(0, 2, 1, 3).reshape(n, u.shape[2], -1)


def weight_matrix(lay: LayerInfo, w: torch.Tensor) -> torch.Tensor:
    """The weight ``w`` of a Linear layer as the ``(C, K)`` matrix of ``y = ws * a W^T + bs * b``
    (``transformers``' ``Conv1D`` holds ``W^T``, ``(K, C)``)."""
    return w.T if _is_transposed_linear(lay.module) else w


def cotangent_layout(lay: LayerInfo, g: torch.Tensor) -> torch.Tensor:
    """Cotangents ``g (O, N, *y.shape[1:])`` as ``(O, N, P, C)`` (one row per output position)."""
    o, n = g.shape[:2]
    if lay.kind == "norm":
        return g.reshape(o, n, -1, math.prod(lay.module.normalized_shape))
    if lay.conv_dims == 0:
        return g.reshape(o, n, -1, g.shape[-1])
    c = g.shape[2]
    return g.reshape(o, n, c, -1).transpose(2, 3)
