"""``ConvTranspose``: the transposed convolution of the spec (as ``lax.conv_transpose``).

Per spatial axis with filter ``k``, stride ``s`` and paddings ``(a, b)``, the layer dilates its
input (``s - 1`` zeros between pixels: ``U[s i] = x[i]``), pads it with ``a`` zeros before and
``b`` after, and applies a stride-1 convolution; with ``fan_in = C_in * prod(k)``

    y[o] = (W_std / sqrt(fan_in)) sum_d W[d] pad(U)[o + d] + b_std b.

The weights are independent across offsets ``d``, so the kernels follow Conv's rule on the
dilated, padded covariance: ``A[Sigma](o, o') = (1/k) sum_d pad(U_Sigma)(o + d, o' + d)``
where ``U_Sigma`` holds ``Sigma(i, i')`` at ``(s i, s i')`` and zeros elsewhere, then
``Sigma' = W_std^2 A[Sigma] + b_std^2``, ``Theta' = W_std^2 A[Theta] + Sigma'`` (NTK
parameterization; the standard one as in :mod:`.dense`).

Paddings (``lax.conv_transpose``'s): ``VALID``: ``a = k - 1``, ``b = s - 1 + max(k - s, 0)``
(output ``n s + max(k - s, 0)``); ``SAME``: ``a + b = k + s - 2`` with ``a = k - 1`` if
``s > k - 1`` else ``ceil((k + s - 2) / 2)`` (output ``n s``); ``CIRCULAR``: the VALID output
folded onto ``n s`` pixels (pixel ``o`` gathers the VALID pixels ``o + c + m n s`` for all
``m``, ``c = (L - n s) // 2``): the adjoint of a circular convolution.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InvalidArgumentError, SpecError
from ...nn import _init
from .. import _spatial
from .._core.protocol import Shapes, single
from .convolution import _ConvBase, check_padding
from ..dense.fully_connected import affine
from .._core.kernel import Kernel
from .._core.supports import Supports

__all__ = ["ConvTranspose"]


def transpose_pads(k: int, s: int, padding: str) -> tuple[int, int]:
    """``(a, b)`` zeros before/after the dilated input (CIRCULAR: those of VALID, then folded)."""
    if padding == "SAME":
        total = k + s - 2
        a = k - 1 if s > k - 1 else -(-total // 2)
        return a, total - a
    return k - 1, s - 1 + max(k - s, 0)


def _dilate(t: torch.Tensor, axis: int, s: int) -> torch.Tensor:
    """Insert ``s - 1`` zeros between the entries along ``axis``."""
    if s == 1:
        return t
    n = t.shape[axis]
    shape = list(t.shape)
    shape[axis] = (n - 1) * s + 1
    idx = torch.arange(n, device=t.device) * s
    return t.new_zeros(shape).index_copy(axis, idx, t)


def _crop(t: torch.Tensor, axis: int, pads: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Apply negative paddings as crops; return the tensor and the remaining (>= 0) paddings."""
    a, b = pads
    if a < 0:
        t = t.narrow(axis, -a, t.shape[axis] + a)
    if b < 0:
        t = t.narrow(axis, 0, t.shape[axis] + b)
    return t, (max(a, 0), max(b, 0))


