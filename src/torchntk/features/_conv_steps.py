"""Feature rules of ``ConvTranspose`` and ``ConvLocal`` (private).

``ConvTranspose`` (see :mod:`torchntk.layers.conv_transpose`) is a stride-1 convolution of the
dilated, padded input ``U`` (``U[s i] = x[i]``, zeros between), so its features are Conv's
rule applied to the dilated features: ``phi_U[s i] = phi[i]`` and ``phi_U = 0`` elsewhere
(the zeros of ``U`` have zero features), padded (negative paddings crop), then the window
``[phi_U(o + d)]_d / sqrt(k)``, compressed, and the affine rule:

    <window(o), window(o')> = (1/k) sum_d pad(U_Sigma)(o + d, o' + d) = A[Sigma](o, o').

CIRCULAR padding folds the VALID output onto ``n s`` pixels before the bias (pixel ``o``
gathers the pixels ``o + c + m n s``): the linear part of the fold is a sum of windows with the
same weights, so its features are the sums of the windows' features (the same fold).

``ConvLocal`` has independent weights and biases at every output position, so two different
positions are uncorrelated, ``Sigma'(o, o') = Theta'(o, o') = 0`` for ``o != o'``, and one
position is Conv's. Its features are Conv's, made orthogonal across positions in expectation:

    phi'(o) = s_o * (H D v(o)) / sqrt(d_p)

with ``v(o)`` Conv's features at ``o`` (zero-padded to ``d_p``, the power of two at least
the map's width ``m'`` and the features' width), ``H D / sqrt(d_p)`` one shared randomized
Hadamard rotation (orthogonal: inner products at one position are kept exactly; it spreads the
mass of every vector over all ``d_p`` columns, so that the bias column is no exception) and ``s_o``
independent random signs per position: ``E[<phi'(o), phi'(o')>] = 0`` for ``o != o'``, with a
standard deviation ``|v(o)| |v(o')| / sqrt(d_p)`` of the order of the map's other errors.
"""

from __future__ import annotations

import math

import torch

from ..layers.conv.transpose import _crop, _dilate, _fold
from . import _steps as S
from ._sketch import _pad, _signs, hadamard, next_pow2

Tensor = torch.Tensor


class Dilate(S.Step):
    """A transposed convolution's window on channel-last features: dilate by the strides, pad
    or crop by ``pads``, the stride-1 window of ``filt`` (``/ sqrt(k)``), then the CIRCULAR
    fold onto ``fold`` pixels when given."""

    def __init__(self, strides: tuple[int, ...], pads: list[tuple[int, int]], filt: tuple[int, ...],
                 fold: tuple[int, ...] | None) -> None:
        self.strides, self.pads, self.window, self.fold = strides, pads, filt, fold

    def __call__(self, t: Tensor) -> Tensor:
        rest = []
        for a, (s, p) in enumerate(zip(self.strides, self.pads)):
            t = _dilate(t, 1 + a, s)
            t, left = _crop(t, 1 + a, p)
            rest.append(left)
        t = S.Window(self.window, (1,) * len(self.window), rest, False)(t)
        if self.fold is not None:
            for a, size in enumerate(self.fold):
                t = _fold(t, 1 + a, size)
        return t

    def peak(self, d: S.Dims) -> int:
        """Feature entries per input of the widest intermediate (the dilated, windowed one)."""
        pixels = 1
        for n, s, (a, b), k in zip(d.shape[1:], self.strides, self.pads, self.window):
            pixels *= max((n - 1) * s + 1 + a + b, 1)
        return pixels * (d.dphi + (d.dpsi or 0)) * math.prod(self.window)


class Local(S.Step):
    """``ConvLocal``: Conv's step, then a shared rotation and independent signs per position."""

    def __init__(self, conv: S.Conv, width: int, gen: torch.Generator) -> None:
        self.inner, self.window = conv, conv.window
        d = conv.dims
        out = d.shape[1:]
        self.dp_phi = next_pow2(max(d.dphi, width))
        self.rot_phi = _signs(gen, self.dp_phi)
        self.pos_phi = _signs(gen, *out, self.dp_phi)
        self.dp_psi = None if d.dpsi is None else next_pow2(max(d.dpsi, width))
        self.rot_psi = None if d.dpsi is None else _signs(gen, self.dp_psi)
        self.pos_psi = None if d.dpsi is None else _signs(gen, *out, self.dp_psi)
        self.dims = S.Dims(d.shape, self.dp_phi, self.dp_psi, d.gaussian, d.is_input)
        self.peak = max(conv.peak, self.dims.entries)

    def to(self, dtype: torch.dtype, device: torch.device, precision: str = "full") -> "Local":
        out = super().to(dtype, device, precision)
        for name in ("rot_phi", "pos_phi", "rot_psi", "pos_psi"):
            v = getattr(self, name)
            setattr(out, name, None if v is None else v.to(dtype=dtype, device=device))
        return out

    @staticmethod
    def _decorrelate(t: Tensor, dp: int, rot: Tensor, pos: Tensor) -> Tensor:
        return hadamard(_pad(t, dp) * rot.to(t.dtype)) * pos.to(t.dtype) * (1.0 / math.sqrt(dp))

    def __call__(self, s: S.State) -> S.State:
        out = self.inner(s)
        phi = self._decorrelate(out.phi, self.dp_phi, self.rot_phi, self.pos_phi)
        psi = None
        if out.psi is not None and self.dp_psi is not None:
            psi = self._decorrelate(out.psi, self.dp_psi, self.rot_psi, self.pos_psi)
        return S.State(phi, psi, out.gaussian, out.is_input)
