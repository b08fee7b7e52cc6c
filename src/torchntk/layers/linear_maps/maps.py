"""Parameter-free linear layers on the spatial axes: ``Index``, ``ImageResize``, ``DotGeneral``.

Each maps the positions of every channel linearly, ``y[c, o] = sum_i M[o, i] x[c, i]``, so the
kernels map as ``Sigma'[o, o'] = sum_{i, i'} M[o, i] Sigma[i, i'] M[o', i']`` (and ``Theta``
alike, see :mod:`._spatial_map`). ``Index`` only selects positions, which works in the
per-pixel layout too; the others need the full spatial layout.

Example:
    >>> from torchntk import layers as L
    >>> spec = L.serial(L.Conv(64, 3, padding="SAME"), L.Relu(), L.ImageResize((-1, -1, 8, 8), "linear"),
    ...                 L.Index((slice(None), slice(None), slice(0, 4))), L.GlobalAvgPool(), L.Dense(1))
    >>> spec.kernel(torch.randn(2, 1, 5, 5)).ntk.shape
    torch.Size([2, 2])
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..._checks import check_choice, check_ints
from ...errors import InvalidArgumentError, SpecError
from .._core.supports import Supports
from . import _spatial_map
from .._core.protocol import Layer, Shapes, single
from .._core.kernel import Kernel

__all__ = ["Index", "Slice", "ImageResize", "DotGeneral"]


class _SliceMaker:
    """``Slice[1:3, ::2]`` returns the index ``(slice(1, 3), slice(None, None, 2))``."""

    def __getitem__(self, idx: Any) -> Any:
        return idx


#: Helper to write an :class:`Index` argument with slicing syntax: ``Index(Slice[:, :, 1:5])``.
Slice = _SliceMaker()


class _FnModule(nn.Module):
    """A parameter-free module calling its layer's ``apply``."""

    def __init__(self, layer: "_LinearMap", shape: tuple[int, ...]) -> None:
        super().__init__()
        self._layer, self._shape = layer, shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._layer.apply(x, self._shape)

    def extra_repr(self) -> str:
        return repr(self._layer)


