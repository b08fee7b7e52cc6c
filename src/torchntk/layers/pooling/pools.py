"""Pooling and reshaping layers: ``AvgPool``, ``SumPool``, ``GlobalAvgPool``, ``Flatten``.

Pooling mixes different pixels, so its kernel needs the covariance of every pixel pair (the
full spatial layout), which the spec then carries from the input on:

    AvgPool:        Sigma'(p, p') = (1/k^2) sum_{d, d'} pad(Sigma)(s p + d, s p' + d')
    SumPool:        k^2 times the above (the sum instead of the mean over k window pixels)
    GlobalAvgPool:  Sigma' = mean over all pixel pairs (p, p') of Sigma(p, p')

``Flatten`` (``(C, *spatial) -> (C * D,)``) needs only the per-pixel kernel: the flat vector's
kernel is the mean over pixels of ``Sigma(p, p)``. The same formulas hold for ``Theta``; all
these layers are linear, so Gaussian pre-activations stay Gaussian.

Example:
    >>> from torchntk import layers as L
    >>> spec = L.serial(L.Conv(32, (3, 3)), L.Relu(), L.GlobalAvgPool(), L.Dense(1))
    >>> spec.kernel(torch.randn(2, 3, 6, 6)).nngp.shape
    torch.Size([2, 2])
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import SpecError
from .. import _masking, _spatial
from .._core.protocol import Layer, Shapes, single
from .._side import SideModule
from ..conv.convolution import as_tuple, check_padding, window_geometry, window_mean_kernel
from .._core.kernel import Kernel
from .._core.supports import Supports

__all__ = ["AvgPool", "SumPool", "GlobalAvgPool", "GlobalSumPool", "Flatten"]


class _PoolModule(nn.Module):
    """Average (or sum) pooling with TF-style SAME/CIRCULAR padding applied explicitly."""

    def __init__(self, window: tuple[int, ...], strides: tuple[int, ...], padding: str, scale: float) -> None:
        super().__init__()
        self.window, self.strides, self.padding, self.scale = window, strides, padding, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _spatial.pad_input(x, self.window, self.strides, self.padding)
        pool = F.avg_pool1d if len(self.window) == 1 else F.avg_pool2d
        out = pool(x, self.window, self.strides)
        return out * self.scale if self.scale != 1 else out

    def extra_repr(self) -> str:
        return f"window={self.window}, strides={self.strides}, padding={self.padding!r}, scale={self.scale}"


class _Pool(Layer):
    _sum = False

    def __init__(
        self, window_shape: int | Sequence[int], strides: int | Sequence[int] | None = None, padding: str = "VALID"
    ) -> None:
        who = type(self).__name__
        self.window_shape = as_tuple(window_shape, "window_shape", who)
        self.strides = as_tuple(strides, "strides", who, allow_none=True)
        self.padding = check_padding(padding, who)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.window_shape}, strides={self.strides}, padding={self.padding!r})"

    def _geometry(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return window_geometry(type(self).__name__, shape, self.window_shape, self.strides, self.padding)

    def output_shape(self, input_shape: Shapes) -> Shapes:
        shape = single(self, input_shape)
        return (shape[0], *self._geometry(shape)[2])

    def needs_full(self, input_shape: Shapes, out_full: Any) -> Any:
        return True

    def mask_out(self, mask: Any, input_shape: Shapes) -> Any:
        if mask is None:
            return None
        raise SpecError(
            f"{self!r} mixes neighbouring positions and does not support padding masks; masks are honoured by "
            "GlobalSelfAttention, GlobalAvgPool, Flatten, LayerNorm and the per-position layers"
        )

    def kernel_rule(self, k: Kernel) -> Kernel:
        window, strides, sizes = self._geometry(k.shape)
        if not k.full_spatial:
            raise SpecError(f"{self!r} needs the full spatial covariance; call it through spec.kernel")
        k = window_mean_kernel(k, window, strides, self.padding, paired=False)
        if self._sum:
            f = float(math.prod(window)) ** 2

            def sc(t: Any) -> Any:
                return None if t is None else t * f

            k = k.replace(nngp=sc(k.nngp), ntk=sc(k.ntk), cov1=sc(k.cov1), cov2=sc(k.cov2))
        return k.replace(shape=(k.shape[0], *sizes), is_input=False)

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        window, strides, _ = self._geometry(single(self, input_shape))
        scale = float(math.prod(window)) if self._sum else 1.0
        return _PoolModule(window, strides, self.padding, scale)


class AvgPool(_Pool):
    """Average pooling over ``window_shape`` (strides default 1; padding VALID, SAME or
    CIRCULAR; padded pixels count as zeros in the mean, as neural-tangents'
    ``normalize_edges=False``)."""

    supports = Supports(masks=False, full_layout=True, features="pool")


class SumPool(_Pool):
    """Sum pooling: ``prod(window_shape)`` times :class:`AvgPool`."""

    _sum = True
    supports = Supports(masks=False, full_layout=True, features="pool")


class _GlobalAvgPoolModule(SideModule):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, pattern: Any = None) -> torch.Tensor:
        if mask is not None:
            return _masking.module_global_mean(x, mask)
        return x.mean(dim=tuple(range(2, x.ndim)))


class _GlobalSumPoolModule(SideModule):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, pattern: Any = None) -> torch.Tensor:
        if mask is not None:
            x = x.masked_fill(mask.unsqueeze(1), 0.0)
        return x.sum(dim=tuple(range(2, x.ndim)))


def _spatial_input(layer: Layer, input_shape: Shapes) -> tuple[int, ...]:
    shape = single(layer, input_shape)
    if len(shape) < 2:
        raise SpecError(f"{layer!r} needs spatial data (C, L) or (C, H, W), but its input is flat (shape {shape})")
    return shape


class _GlobalPool(Layer):
    """The global pool over all spatial positions, ``(C, *spatial) -> (C,)`` (private):
    the mean (``_sum = False``) or the sum (``_sum = True``). Kernel: the mean over all pixel
    pairs, times ``D^2`` for the sum (``D`` positions). With a padding mask the mean runs over
    the kept positions (see :mod:`._masking`), and the sum is ``c c'`` times that masked mean
    (``c``, ``c'`` kept positions of the two inputs)."""

    _sum = False

    def output_shape(self, input_shape: Shapes) -> Shapes:
        return (_spatial_input(self, input_shape)[0],)

    def needs_full(self, input_shape: Shapes, out_full: Any) -> Any:
        return True

    def kernel_rule(self, k: Kernel) -> Kernel:
        out = self._mean_rule(k)
        if not self._sum:
            return out
        size = math.prod(k.shape[1:])

        def kept(m: Any, n: int) -> torch.Tensor:
            if m is None:
                return torch.full((n,), float(size), dtype=k.nngp.dtype, device=k.nngp.device)
            return (~m).flatten(1).sum(1).to(k.nngp.dtype)

        m1, m2 = k.masks
        c1, c2 = kept(m1, k.nngp.shape[0]), kept(m2, k.nngp.shape[1])
        pair = c1[:, None] * c2[None, :]
        return out.replace(
            nngp=out.nngp * pair, ntk=None if out.ntk is None else out.ntk * pair, cov1=out.cov1 * c1 * c1,
            cov2=None if out.cov2 is None else out.cov2 * c2 * c2,
        )

    def _mean_rule(self, k: Kernel) -> Kernel:
        out = self.output_shape(k.shape)
        if not k.full_spatial:
            raise SpecError(f"{self!r} needs the full spatial covariance; call it through spec.kernel")
        nsp = k.spatial_ndim
        if k.mask1 is not None or k.mask2 is not None:
            return _masking.global_avg_pool(k).replace(shape=out, diagonal_spatial=True, is_input=False)

        def m(t: Any, lead: int) -> Any:
            return None if t is None else _spatial.spatial_mean(t, lead, True, nsp, diagonal_only=False)

        return k.replace(
            nngp=m(k.nngp, 2), ntk=m(k.ntk, 2), cov1=m(k.cov1, 1), cov2=m(k.cov2, 1),
            shape=out, diagonal_spatial=True, is_input=False,
        )

    def mask_out(self, mask: Any, input_shape: Shapes) -> Any:
        return None  # consumed: the output is flat

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        self.output_shape(input_shape)
        return _GlobalSumPoolModule() if self._sum else _GlobalAvgPoolModule()


class GlobalAvgPool(_GlobalPool):
    """Mean over all spatial positions: ``(C, *spatial) -> (C,)``; kernel: mean over all pixel pairs.

    With a padding mask, the means run over the kept positions (see :mod:`._masking`).
    """

    supports = Supports(masks=True, full_layout=True, features="global_pool")


class GlobalSumPool(_GlobalPool):
    """Sum over all spatial positions: ``(C, *spatial) -> (C,)``; kernel: ``D^2`` times
    :class:`GlobalAvgPool`'s (``D`` positions), i.e. the sum over all pixel pairs. With a padding
    mask, the sum over the kept positions: ``c c'`` times the masked mean (``c``, ``c'`` kept
    positions of the two inputs)."""

    _sum = True
    supports = Supports(masks=True, full_layout=True, features="global_pool")


class Flatten(Layer):
    """``(C, *spatial) -> (C * D,)`` (row-major, as ``x.flatten(1)``); kernel: mean of ``Sigma(p, p)``.

    A no-op on flat inputs. With a padding mask, padded positions are left out and the sum
    over kept positions is divided by ``sqrt(n_i n_j)`` (see :mod:`._masking`).
    """

    supports = Supports(masks=True, features="flatten")

    def output_shape(self, input_shape: Shapes) -> Shapes:
        shape = single(self, input_shape)
        return (math.prod(shape),)

    def needs_full(self, input_shape: Shapes, out_full: Any) -> Any:
        return False

    def kernel_rule(self, k: Kernel) -> Kernel:
        out = self.output_shape(k.shape)
        nsp = k.spatial_ndim
        if nsp == 0:
            return k
        if k.mask1 is not None or k.mask2 is not None:
            masked = _masking.flatten(_spatial.to_diagonal(k))
            return masked.replace(shape=out, diagonal_spatial=True)
        full = k.full_spatial

        def m(t: Any, lead: int) -> Any:
            return None if t is None else _spatial.spatial_mean(t, lead, full, nsp, diagonal_only=True)

        return k.replace(
            nngp=m(k.nngp, 2), ntk=m(k.ntk, 2), cov1=m(k.cov1, 1), cov2=m(k.cov2, 1),
            shape=out, diagonal_spatial=True, is_input=k.is_input,
        )

    def mask_out(self, mask: Any, input_shape: Shapes) -> Any:
        return None  # consumed: the output is flat

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        self.output_shape(input_shape)
        return _FlattenModule(1)


class _FlattenModule(nn.Flatten, SideModule):
    """``nn.Flatten(1)``; with a mask, padded positions are 0 and samples scaled by ``sqrt(D / n_i)``."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, pattern: Any = None) -> torch.Tensor:
        if mask is not None and x.ndim > 2:
            return _masking.module_flatten(x, mask)
        return super().forward(x)
