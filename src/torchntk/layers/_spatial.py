"""Layout helpers for spatial kernels (private).

A kernel tensor has ``lead`` leading batch axes (2 for ``nngp``: ``N1, N2``; 1 for ``cov``) and
then spatial axes: one per spatial dimension in the diagonal layout, or pairs ``(S0, S0', S1,
S1')`` in the full layout. The helpers below average over windows along one axis (pooling, or a
convolution in the diagonal layout) or along a pair of axes jointly (a convolution in the full
layout: ``out[o, o'] = mean_d t[s o + d, s o' + d]``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..nn.conv import same_pads
from ._core.kernel import Kernel


def axis_pads(size: int, window: int, stride: int, padding: str) -> tuple[int, int]:
    """``(before, after)`` padding of one axis for ``padding`` in VALID / SAME / CIRCULAR."""
    return (0, 0) if padding == "VALID" else same_pads([size], [window], [stride])[0]


def out_size(size: int, window: int, stride: int, padding: str) -> int:
    """Output length of one axis under a window/stride/padding (0 or less: does not fit)."""
    if padding == "VALID":
        return (size - window) // stride + 1 if size >= window else 0
    return -(-size // stride)


def pad_input(x: "torch.Tensor", window: Sequence[int], strides: Sequence[int], padding: str) -> "torch.Tensor":
    """Pad a batch ``(N, C, *spatial)`` for a window as the spec does: nothing for VALID, TF-SAME
    zeros for SAME, wrap-around for CIRCULAR (the finite modules then apply a VALID window)."""
    if padding == "VALID":
        return x
    pads = same_pads(x.shape[2:], window, strides)
    flat = [p for pair in reversed(pads) for p in pair]
    if not any(flat):
        return x
    return torch.nn.functional.pad(x, flat, mode="constant" if padding == "SAME" else "circular")


def _pad_axis(t: torch.Tensor, axis: int, pads: tuple[int, int], circular: bool) -> torch.Tensor:
    before, after = pads
    if before == 0 and after == 0:
        return t
    n = t.shape[axis]
    if circular:
        parts = []
        if before:
            parts.append(t.narrow(axis, n - before, before))
        parts.append(t)
        if after:
            parts.append(t.narrow(axis, 0, after))
        return torch.cat(parts, dim=axis)
    shape = list(t.shape)
    parts = []
    if before:
        shape[axis] = before
        parts.append(t.new_zeros(shape))
    parts.append(t)
    if after:
        shape[axis] = after
        parts.append(t.new_zeros(shape))
    return torch.cat(parts, dim=axis)


def _strided(t: torch.Tensor, axis: int, start: int, count: int, stride: int) -> torch.Tensor:
    idx = [slice(None)] * t.ndim
    idx[axis] = slice(start, start + (count - 1) * stride + 1, stride)
    return t[tuple(idx)]


def _mean_of(views: list[torch.Tensor]) -> torch.Tensor:
    """Average of same-shaped views; in place into a fresh buffer unless autograd is recording."""
    if len(views) == 1:
        return views[0].contiguous()
    if torch.is_grad_enabled() and any(v.requires_grad for v in views):
        return sum(views[1:], views[0]) * (1.0 / len(views))
    out = views[0].clone()
    for v in views[1:]:
        out.add_(v)
    return out.mul_(1.0 / len(views))


def _grad(t: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and t.requires_grad


def _same_shift_mean(t: torch.Tensor, axes: tuple[int, ...], pads: tuple[int, int], circular: bool) -> torch.Tensor:
    """Stride-1 SAME/CIRCULAR window mean without a padded copy (no autograd).

    ``out[o] = (1/k) sum_{e=-before}^{after} t[o + e]`` along every axis of ``axes`` jointly
    (the same offset ``e`` on each), zero (or wrapped) outside.
    """
    before, after = pads
    k = before + after + 1
    out = t.clone()
    n = t.shape[axes[0]]
    for e in range(-before, after + 1):
        if e == 0:
            continue
        if circular:
            out.add_(torch.roll(t, shifts=(-e,) * len(axes), dims=axes))
            continue
        if abs(e) >= n:
            continue
        src = [slice(None)] * t.ndim
        dst = [slice(None)] * t.ndim
        for ax in axes:
            src[ax] = slice(e, None) if e > 0 else slice(0, n + e)
            dst[ax] = slice(0, n - e) if e > 0 else slice(-e, None)
        out[tuple(dst)] += t[tuple(src)]
    return out.mul_(1.0 / k)


def window_mean(
    t: torch.Tensor, axis: int, window: int, stride: int, pads: tuple[int, int], circular: bool
) -> torch.Tensor:
    """``out[o] = (1/window) sum_d pad(t)[stride*o + d]`` along ``axis`` (padding counts as 0)."""
    if stride == 1 and window > 1 and sum(pads) == window - 1 and not _grad(t):
        return _same_shift_mean(t, (axis,), pads, circular)
    t = _pad_axis(t, axis, pads, circular)
    count = (t.shape[axis] - window) // stride + 1
    return _mean_of([_strided(t, axis, d, count, stride) for d in range(window)])


def pair_window_mean(
    t: torch.Tensor, axis: int, window: int, stride: int, pads: tuple[int, int], circular: bool
) -> torch.Tensor:
    """``out[o, o'] = (1/window) sum_d pad(t)[s o + d, s o' + d]`` on axes ``(axis, axis + 1)``.

    This is a convolution's effect on a full-layout covariance: both pixels of a pair move by
    the same filter offset ``d``.
    """
    if stride == 1 and window > 1 and sum(pads) == window - 1 and not _grad(t):
        return _same_shift_mean(t, (axis, axis + 1), pads, circular)
    t = _pad_axis(_pad_axis(t, axis, pads, circular), axis + 1, pads, circular)
    count = (t.shape[axis] - window) // stride + 1
    views = [_strided(_strided(t, axis, d, count, stride), axis + 1, d, count, stride) for d in range(window)]
    return _mean_of(views)


def diagonal(t: torch.Tensor, lead: int, nsp: int) -> torch.Tensor:
    """The diagonal layout of a full-layout tensor: ``(lead..., S0, S0', S1, S1') -> (lead..., S0, S1)``."""
    for _ in range(nsp):
        t = torch.diagonal(t, dim1=lead, dim2=lead + 1)
    return t


def to_diagonal(k: Kernel) -> Kernel:
    """Convert a full-layout kernel to the per-pixel (diagonal) layout; other kernels unchanged."""
    if not k.full_spatial:
        return k
    nsp = k.spatial_ndim
    return k.replace(
        nngp=diagonal(k.nngp, 2, nsp),
        ntk=None if k.ntk is None else diagonal(k.ntk, 2, nsp),
        cov1=diagonal(k.cov1, 1, nsp),
        cov2=None if k.cov2 is None else diagonal(k.cov2, 1, nsp),
        diagonal_spatial=True,
    )


def pair_variances(k: Kernel) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q11, q22)`` shaped to broadcast against ``k.nngp`` (variances of each pixel of the pair)."""
    nsp = k.spatial_ndim
    c1, c2 = k.cov1, k.q22
    if k.full_spatial:
        d1, d2 = diagonal(c1, 1, nsp), diagonal(c2, 1, nsp)
        s1 = [d1.shape[0], 1]
        s2 = [1, d2.shape[0]]
        for size in d1.shape[1:]:
            s1 += [size, 1]
            s2 += [1, size]
        return d1.reshape(s1), d2.reshape(s2)
    return c1.unsqueeze(1), c2.unsqueeze(0)


