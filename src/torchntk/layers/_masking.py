"""Padding masks in the layers that mix positions: GlobalAvgPool, Flatten, LayerNorm (private).

A mask ``m`` ``(N, *spatial)`` is True at padded positions; ``keep = ~m`` and ``n_i`` is the
number of kept positions of sample ``i``. The rules leave the padded positions out, so a padded
and masked batch has the kernel of the unpadded one:

    GlobalAvgPool:  Sigma'(x_i, x_j) = sum_{p, q} keep_i[p] keep_j[q] Sigma[p, q] / (n_i n_j)
    Flatten:        Sigma'(x_i, x_j) = sum_p keep_i[p] keep_j[p] Sigma[p, p] / sqrt(n_i n_j)
    LayerNorm over spatial axes: the variance is averaged over the kept positions only.

(The same for ``Theta``.) The finite modules do the same: the mean over kept positions, the
flattened vector with padded positions zeroed and scaled by ``sqrt(D / n_i)`` (so that the next
layer's ``1 / sqrt(C D)`` acts as ``1 / sqrt(C n_i)``), the normalization statistics over kept
positions. A sample with no kept position gets 0.

Layers that mix neighbouring positions (a convolution or pooling window wider than 1, strides)
do not support masks: they raise a SpecError when given one.
"""

from __future__ import annotations

import math

import torch

from ._core.kernel import Kernel


def keep_of(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``~mask`` as ``dtype`` (1 at kept positions), ``(N, *spatial)``; None without a mask."""
    return None if mask is None else (~mask).to(dtype)


def counts(keep: torch.Tensor) -> torch.Tensor:
    """Kept positions per sample ``(N,)``, at least 1 (a fully padded sample gives 0 below)."""
    return keep.flatten(1).sum(1).clamp_min(1.0)


def _keep_pair(k: Kernel, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep1, keep2)`` with ones where a batch has no mask."""
    m1, m2 = k.masks
    n1, n2 = like.shape[0], like.shape[1]
    spatial = tuple(k.shape[1:])
    kw = {"dtype": like.dtype, "device": like.device}
    k1 = keep_of(m1, like.dtype) if m1 is not None else torch.ones((n1, *spatial), **kw)
    k2 = keep_of(m2, like.dtype) if m2 is not None else torch.ones((n2, *spatial), **kw)
    return k1, k2


def _interleave(keep: torch.Tensor, lead: int, batch_axis: int, second: bool, full: bool) -> torch.Tensor:
    """``keep`` ``(N, *spatial)`` shaped to broadcast against a kernel tensor with ``lead``
    batch axes (its own at ``batch_axis``); in the full layout it goes on the first pixel of
    each pair, or the second when ``second``."""
    n, spatial = keep.shape[0], keep.shape[1:]
    shape = [1] * lead
    shape[batch_axis] = n
    for s in spatial:
        shape += ([1, s] if second else [s, 1]) if full else [s]
    return keep.reshape(shape)


def global_avg_pool(k: Kernel) -> Kernel:
    """The masked GlobalAvgPool of a full-layout kernel (the means over kept positions)."""
    full, nsp = True, k.spatial_ndim
    k1, k2 = _keep_pair(k, k.nngp)
    c1, c2 = counts(k1), counts(k2)
    dims2 = tuple(range(2, 2 + 2 * nsp))
    dims1 = tuple(range(1, 1 + 2 * nsp))
    w12 = _interleave(k1, 2, 0, False, full) * _interleave(k2, 2, 1, True, full)

    def pair(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else (t * w12).sum(dims2) / (c1[:, None] * c2[None, :])

    def own(t: torch.Tensor | None, keep: torch.Tensor, c: torch.Tensor) -> torch.Tensor | None:
        if t is None:
            return None
        w = _interleave(keep, 1, 0, False, full) * _interleave(keep, 1, 0, True, full)
        return (t * w).sum(dims1) / (c * c)

    return k.replace(
        nngp=pair(k.nngp), ntk=pair(k.ntk), cov1=own(k.cov1, k1, c1),
        cov2=None if k.cov2 is None else own(k.cov2, k2, c2),
    )


def flatten(k: Kernel) -> Kernel:
    """The masked Flatten of a diagonal-layout kernel (see the module docstring)."""
    nsp = k.spatial_ndim
    k1, k2 = _keep_pair(k, k.nngp)
    c1, c2 = counts(k1), counts(k2)
    dims2 = tuple(range(2, 2 + nsp))
    dims1 = tuple(range(1, 1 + nsp))
    w12 = k1[:, None] * k2[None, :]
    norm = torch.sqrt(c1[:, None] * c2[None, :])

    def pair(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else (t * w12).sum(dims2) / norm

    def own(t: torch.Tensor | None, keep: torch.Tensor, c: torch.Tensor) -> torch.Tensor | None:
        return None if t is None else (t * keep).sum(dims1) / c

    return k.replace(
        nngp=pair(k.nngp), ntk=pair(k.ntk), cov1=own(k.cov1, k1, c1),
        cov2=None if k.cov2 is None else own(k.cov2, k2, c2),
    )


def spatial_mean(q: torch.Tensor, keep: torch.Tensor, lead: int, batch_axis: int, second: bool, full: bool) -> torch.Tensor:
    """Mean of ``q`` over all its spatial axes, over kept positions only (``keepdim``).

    ``q`` has ``lead`` leading axes, its batch at ``batch_axis`` (size N or 1) and spatial axes
    after them (pairs in the full layout, where ``q`` varies only along the first pixel of each
    pair, or the second when ``second``).
    """
    w = _interleave(keep, lead, batch_axis, second, full)
    dims = tuple(range(lead, q.ndim))
    num = (q * w).sum(dims, keepdim=True)
    den = w.sum(dims, keepdim=True).clamp_min(1.0)
    return num / den


def module_global_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(N, C, *spatial) -> (N, C)``: the mean over kept positions."""
    keep = keep_of(mask, x.dtype).unsqueeze(1)
    return (x * keep).flatten(2).sum(2) / counts(keep[:, 0])[:, None]


def module_flatten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(N, C, *spatial) -> (N, C * D)`` with padded positions 0 and each sample scaled by
    ``sqrt(D / n_i)``."""
    keep = keep_of(mask, x.dtype)
    d = math.prod(x.shape[2:])
    scale = torch.sqrt(d / counts(keep))
    return (x * keep.unsqueeze(1)).flatten(1) * scale[:, None]


def module_norm_stats(x: torch.Tensor, mask: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance over ``dims`` (the channel and all spatial axes) of the kept
    positions, ``keepdim``."""
    keep = keep_of(mask, x.dtype).unsqueeze(1).expand_as(x)
    num = keep.sum(dims, keepdim=True).clamp_min(1.0)
    mean = (x * keep).sum(dims, keepdim=True) / num
    var = (((x - mean) * keep) ** 2).sum(dims, keepdim=True) / num
    return mean, var
