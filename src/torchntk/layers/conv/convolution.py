"""``Conv``: 1-D and 2-D convolutions of the spec (channels-first inputs).

For a filter of ``k`` pixels (per axis ``k_a``), stride ``s`` and padding ``pad`` (zeros for
SAME, wrap-around for CIRCULAR), the kernel first averages over the filter offsets ``d``, both
pixels of a pair moving together, then applies the affine rule of :mod:`.dense` with
``fan_in = C_in * k``:

    A[Sigma](p, p') = (1/k) sum_d pad(Sigma)(s p + d, s p' + d)
    Sigma' = W_std^2 A[Sigma] + b_std^2,   Theta' = W_std^2 A[Theta] + Sigma'    (NTK param.)
    Theta' = W_std^2 A[Theta] + fan_in A[Sigma] + [has bias]                   (standard)

In the per-pixel (diagonal) layout only ``p = p'`` is kept, and ``A`` is a plain window mean
of the per-pixel kernel; in the full layout it is a mean along the diagonal of each pair of
axes. Padding pixels are zeros of the finite network, so they contribute 0 to the sums while
``k`` still counts them (the finite layer divides by ``sqrt(C_in * k)`` everywhere).
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from ... import nn as tnn
from ..._checks import check_choice, check_int, check_ints, value_of
from ...errors import InvalidArgumentError, SpecError
from .. import _spatial
from .._core.protocol import Layer, Shapes, single
from ..dense.fully_connected import affine, check_affine_args
from .._core.kernel import Kernel
from .._core.supports import Supports

__all__ = ["Conv"]

PADDINGS = ("VALID", "SAME", "CIRCULAR")


def as_tuple(value: Any, name: str, who: str, allow_none: bool = False) -> tuple[int, ...] | None:
    """A tuple of positive ints from an int or a sequence (``None`` kept when allowed)."""
    if value is None and allow_none:
        return None
    out = check_ints(name, value, who=who)
    if not 1 <= len(out) <= 2 or any(v < 1 for v in out):
        raise InvalidArgumentError(f"{who}: `{name}` must hold 1 or 2 positive ints, got {value!r}")
    return out


def check_padding(padding: Any, who: str) -> str:
    """``padding`` (any case) as one of :data:`PADDINGS`."""
    return check_choice("padding", padding, PADDINGS, any_case=True, who=who)


def window_geometry(
    who: str, shape: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...] | None, padding: str
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Validate a window on a spatial input; return ``(window, strides, output spatial sizes)``.

    A 1-entry window or stride (an int) applies to every spatial axis.
    """
    nsp = len(shape) - 1
    if nsp == 0:
        raise SpecError(
            f"{who} needs spatial data (C, L) or (C, H, W) (channels first), but its input is flat "
            f"(shape {shape}); a Dense/Flatten/GlobalAvgPool layer came before it, or the inputs are (N, features)"
        )
    if len(window) == 1 and nsp > 1:  # an int filter/window: the same size on every axis
        window = window * nsp
    if len(window) != nsp:
        raise SpecError(f"{who}: a {len(window)}-D window {window} on {nsp}-D spatial input of shape {shape}")
    strides = strides if strides is not None else (1,) * nsp
    if len(strides) == 1 and nsp > 1:
        strides = strides * nsp
    if len(strides) != nsp:
        raise SpecError(f"{who}: `strides` {strides} must have {nsp} entries for input shape {shape}")
    out = []
    for n, k, s in zip(shape[1:], window, strides):
        if padding == "VALID" and k > n:
            raise SpecError(
                f"{who}: the window {window} is larger than the input's spatial shape {shape[1:]} with "
                "padding='VALID'; use a smaller filter or padding='SAME'"
            )
        out.append(_spatial.out_size(n, k, s, padding))
    return window, strides, tuple(out)


def window_mean_kernel(
    k: Kernel, window: tuple[int, ...], strides: tuple[int, ...], padding: str, *, paired: bool
) -> Kernel:
    """Average ``k`` over window offsets: jointly for both pixels (``paired``, a convolution)
    or independently for each pixel (pooling; full layout only)."""
    full = k.full_spatial
    circular = padding == "CIRCULAR"

    def apply(t: Any, lead: int) -> Any:
        if t is None:
            return None
        for a, (n, w, s) in enumerate(zip(k.shape[1:], window, strides)):
            pads = _spatial.axis_pads(n, w, s, padding)
            if not full:
                t = _spatial.window_mean(t, lead + a, w, s, pads, circular)
            elif paired:
                t = _spatial.pair_window_mean(t, lead + 2 * a, w, s, pads, circular)
            else:
                t = _spatial.window_mean(t, lead + 2 * a, w, s, pads, circular)
                t = _spatial.window_mean(t, lead + 2 * a + 1, w, s, pads, circular)
        return t

    return k.replace(nngp=apply(k.nngp, 2), ntk=apply(k.ntk, 2), cov1=apply(k.cov1, 1), cov2=apply(k.cov2, 1))