def _fold(t: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """Circular fold of ``axis`` onto ``size`` entries, centred as the CIRCULAR padding."""
    n = t.shape[axis]
    if n == size:
        return t
    start = (n - size) // 2
    idx = (torch.arange(n, device=t.device) - start) % size
    shape = list(t.shape)
    shape[axis] = size
    return t.new_zeros(shape).index_add(axis, idx, t)


class _ConvTransposeModule(nn.Module):
    """Dilate, pad (or crop), stride-1 convolution, fold for CIRCULAR; NTK or standard scaling."""

    def __init__(
        self, c_in: int, c_out: int, filt: tuple[int, ...], strides: tuple[int, ...], pads: list[tuple[int, int]],
        fold: tuple[int, ...] | None, W_std: Any, b_std: Any, parameterization: str,
        generator: Any, dtype: Any, device: Any,
    ) -> None:
        super().__init__()
        has_bias = _init.check_stds(W_std, b_std, parameterization)
        self.filt, self.strides, self.pads, self.fold = filt, strides, pads, fold
        fan_in = c_in * int(torch.tensor(filt).prod())
        kw = {"dtype": dtype, "device": device}
        self.weight = nn.Parameter(torch.empty(c_out, c_in, *filt, **kw))
        self.bias = nn.Parameter(torch.empty(c_out, **kw)) if has_bias else None
        self.weight_scale, self.bias_scale = _init.scales(W_std, b_std, fan_in, parameterization)
        _init.reset(self.weight, self.bias, W_std, b_std, fan_in, parameterization, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for a, s in enumerate(self.strides):
            x = _dilate(x, 2 + a, s)
        flat = [p for pair in reversed(self.pads) for p in pair]  # F.pad: last axis first; < 0 crops
        if any(flat):
            x = F.pad(x, flat)
        conv = F.conv1d if len(self.filt) == 1 else F.conv2d
        bias = None if self.bias is None else self.bias * self.bias_scale
        y = conv(x, self.weight * self.weight_scale)
        if self.fold is not None:
            for a, size in enumerate(self.fold):
                y = _fold(y, 2 + a, size)
        return y if bias is None else y + bias.reshape(-1, *([1] * len(self.filt)))


class ConvTranspose(_ConvBase):
    """Transposed convolution with ``out_chan`` channels over ``(C, L)`` or ``(C, H, W)`` inputs.

    Args:
        out_chan: channels of the finite layer.
        filter_shape: ``(k,)`` or ``(kh, kw)`` (an int: the same on every axis).
        strides: per axis, default 1 (the upsampling factor).
        padding: ``"VALID"``, ``"SAME"`` or ``"CIRCULAR"`` (any case), as neural-tangents'
            ``ConvTranspose`` (see the module docstring), or explicit per-axis
            ``((a0, b0), (a1, b1))`` zeros before/after the dilated input (negative: crop), which
            is how ``torch.nn.ConvTranspose2d(padding=p, output_padding=q)`` reads:
            ``a = k - 1 - p``, ``b = k - 1 - p + q``.
        W_std, b_std, parameterization: as :class:`~torchntk.layers.Dense`.

    Example:
        >>> from torchntk import layers as L
        >>> spec = L.serial(L.ConvTranspose(64, 3, strides=2, padding="SAME"), L.Relu(), L.Flatten(), L.Dense(1))
        >>> spec.kernel(torch.randn(2, 1, 4, 4)).ntk.shape
        torch.Size([2, 2])
    """

    supports = Supports(masks=False, features="conv_transpose")

    def __init__(
        self,
        out_chan: int,
        filter_shape: int | Sequence[int],
        strides: int | Sequence[int] | None = None,
        padding: str | Sequence[Sequence[int]] = "VALID",
        W_std: Any = 1.0,
        b_std: Any = None,
        parameterization: str = "ntk",
    ) -> None:
        super().__init__(out_chan, filter_shape, strides, "VALID", W_std, b_std, parameterization)
        if isinstance(padding, str):
            self.padding: Any = check_padding(padding, "ConvTranspose")
        else:
            try:
                self.padding = tuple((int(a), int(b)) for a, b in padding)
            except (TypeError, ValueError):
                raise InvalidArgumentError(
                    f"ConvTranspose: `padding` must be 'VALID', 'SAME', 'CIRCULAR' or ((a, b), ...) pairs, got {padding!r}"
                ) from None

    def _geometry(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], list[tuple[int, int]], tuple[int, ...]]:
        """``(filter, strides, pads, output sizes)`` for a per-sample input shape."""
        nsp = len(shape) - 1
        if nsp == 0:
            raise SpecError(f"ConvTranspose needs spatial data (C, L) or (C, H, W), but its input is flat (shape {shape})")
        filt = self.filter_shape * nsp if len(self.filter_shape) == 1 else self.filter_shape
        strides = self.strides or (1,)
        strides = strides * nsp if len(strides) == 1 else strides
        if len(filt) != nsp or len(strides) != nsp:
            raise SpecError(f"ConvTranspose: filter {filt} / strides {strides} do not match {nsp}-D input of shape {shape}")
        if isinstance(self.padding, str):
            pads = [transpose_pads(k, s, self.padding) for k, s in zip(filt, strides)]
        else:
            if len(self.padding) != nsp:
                raise SpecError(f"ConvTranspose: {len(self.padding)} padding pairs for {nsp}-D input of shape {shape}")
            pads = list(self.padding)
        sizes = []
        for n, k, s, (a, b) in zip(shape[1:], filt, strides, pads):
            out = (n - 1) * s + 1 + a + b - k + 1
            if out < 1:
                raise SpecError(f"ConvTranspose: padding {(a, b)} leaves no output on an axis of size {n}")
            sizes.append(n * s if self.padding == "CIRCULAR" else out)
        return filt, strides, pads, tuple(sizes)

    def output_shape(self, input_shape: Shapes) -> Shapes:
        shape = single(self, input_shape)
        return (self.out_chan, *self._geometry(shape)[3])

    def kernel_rule(self, k: Kernel) -> Kernel:
        filt, strides, pads, sizes = self._geometry(k.shape)
        full = k.full_spatial

        def apply(t: torch.Tensor | None, lead: int) -> torch.Tensor | None:
            if t is None:
                return None
            for a, (w, s, p, size) in enumerate(zip(filt, strides, pads, sizes)):
                axes = (lead + 2 * a, lead + 2 * a + 1) if full else (lead + a,)
                for ax in axes:
                    t = _dilate(t, ax, s)
                    t, p_ax = _crop(t, ax, p)
                if full:
                    t = _spatial.pair_window_mean(t, axes[0], w, 1, p_ax, False)
                else:
                    t = _spatial.window_mean(t, axes[0], w, 1, p_ax, False)
                if self.padding == "CIRCULAR":
                    for ax in axes:
                        t = _fold(t, ax, size)
            return t

        k = k.replace(nngp=apply(k.nngp, 2), ntk=apply(k.ntk, 2), cov1=apply(k.cov1, 1), cov2=apply(k.cov2, 1))
        fan_in = k.shape[0] * int(torch.tensor(filt).prod())
        return affine(k, self.W_std, self.b_std, fan_in, self.parameterization, out_shape=(self.out_chan, *sizes))

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        shape = single(self, input_shape)
        filt, strides, pads, sizes = self._geometry(shape)
        fold = sizes if self.padding == "CIRCULAR" else None
        return _ConvTransposeModule(
            shape[0], self.out_chan, filt, strides, pads, fold, self.W_std, self.b_std, self.parameterization,
            generator, dtype, device,
        )