class _LinearMap(Layer):
    """Base of the layers here: ``apply(x, shape)`` on ``(B, C, *spatial)`` and ``output_shape``."""

    def apply(self, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError

    def needs_full(self, input_shape: Shapes, out_full: Any) -> Any:
        return True

    def kernel_rule(self, k: Kernel) -> Kernel:
        out = self.output_shape(k.shape)
        if k.spatial_ndim and not k.full_spatial:
            raise SpecError(f"{self!r} needs the full spatial covariance; call it through spec.kernel")
        shape = k.shape
        m = _spatial_map.matrix_of(lambda b: self.apply(b, (1, *shape[1:])), shape[1:], k.nngp)
        return _spatial_map.apply_map(k, m, None, tuple(out[1:]))

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        shape = single(self, input_shape)
        self.output_shape(shape)
        return _FnModule(self, shape)


# -- Index --------------------------------------------------------------------------------


def _normalize_index(idx: Any, rank: int, who: str) -> tuple[Any, ...]:
    """``idx`` as one entry (int or slice) per axis of a rank-``rank`` batched tensor."""
    entries = idx if isinstance(idx, tuple) else (idx,)
    for e in entries:
        if e is not Ellipsis and not isinstance(e, slice) and (isinstance(e, bool) or not isinstance(e, int)):
            raise InvalidArgumentError(
                f"{who}: `idx` entries must be ints, slices or ..., got {e!r} (use Slice[...] to write it)"
            )
    if sum(e is Ellipsis for e in entries) > 1:
        raise InvalidArgumentError(f"{who}: `idx` may hold one ... at most, got {idx!r}")
    if Ellipsis in entries:
        at = entries.index(Ellipsis)
        fill = rank - (len(entries) - 1)
        entries = entries[:at] + (slice(None),) * max(fill, 0) + entries[at + 1 :]
    if len(entries) > rank:
        raise SpecError(f"{who}: `idx` {idx!r} has {len(entries)} entries for inputs of rank {rank}")
    return tuple(entries) + (slice(None),) * (rank - len(entries))


class Index(Layer):
    """``x[idx]`` on the batched tensor ``(N, C, *spatial)``, as numpy indexing (ints and slices).

    The batch and channel axes must be kept whole (``:`` or ``...``); a spatial axis indexed by
    an int disappears. The kernel is indexed the same way on both positions of each pair:
    ``Sigma'[o, o'] = Sigma[idx(o), idx(o')]``.

    Args:
        idx: an int, a slice, or a tuple of them with at most one ``...``; write it with
            :data:`Slice`: ``Index(Slice[:, :, 1:9:2])``.
    """

    supports = Supports(masks=True)

    def __init__(self, idx: Any) -> None:
        _normalize_index(idx, 64, "Index")  # validates the entries' types
        self.idx = idx

    def __repr__(self) -> str:
        return f"Index({self.idx!r})"

    def _axes(self, shape: tuple[int, ...]) -> list[Any]:
        """Per spatial axis: a list of positions (slice) or an int (the axis is removed)."""
        entries = _normalize_index(self.idx, len(shape) + 1, "Index")
        for axis, name in ((0, "batch"), (1, "channel")):
            if entries[axis] != slice(None):
                raise SpecError(
                    f"Index: the {name} axis {axis} must be kept whole (':'), got {entries[axis]!r}; "
                    "only the spatial axes can be indexed"
                )
        out: list[Any] = []
        for e, n in zip(entries[2:], shape[1:]):
            if isinstance(e, slice):
                positions = list(range(*e.indices(n)))
                if not positions:
                    raise SpecError(f"Index: the slice {e!r} selects nothing on a spatial axis of size {n}")
                out.append(positions)
            else:
                if not -n <= e < n:
                    raise SpecError(f"Index: index {e} is out of range for a spatial axis of size {n}")
                out.append(e % n)
        return out

    def output_shape(self, input_shape: Shapes) -> Shapes:
        shape = single(self, input_shape)
        axes = self._axes(shape)
        return (shape[0], *[len(a) for a in axes if isinstance(a, list)])

    def kernel_rule(self, k: Kernel) -> Kernel:
        out = self.output_shape(k.shape)
        axes = self._axes(k.shape)
        full, nsp = k.full_spatial, k.spatial_ndim

        def index(t: torch.Tensor | None, lead: int) -> torch.Tensor | None:
            if t is None:
                return None
            for a in range(nsp - 1, -1, -1):
                sel = axes[a]
                pos = torch.tensor(sel if isinstance(sel, list) else [sel], device=t.device)
                dims = (lead + 2 * a, lead + 2 * a + 1) if full else (lead + a,)
                for d in dims:
                    t = t.index_select(d, pos)
                if not isinstance(sel, list):
                    for d in reversed(dims):
                        t = t.squeeze(d)
            return t

        return k.replace(
            nngp=index(k.nngp, 2), ntk=index(k.ntk, 2), cov1=index(k.cov1, 1), cov2=index(k.cov2, 1),
            shape=out, diagonal_spatial=k.diagonal_spatial or len(out) == 1,
        )

    def mask_out(self, mask: Any, input_shape: Shapes) -> Any:
        """The padding mask ``(N, *spatial)`` indexed like the positions."""
        if mask is None:
            return None
        shape = single(self, input_shape)
        self.output_shape(shape)
        entries = _normalize_index(self.idx, len(shape) + 1, "Index")
        return mask[(slice(None), *entries[2:])]

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        shape = single(self, input_shape)
        self.output_shape(shape)
        return _IndexModule(self._axes(shape))


class _IndexModule(nn.Module):
    """``x[idx]`` by ``index_select`` per spatial axis (torch slicing has no negative steps)."""

    def __init__(self, axes: list[Any]) -> None:
        super().__init__()
        self.axes = axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for a in range(len(self.axes) - 1, -1, -1):
            sel = self.axes[a]
            pos = torch.tensor(sel if isinstance(sel, list) else [sel], device=x.device)
            x = x.index_select(2 + a, pos)
            if not isinstance(sel, list):
                x = x.squeeze(2 + a)
        return x


# -- ImageResize --------------------------------------------------------------------------

_METHODS = {"nearest": "nearest", "linear": "linear", "bilinear": "linear", "trilinear": "linear", "triangle": "linear"}


def resize_matrix(n_in: int, n_out: int, method: str, antialias: bool, dtype: torch.dtype) -> torch.Tensor:
    """``R (n_out, n_in)`` of one axis, with the conventions of ``jax.image.resize``.

    Pixel ``o`` of the output samples the input at ``f = (o + 1/2) n_in / n_out - 1/2``.
    ``"nearest"``: ``R[o, floor((o + 1/2) n_in / n_out)] = 1``. ``"linear"``: triangle weights
    ``max(0, 1 - |f - i| / s)`` with ``s = max(n_in / n_out, 1)`` when ``antialias`` (a wider
    filter when downsampling) and 1 otherwise, normalized to sum 1 per output pixel.
    """
    if n_in == n_out:
        return torch.eye(n_in, dtype=dtype)
    o = torch.arange(n_out, dtype=torch.float64)
    if method == "nearest":
        src = torch.floor(((o + 0.5) * n_in / n_out).to(torch.float32)).long().clamp(max=n_in - 1)
        return torch.nn.functional.one_hot(src, n_in).to(dtype)
    inv = n_in / n_out
    scale = max(inv, 1.0) if antialias else 1.0
    f = (o + 0.5) * inv - 0.5
    i = torch.arange(n_in, dtype=torch.float64)
    w = torch.clamp(1 - (f[:, None] - i[None, :]).abs() / scale, min=0)
    total = w.sum(1, keepdim=True)
    w = torch.where(total.abs() > 1000 * torch.finfo(torch.float32).eps, w / torch.where(total != 0, total, 1), 0.0)
    inside = (f >= -0.5) & (f <= n_in - 0.5)
    return (w * inside[:, None]).to(dtype)


class ImageResize(_LinearMap):
    """Resize the spatial axes as ``jax.image.resize`` (``"linear"`` or ``"nearest"``).

    Args:
        shape: the output shape of the batched tensor ``(N, C, *spatial)``, ``-1`` for an axis
            kept as is; the batch and channel entries must be ``-1``.
        method: ``"linear"`` (also ``"bilinear"``, ``"trilinear"``, ``"triangle"``) or
            ``"nearest"``, any case.
        antialias: widen the linear filter when downsampling (default True).

    Each axis is mapped by a matrix ``R`` (see :func:`resize_matrix`); the kernel is
    ``R Sigma R^T`` on each pair of axes.
    """

    supports = Supports(masks=False, full_layout=True)

    def __init__(self, shape: Sequence[int], method: str, antialias: bool = True) -> None:
        self.shape = check_ints("shape", shape, who="ImageResize")
        if any(s < 1 and s != -1 for s in self.shape):
            raise InvalidArgumentError(f"ImageResize: `shape` entries must be positive or -1, got {shape!r}")
        method = check_choice("method", method, tuple(_METHODS), any_case=True, who="ImageResize")
        if not isinstance(antialias, bool):
            raise InvalidArgumentError(f"ImageResize: `antialias` must be a bool, got {antialias!r}")
        self.method, self.antialias = _METHODS[method], antialias

    def __repr__(self) -> str:
        return f"ImageResize({self.shape}, {self.method!r}, antialias={self.antialias})"

    def output_shape(self, input_shape: Shapes) -> Shapes:
        shape = single(self, input_shape)
        if len(self.shape) != len(shape) + 1:
            raise SpecError(f"ImageResize: `shape` {self.shape} must have one entry per axis of (N, {shape})")
        if self.shape[0] != -1 or self.shape[1] != -1:
            raise SpecError(
                f"ImageResize: the batch and channel entries of `shape` must be -1 (kept), got {self.shape}; "
                "resizing the channel axis has no infinite-width limit"
            )
        return (shape[0], *[n if s == -1 else s for s, n in zip(self.shape[2:], shape[1:])])

    def apply(self, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        out = self.output_shape(tuple(x.shape[1:]))
        for a, (n_in, n_out) in enumerate(zip(x.shape[2:], out[1:])):
            if n_in != n_out:
                r = resize_matrix(n_in, n_out, self.method, self.antialias, x.dtype).to(x.device)
                x = torch.movedim(torch.movedim(x, 2 + a, -1) @ r.T, -1, 2 + a)
        return x


# -- DotGeneral ---------------------------------------------------------------------------


def _axes_tuple(value: Any, who: str) -> tuple[int, ...]:
    return check_ints("dimension_numbers", value, who=who)


class DotGeneral(_LinearMap):
    """A constant (non-trainable) ``lhs`` or ``rhs`` contracted with the layer's input, as
    ``lax.dot_general`` (neural-tangents' ``DotGeneral``), on the batched tensor ``(N, C, *spatial)``.

    ``dimension_numbers = ((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))``; the
    input's contracted axes must be spatial (the channel axis has infinite width and the batch
    axis separates samples), and batch dimensions are not supported. With ``rhs`` the output
    is ``(N, C, input's free spatial axes, rhs's free axes)`` exactly as ``lax.dot_general``;
    with ``lhs`` the batch and channel axes are moved first:
    ``(N, C, lhs's free axes, input's free spatial axes)``. A scalar ``lhs``/``rhs`` multiplies.
    At most 2 spatial axes may remain. With neither, the layer is the identity.
    """

    supports = Supports(masks=False, full_layout=True)

    def __init__(
        self,
        *,
        lhs: torch.Tensor | float | None = None,
        rhs: torch.Tensor | float | None = None,
        dimension_numbers: Any = (((), ()), ((), ())),
    ) -> None:
        if lhs is not None and rhs is not None:
            raise InvalidArgumentError("DotGeneral: give at most one of `lhs` and `rhs` (the other is the input)")
        other = lhs if rhs is None else rhs
        self.is_lhs = rhs is None
        if other is None:
            other = 1.0
        try:
            self.other = torch.as_tensor(other, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidArgumentError(f"DotGeneral: `lhs`/`rhs` must be a tensor or a number, got {other!r}") from None
        if not bool(torch.isfinite(self.other).all()):
            raise InvalidArgumentError("DotGeneral: `lhs`/`rhs` must be finite")
        try:
            (lc, rc), (lb, rb) = dimension_numbers
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                "DotGeneral: `dimension_numbers` must be ((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch)), "
                f"got {dimension_numbers!r}"
            ) from None
        lc, rc, lb, rb = (_axes_tuple(v, "DotGeneral") for v in (lc, rc, lb, rb))
        if lb or rb:
            raise InvalidArgumentError("DotGeneral: batch dimensions in `dimension_numbers` are not supported")
        if len(lc) != len(rc):
            raise InvalidArgumentError(f"DotGeneral: {len(lc)} lhs and {len(rc)} rhs contracting dimensions")
        self.dimension_numbers = ((lc, rc), (lb, rb))
        self._x_axes, self._o_axes = (rc, lc) if self.is_lhs else (lc, rc)
        other_rank = self.other.ndim
        for a in self._o_axes:
            if not 0 <= a < other_rank:
                raise InvalidArgumentError(f"DotGeneral: contracting axis {a} out of range for a rank-{other_rank} constant")

    def __repr__(self) -> str:
        side = "lhs" if self.is_lhs else "rhs"
        return f"DotGeneral({side}={tuple(self.other.shape)}, dimension_numbers={self.dimension_numbers})"

    def output_shape(self, input_shape: Shapes) -> Shapes:
        shape = single(self, input_shape)
        rank = len(shape) + 1
        for a, o in zip(self._x_axes, self._o_axes):
            if not 2 <= a < rank:
                raise SpecError(
                    f"{self!r}: the input's contracted axis {a} must be spatial (2..{rank - 1}) for inputs (N, {shape}); "
                    "the batch (0) and channel (1) axes cannot be contracted"
                )
            if shape[a - 1] != self.other.shape[o]:
                raise SpecError(f"{self!r}: input axis {a} of size {shape[a - 1]} vs constant axis {o} of size {self.other.shape[o]}")
        x_free = [shape[a - 1] for a in range(2, rank) if a not in self._x_axes]
        o_free = [self.other.shape[a] for a in range(self.other.ndim) if a not in self._o_axes]
        spatial = o_free + x_free if self.is_lhs else x_free + o_free
        if len(spatial) > 2:
            raise SpecError(f"{self!r}: the output would have {len(spatial)} spatial axes (2 at most)")
        return (shape[0], *spatial)

    def apply(self, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        other = self.other.to(dtype=x.dtype, device=x.device)
        out = torch.tensordot(x, other, dims=(list(self._x_axes), list(self._o_axes)))
        if self.is_lhs:  # (N, C, x free, other free) -> (N, C, other free, x free)
            x_free = x.ndim - len(self._x_axes) - 2
            o_free = out.ndim - 2 - x_free
            out = out.permute(0, 1, *range(2 + x_free, 2 + x_free + o_free), *range(2, 2 + x_free))
        return out

    def needs_full(self, input_shape: Shapes, out_full: Any) -> Any:
        return bool(self._x_axes) or self.other.ndim > 0 or out_full

    def kernel_rule(self, k: Kernel) -> Kernel:
        if self._x_axes or self.other.ndim > 0:
            return super().kernel_rule(k)
        c2 = float(self.other) ** 2  # a scalar factor: any layout

        def sc(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t * c2

        return k.replace(nngp=sc(k.nngp), ntk=sc(k.ntk), cov1=sc(k.cov1), cov2=sc(k.cov2), is_input=False)