class _ConvBase(Layer):
    """The arguments, geometry and mask handling shared by :class:`Conv`, ``ConvTranspose`` and
    ``ConvLocal`` (private). The three are siblings, not subclasses of one another: their
    kernels differ, and each declares its own rules (``supports``)."""

    def __init__(
        self,
        out_chan: int,
        filter_shape: int | Sequence[int],
        strides: int | Sequence[int] | None = None,
        padding: str = "VALID",
        W_std: float = 1.0,
        b_std: float | None = None,
        parameterization: str = "ntk",
    ) -> None:
        who = type(self).__name__
        out_chan = check_int("out_chan", out_chan, minimum=1, who=who)
        W_std, b_std, parameterization = check_affine_args(who, W_std, b_std, parameterization)
        self.out_chan = out_chan
        self.filter_shape = as_tuple(filter_shape, "filter_shape", who)
        self.strides = as_tuple(strides, "strides", who, allow_none=True)
        self.padding = check_padding(padding, who)
        self.W_std, self.b_std, self.parameterization = W_std, b_std, parameterization

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.out_chan}, {self.filter_shape}, strides={self.strides}, padding={self.padding!r}, "
            f"W_std={self.W_std}, b_std={self.b_std}, parameterization={self.parameterization!r})"
        )

    def _geometry(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return window_geometry(type(self).__name__, shape, self.filter_shape, self.strides, self.padding)

    def output_shape(self, input_shape: Shapes) -> Shapes:
        shape = single(self, input_shape)
        return (self.out_chan, *self._geometry(shape)[2])

    def mask_out(self, mask: Any, input_shape: Shapes) -> Any:
        if mask is None:
            return None
        shape = single(self, input_shape)
        filt, strides = self._geometry(shape)[:2]  # (ConvTranspose's geometry holds more)
        per_position = all(f == 1 for f in filt) and all(s == 1 for s in strides)
        if per_position and tuple(self.output_shape(shape)[1:]) == tuple(shape[1:]):
            return mask
        raise SpecError(
            f"{self!r} mixes neighbouring positions and does not support padding masks (only 1x1 filters with "
            "stride 1 do); masks are honoured by GlobalSelfAttention, GlobalAvgPool, Flatten and LayerNorm"
        )


class Conv(_ConvBase):
    """Convolution with ``out_chan`` channels over 1-D ``(C, L)`` or 2-D ``(C, H, W)`` inputs.

    ``z = (W_std / sqrt(C_in * prod(filter_shape))) conv(pad(x), W) + b_std b`` (NTK
    parameterization; :class:`torchntk.nn.Conv1d`/:class:`~torchntk.nn.Conv2d` in the finite
    network).

    Args:
        out_chan: channels of the finite network's layer.
        filter_shape: ``(k,)`` or ``(kh, kw)`` (an int for 1-D).
        strides: per axis, default 1.
        padding: ``"VALID"``, ``"SAME"`` (TensorFlow's: output ``ceil(n / stride)``, the odd
            pixel after) or ``"CIRCULAR"`` (SAME with wrap-around).
        W_std, b_std, parameterization: as :class:`~torchntk.layers.Dense`.

    Example:
        >>> from torchntk import layers as L
        >>> spec = L.serial(L.Conv(64, (3, 3), padding="SAME"), L.Relu(), L.Flatten(), L.Dense(1))
        >>> spec.kernel(torch.randn(2, 1, 5, 5)).ntk.shape
        torch.Size([2, 2])
    """

    supports = Supports(masks=False, features="conv")

    def kernel_rule(self, k: Kernel) -> Kernel:
        filt, strides, sizes = self._geometry(k.shape)
        fresh = _prod(filt) > 1
        k = window_mean_kernel(k, filt, strides, self.padding, paired=True)
        fan_in = k.shape[0] * _prod(filt)
        return affine(
            k, self.W_std, self.b_std, fan_in, self.parameterization, out_shape=(self.out_chan, *sizes), fresh=fresh
        )

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        shape = single(self, input_shape)
        filt, strides, _ = self._geometry(shape)
        cls = tnn.Conv1d if len(shape) == 2 else tnn.Conv2d
        return cls(
            shape[0], self.out_chan, filt, strides, self.padding.lower(),
            value_of(self.W_std), value_of(self.b_std), self.parameterization,
            generator=generator, dtype=dtype, device=device,
        )


def _prod(values: tuple[int, ...]) -> int:
    out = 1
    for v in values:
        out *= v
    return out
