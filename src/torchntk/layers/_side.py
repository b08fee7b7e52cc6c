"""Side inputs of the spec: padding masks and graph patterns (private).

Some layers need, besides the activations, per-sample data that no layer computes
(CONVENTIONS section 6):

- a **mask**: boolean ``(N, *spatial)``, True where a position is padding. It changes with the
  spatial shape (a strided layer strides it, a global pooling consumes it): each layer says how
  through :meth:`~torchntk.layers.Layer.mask_out`.
- a **graph pattern**: dense ``(N, V, V)`` floating weights (``p[n, i, j]``: an arc from node i
  to node j) or a sparse integer edge list ``(N, E, 2)`` of (tail, head) pairs. It is passed
  through every layer unchanged.

The kernel recursion carries them on the :class:`~torchntk.layers.Kernel` record (``mask1``,
``mask2``, ``pattern1``, ``pattern2``; the second ones are ``None`` when ``x2`` is ``x1``). The
finite modules built by ``spec.module`` take them as ``forward(x, mask=None, pattern=None)``:
modules that use them derive from :class:`SideModule`, and the combinators' modules pass them
on to those (and not to the others).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_tensor
from ..errors import InvalidArgumentError, ShapeError

__all__ = ["SideModule", "call", "side_pair", "check_mask", "check_pattern", "readable", "zero_masked"]


class SideModule(nn.Module):
    """Base of the finite modules whose ``forward(x, mask=None, pattern=None)`` uses a side input.

    Combinator modules (serial, parallel) pass ``mask``/``pattern`` only to modules of this
    type; every other module is called as ``module(x)``.
    """

    def forward(self, x: Any, mask: Any = None, pattern: Any = None) -> Any:  # pragma: no cover
        raise NotImplementedError


def call(module: nn.Module, x: Any, mask: Any, pattern: Any) -> Any:
    """``module(x, mask=..., pattern=...)`` for a :class:`SideModule`, ``module(x)`` otherwise."""
    if isinstance(module, SideModule):
        return module(x, mask=mask, pattern=pattern)
    return module(x)


def check_mask(name: str, mask: Any, x: torch.Tensor) -> torch.Tensor:
    """Validate a padding mask of the batch ``x`` ``(N, C, *spatial)``: bool ``(N, *spatial)``."""
    mask = check_tensor(name, mask)
    if x.ndim < 3:
        raise ShapeError(
            f"`{name}`: masks mark padded positions of spatial inputs (N, C, L) or (N, C, H, W); "
            f"the inputs are flat with shape {tuple(x.shape)}"
        )
    expected = (x.shape[0], *x.shape[2:])
    if mask.dtype != torch.bool:
        raise InvalidArgumentError(f"`{name}` must be a boolean tensor (True = padding), got {mask.dtype}")
    if tuple(mask.shape) != expected:
        raise ShapeError(
            f"`{name}` must have shape (N, *spatial) = {expected} for inputs of shape {tuple(x.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    return mask.to(x.device)


def check_pattern(name: str, pattern: Any, x: torch.Tensor, *, values: bool = True) -> torch.Tensor:
    """Validate a graph pattern of the batch ``x`` ``(N, C, V)``.

    Dense: floating ``(N, V, V)`` finite weights. Sparse: integer ``(N, E, 2)`` edge lists of
    ``(tail, head)`` with both entries in ``[0, V)``; the only padding is an unused slot
    ``(-1, -1)`` (both entries -1), so that edge lists of different lengths stack. Any other
    negative entry, and a half-used slot such as ``(i, -1)``, is refused.

    ``values=False`` skips the checks that read the entries (finite weights, node indices in
    range): they cannot run inside ``torch.func`` transforms (``vmap``), which see the shapes only.
    Raises ``ShapeError`` for shapes and indices that do not fit ``x``, ``InvalidArgumentError``
    for dtypes, non-finite weights and malformed padding slots, each naming ``name``.
    """
    pattern = check_tensor(name, pattern)
    if x.ndim != 3:
        raise ShapeError(
            f"`{name}`: graph patterns go with node features of shape (N, C, V); the inputs have shape "
            f"{tuple(x.shape)}"
        )
    n, v = x.shape[0], x.shape[2]
    if pattern.ndim != 3 or pattern.shape[0] != n:
        raise ShapeError(
            f"`{name}` must be a dense (N, V, V) = ({n}, {v}, {v}) weight tensor or a sparse (N, E, 2) edge "
            f"list with N = {n}, got shape {tuple(pattern.shape)}"
        )
    if pattern.is_floating_point():
        if tuple(pattern.shape[1:]) != (v, v):
            raise ShapeError(f"`{name}`: a dense pattern must have shape (N, V, V) = ({n}, {v}, {v}), got {tuple(pattern.shape)}")
        if values and not bool(torch.isfinite(pattern).all()):
            raise InvalidArgumentError(f"`{name}` contains non-finite weights")
    elif pattern.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        if pattern.shape[2] != 2:
            raise ShapeError(f"`{name}`: a sparse pattern must have shape (N, E, 2) of (tail, head), got {tuple(pattern.shape)}")
        if values:
            _check_edges(name, pattern, v)
    else:
        raise InvalidArgumentError(
            f"`{name}` must be floating (dense weights) or integer (sparse edge list), got {pattern.dtype}"
        )
    return pattern.to(x.device)


def readable(t: torch.Tensor) -> bool:
    """Whether the entries of ``t`` can be read (``t`` is not a ``torch.func`` transform's
    wrapper, e.g. a ``vmap`` batch, whose data-dependent reads raise)."""
    return not torch._C._functorch.is_functorch_wrapped_tensor(t)


def _check_edges(name: str, pattern: torch.Tensor, v: int) -> None:
    """Node indices of a sparse pattern ``(N, E, 2)``: in ``[0, V)``, or ``(-1, -1)`` (an unused slot)."""
    if pattern.numel() == 0:
        return
    top = int(pattern.max())
    if top >= v:
        where = tuple(int(i) for i in torch.nonzero(pattern == top)[0])
        raise ShapeError(
            f"`{name}`: the node index {top} at {where} is out of range for V = {v} nodes (indices run from 0 to {v - 1})"
        )
    unused = (pattern == -1).all(dim=-1, keepdim=True)
    bad = (pattern < 0) & ~unused
    if bool(bad.any()):
        where = tuple(int(i) for i in torch.nonzero(bad)[0])
        edge = tuple(int(i) for i in pattern[where[0], where[1]])
        raise InvalidArgumentError(
            f"`{name}`: edge {edge} at (sample, edge) = {where[:2]} has a negative node index; node indices run "
            f"from 0 to {v - 1}, and the only padding of an edge list is an unused slot (-1, -1)"
        )


def side_pair(
    name: str, value: Any, x1: torch.Tensor, x2: torch.Tensor | None, check: Any
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Normalize ``mask=``/``pattern=`` of ``spec.kernel`` to a validated pair ``(v1, v2)``.

    ``value`` is ``None``, a pair ``(v1, v2)`` (``v2`` must be ``None`` when ``x2`` is; either
    may be ``None`` for "no side input") or, when ``x2`` is ``None``, a single tensor.
    """
    if value is None:
        return None, None
    if isinstance(value, torch.Tensor):
        if x2 is not None:
            raise InvalidArgumentError(f"`{name}` must be a pair ({name}1, {name}2) when `x2` is given")
        return check(f"{name}[0]", value, x1), None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise InvalidArgumentError(
            f"`{name}` must be a pair ({name}1, {name}2) of tensors (or None), or one tensor when `x2` is None; "
            f"got {type(value).__name__}"
        )
    v1, v2 = value
    if x2 is None and v2 is not None:
        raise InvalidArgumentError(f"`{name}[1]` must be None when `x2` is None (the kernel of `x1` with itself)")
    s1 = None if v1 is None else check(f"{name}[0]", v1, x1)
    s2 = None if v2 is None else check(f"{name}[1]", v2, x2)
    if s1 is not None and s2 is not None and s1.dtype.is_floating_point != s2.dtype.is_floating_point:
        raise InvalidArgumentError(f"`{name}`: both patterns must be dense, or both sparse")
    return s1, s2


def zero_masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x`` ``(N, C, *spatial)`` with the channels of masked positions set to 0."""
    if mask is None:
        return x
    return x.masked_fill(mask.unsqueeze(1), 0.0)
