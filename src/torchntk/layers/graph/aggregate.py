"""``Aggregate``: message passing over a graph (the Graph NTK of Du et al. 2019).

Node features are ``(N, C, V)`` (channels first, one spatial axis of ``V`` nodes); each sample
``n`` comes with a pattern (CONVENTIONS section 6), passed as ``spec.kernel(x1, x2,
pattern=(p1, p2))`` and ``module(x, pattern=p)``:

- dense: weights ``p (N, V, V)``, ``p[n, i, j]`` the weight of the arc from node ``i`` to node
  ``j``;
- sparse: integer edge lists ``(N, E, 2)`` of ``(tail, head)``, each edge of weight 1 (repeated
  edges add up). Node indices run from 0 to ``V - 1``; the one padding is an unused slot
  ``(-1, -1)`` (so that edge lists of different lengths stack); any other negative index, or a
  half-used slot such as ``(i, -1)``, is refused (``InvalidArgumentError`` naming ``pattern``).

Every node receives the weighted sum of its predecessors, ``y[c, j] = sum_i p[i, j] x[c, i]``,
so with ``A = p^T`` (``A[j, i] = p[i, j]``) the kernels map as

    Sigma'(x, x')[j, j'] = sum_{i, i'} A(x)[j, i] Sigma(x, x')[i, i'] A(x')[j', i'],   Theta' alike

(no parameters; Gaussian pre-activations stay Gaussian). The layer needs the covariance of every
pair of nodes (the full spatial layout). Masked nodes (``mask=``) send and receive nothing.

Example (a two-layer graph network on weighted arcs):
    >>> from torchntk import layers as L
    >>> gnn = L.serial(L.Dense(256), L.Aggregate(), L.Relu(), L.Dense(256), L.Aggregate(),
    ...                L.Relu(), L.GlobalSumPool(), L.Dense(1))
    >>> x, p = torch.randn(3, 4, 5), torch.rand(3, 5, 5)
    >>> gnn.kernel(x, pattern=p).ntk.shape
    torch.Size([3, 3])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..._checks import check_choice, check_tensor as _check_tensor
from ...errors import InvalidArgumentError, NonFiniteError, SpecError
from .. import _side
from ..linear_maps import _spatial_map
from .._core.protocol import Layer, Shapes, single
from .._core.kernel import Kernel
from .._core.supports import Supports

__all__ = ["Aggregate"]

IMPLEMENTATIONS = ("dense", "sparse")


def _edges(pattern: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tails, heads, keep)`` of a sparse pattern ``(N, E, 2)``; unused slots and edges touching
    a masked node have ``keep = 0`` and indices set to 0."""
    tails, heads = pattern[..., 0].long(), pattern[..., 1].long()
    keep = (tails >= 0) & (heads >= 0)
    tails, heads = tails.clamp(min=0), heads.clamp(min=0)
    if mask is not None:
        keep = keep & ~mask.gather(1, tails) & ~mask.gather(1, heads)
    return tails, heads, keep