def self_variances(cov: torch.Tensor, full: bool, nsp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q11, q22)`` of a ``cov`` tensor against itself (the two pixels of each pair)."""
    if not full or nsp == 0:
        return cov, cov
    d = diagonal(cov, 1, nsp)
    s1, s2 = [d.shape[0]], [d.shape[0]]
    for size in d.shape[1:]:
        s1 += [size, 1]
        s2 += [1, size]
    return d.reshape(s1), d.reshape(s2)


def transpose_pairs(t: torch.Tensor, full: bool, nsp: int) -> torch.Tensor:
    """Kernel of (x2, x1) from that of (x1, x2): swap ``N1 <-> N2`` and each pixel pair."""
    perm = [1, 0]
    if full:
        for a in range(nsp):
            perm += [2 + 2 * a + 1, 2 + 2 * a]
    else:
        perm += list(range(2, t.ndim))
    return t.permute(perm)


def spatial_mean(t: torch.Tensor, lead: int, full: bool, nsp: int, *, diagonal_only: bool) -> torch.Tensor:
    """Mean over the spatial axes: of the diagonal pixel pairs (Flatten) or of all pairs (GAP)."""
    if nsp == 0:
        return t
    if full and diagonal_only:
        t = diagonal(t, lead, nsp)
    dims: Sequence[int] = tuple(range(lead, t.ndim))
    return t.mean(dim=dims)


def to_positions(t: torch.Tensor, lead: int, nsp: int) -> torch.Tensor:
    """Full layout ``(lead..., S0, S0', S1, S1') -> (lead..., D, D')``, ``D = S0 * S1``
    (positions flattened row-major; a view where the permutation allows)."""
    if nsp == 1:
        return t
    perm = list(range(lead)) + [lead + 2 * a for a in range(nsp)] + [lead + 2 * a + 1 for a in range(nsp)]
    t = t.permute(perm)
    d = math.prod(t.shape[lead:lead + nsp])
    return t.reshape(*t.shape[:lead], d, d)


def from_positions(t: torch.Tensor, lead: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """``(lead..., D, D') -> (lead..., S0, S0', S1, S1')``, the inverse of :func:`to_positions`
    (a permuted view)."""
    nsp = len(spatial)
    if nsp == 1:
        return t
    t = t.reshape(*t.shape[:lead], *spatial, *spatial)
    perm = list(range(lead))
    for a in range(nsp):
        perm += [lead + a, lead + nsp + a]
    return t.permute(perm)