def _dense_map(pattern: torch.Tensor, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``A (N, V, V)`` with ``A[n, j, i] = p[n, i, j]`` (0 at masked tails or heads)."""
    a = pattern.to(dtype).transpose(1, 2)
    if mask is not None:
        keep = (~mask).to(dtype)
        a = a * keep[:, :, None] * keep[:, None, :]
    return a


class _AggregateModule(_side.SideModule):
    def __init__(self, implementation: str) -> None:
        super().__init__()
        self.implementation = implementation

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, pattern: torch.Tensor | None = None) -> torch.Tensor:
        if pattern is None:
            raise SpecError("Aggregate needs the graph: call the module as module(x, pattern=p)")
        _check_kind(self.implementation, _check_tensor("pattern", pattern), "pattern")
        # inside torch.func transforms (vmap) only the shapes can be checked: reading the
        # entries there raises
        pattern = _side.check_pattern("pattern", pattern, x, values=_side.readable(pattern))
        if self.implementation == "dense":
            return torch.bmm(x, _dense_map(pattern, mask, x.dtype).transpose(1, 2))
        tails, heads, keep = _edges(pattern, mask)
        c = x.shape[1]
        sent = x.gather(2, tails[:, None, :].expand(-1, c, -1)) * keep[:, None, :].to(x.dtype)
        return torch.zeros_like(x).scatter_add(2, heads[:, None, :].expand(-1, c, -1), sent)


def _check_kind(implementation: str, pattern: torch.Tensor, name: str) -> None:
    if implementation == "dense" and not pattern.is_floating_point():
        raise InvalidArgumentError(
            f"Aggregate(implementation='dense'): `{name}` must hold floating (N, V, V) arc weights, got {pattern.dtype}; "
            "integer (N, E, 2) edge lists go with implementation='sparse'"
        )
    if implementation == "sparse" and pattern.is_floating_point():
        raise InvalidArgumentError(
            f"Aggregate(implementation='sparse'): `{name}` must be an integer (N, E, 2) edge list, got {pattern.dtype}"
        )


def _check_range(before: Kernel, after: Kernel, p1: torch.Tensor, p2: torch.Tensor) -> Kernel:
    """``after``, or a ``NonFiniteError`` naming ``pattern`` when the aggregation of a finite
    kernel overflowed: the covariances scale as the square of the arc weights, so weights of
    about ``sqrt(1.8e308 / |Sigma|)`` (1e154 for unit covariances) leave float64's range."""
    fields = ("nngp", "ntk", "cov1", "cov2")
    if all(bool(torch.isfinite(t).all()) for t in (getattr(after, f) for f in fields) if t is not None):
        return after
    if not all(bool(torch.isfinite(t).all()) for t in (getattr(before, f) for f in fields) if t is not None):
        return after  # a non-finite input kernel is not the pattern's doing
    top = max(float(p.detach().abs().max()) if p.numel() else 0.0 for p in (p1, p2))
    scale = max((float(t.detach().abs().max()) for t in (getattr(before, f) for f in fields) if t is not None and t.numel()), default=0.0)
    raise NonFiniteError(
        f"Aggregate: the arc weights of `pattern` (largest |weight| {top:.3g}) take the covariances "
        f"(largest {scale:.3g}) beyond float64's range ({torch.finfo(after.nngp.dtype).max:.3g}): "
        "they scale as the square of the weights; rescale the pattern"
    )


def _sparse_pair(t: torch.Tensor, e1: tuple, e2: tuple, lead: int) -> torch.Tensor:
    """``out[j, j'] = sum_{edges e: i -> j, f: i' -> j'} t[i, i']`` (per sample, or per pair of samples)."""
    (t1, h1, k1), (t2, h2, k2) = e1, e2
    v = t.shape[-1]
    if lead == 2:  # t (N1, N2, V, V); edges of x1 per row sample, of x2 per column sample
        n1, n2 = t.shape[:2]
        rows = torch.arange(n1, device=t.device)[:, None, None, None]
        cols = torch.arange(n2, device=t.device)[None, :, None, None]
        g = t[rows, cols, t1[:, None, :, None], t2[None, :, None, :]]  # (N1, N2, E1, E2)
        g = g * (k1[:, None, :, None] & k2[None, :, None, :]).to(t.dtype)
        idx1 = h1[:, None, :, None].expand(n1, n2, h1.shape[1], g.shape[3])
        out = t.new_zeros(n1, n2, v, g.shape[3]).scatter_add(2, idx1, g)
        idx2 = h2[None, :, None, :].expand(n1, n2, v, h2.shape[1])
        return t.new_zeros(n1, n2, v, v).scatter_add(3, idx2, out)
    n = t.shape[0]  # t (N, V, V): a sample with itself
    rows = torch.arange(n, device=t.device)[:, None, None]
    g = t[rows, t1[:, :, None], t1[:, None, :]] * (k1[:, :, None] & k1[:, None, :]).to(t.dtype)
    out = t.new_zeros(n, v, g.shape[2]).scatter_add(1, h1[:, :, None].expand(n, h1.shape[1], g.shape[2]), g)
    return t.new_zeros(n, v, v).scatter_add(2, h1[:, None, :].expand(n, v, h1.shape[1]), out)


class Aggregate(Layer):
    """Sum over each node's predecessors in a per-sample graph (see the module docstring).

    Args:
        implementation: ``"dense"`` (``(N, V, V)`` weights; matrix products, ``O(V^3)`` per
            pair of samples) or ``"sparse"`` (``(N, E, 2)`` integer edge lists; gathers and
            scatter-adds, ``O(E^2 + V E)`` per pair), any case.
    """

    supports = Supports(masks=True, patterns=True, full_layout=True)

    def __init__(self, implementation: str = "dense") -> None:
        self.implementation = check_choice("implementation", implementation, IMPLEMENTATIONS, any_case=True, who="Aggregate")

    def __repr__(self) -> str:
        return f"Aggregate(implementation={self.implementation!r})"

    def output_shape(self, input_shape: Shapes) -> Shapes:
        shape = single(self, input_shape)
        if len(shape) != 2:
            raise SpecError(f"Aggregate needs node features (C, V) per sample (inputs (N, C, V)), got shape {shape}")
        return shape

    def needs_full(self, input_shape: Shapes, out_full: Any) -> Any:
        return True

    def kernel_rule(self, k: Kernel) -> Kernel:
        self.output_shape(k.shape)
        if not k.full_spatial:
            raise SpecError(f"{self!r} needs the full spatial covariance; call it through spec.kernel")
        p1, p2 = k.patterns
        if p1 is None or p2 is None:
            which = "`pattern`" if p1 is None else "`pattern[1]` (for x2)"
            raise SpecError(f"{self!r} needs the graph of every input: pass {which} to spec.kernel(x1, x2, pattern=(p1, p2))")
        _check_kind(self.implementation, p1, "pattern[0]")
        _check_kind(self.implementation, p2, "pattern[1]")
        m1, m2 = k.masks
        if self.implementation == "dense":
            dt = k.nngp.dtype
            a1 = _dense_map(p1, m1, dt)
            a2 = None if k.same_inputs else _dense_map(p2, m2, dt)
            return _check_range(k, _spatial_map.apply_map(k, a1, a2, k.shape[1:]), p1, p2)
        e1 = _edges(p1, m1)
        e2 = e1 if k.same_inputs else _edges(p2, m2)

        def agg(t: torch.Tensor | None, a: tuple, b: tuple, lead: int) -> torch.Tensor | None:
            return None if t is None else _sparse_pair(t, a, b, lead)

        return k.replace(
            nngp=agg(k.nngp, e1, e2, 2), ntk=agg(k.ntk, e1, e2, 2), cov1=agg(k.cov1, e1, e1, 1),
            cov2=None if k.cov2 is None else agg(k.cov2, e2, e2, 1), is_input=False,
        )

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        self.output_shape(single(self, input_shape))
        return _AggregateModule(self.implementation)
