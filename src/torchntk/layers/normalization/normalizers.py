"""``LayerNorm`` and ``Dropout`` of the spec.

LayerNorm over the channel axis (and optionally spatial axes) of Gaussian pre-activations: at
infinite width the mean over channels vanishes and the variance over channels concentrates on
the kernel's diagonal, so the layer divides the kernel by the (deterministic) norms:

    Sigma'(x, x')[p, p'] = Sigma[p, p'] / sqrt((eps + v(x)[p]) (eps + v(x')[p'])),  Theta' likewise,

with ``v(x)[p] = Sigma(x, x)[p, p]``, averaged over the normalized spatial axes if any (over
the kept positions only, with a padding mask; masks then need every spatial axis normalized).

Dropout with drop probability ``rate`` (PyTorch's convention: keep ``1 - rate``; note that
neural-tangents' ``rate`` is the *keep* probability). In ``mode="train"`` the kernel is the
expectation over independent masks: an input with itself sees the same mask, so the entries
``Sigma(x_i, x_i)`` at the same pixel are multiplied by ``1 / (1 - rate)`` (``cov1``, ``cov2``,
and the diagonal of ``nngp``/``ntk`` when ``x2`` is ``x1``); pairs of different inputs (or of
different pixels) are unchanged. The finite module is ``nn.Dropout(rate)``, active only in
``.train()`` mode. In ``mode="test"`` both the kernel and the module are the identity.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..._checks import check_choice, check_hyper, check_ints, check_number
from ...errors import InvalidArgumentError, SpecError
from .. import _masking, _spatial
from .._core.protocol import Layer, Shapes, single
from .._side import SideModule
from .._core.kernel import Kernel
from .._core.supports import Supports

__all__ = ["LayerNorm", "Dropout"]


class _LayerNormModule(SideModule):
    def __init__(self, dims: tuple[int, ...], eps: float) -> None:
        super().__init__()
        self.dims, self.eps = dims, eps

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, pattern: Any = None) -> torch.Tensor:
        if mask is not None and len(self.dims) > 1:  # statistics over the kept positions
            mean, var = _masking.module_norm_stats(x, mask, self.dims)
        else:
            mean = x.mean(dim=self.dims, keepdim=True)
            var = x.var(dim=self.dims, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, eps={self.eps}"


class LayerNorm(Layer):
    """``(x - mean) / sqrt(var + eps)`` over ``axis`` (no learned scale/shift).

    Args:
        axis: axes of the batched tensor ``(N, C, *spatial)`` to normalize over; must contain
            the channel axis 1 (the default), may add spatial axes (2, 3 or negative indices).
        eps: added to the variance (a number or a 0-dim tensor).
    """

    supports = Supports(masks=True, features="layer_norm")

    def __init__(self, axis: int | Sequence[int] = 1, eps: float = 1e-12) -> None:
        axes = check_ints("axis", axis, who="LayerNorm")
        if not axes:
            raise InvalidArgumentError(f"LayerNorm: `axis` must name at least one axis, got {axis!r}")
        eps = check_hyper("eps", eps, minimum=0.0, who="LayerNorm")
        self.axis, self.eps = axes, eps

    def __repr__(self) -> str:
        return f"LayerNorm(axis={self.axis}, eps={self.eps})"

    def _dims(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        rank = len(shape) + 1
        dims = set()
        for a in self.axis:
            if not -rank <= a < rank:
                raise SpecError(f"{self!r}: axis {a} is out of range for inputs of shape (N, {', '.join(map(str, shape))})")
            dims.add(a % rank)
        if 0 in dims:
            raise SpecError(f"{self!r}: cannot normalize over the batch axis 0")
        if 1 not in dims:
            raise SpecError(
                f"{self!r}: the normalization must include the channel axis 1 to have an infinite-width limit"
            )
        return tuple(sorted(dims))

    def output_shape(self, input_shape: Shapes) -> Shapes:
        shape = single(self, input_shape)
        self._dims(shape)
        return shape

    def kernel_rule(self, k: Kernel) -> Kernel:
        dims = self._dims(k.shape)
        if not k.is_gaussian:
            raise SpecError(
                f"{self!r} needs Gaussian pre-activations (zero mean over channels at infinite width): "
                "put it after a Dense/Conv layer (or a sum of such branches), not after a nonlinearity"
            )
        spatial = [d - 2 for d in dims if d >= 2]  # spatial axis indices 0..nsp-1
        full, nsp = k.full_spatial, k.spatial_ndim
        eps = self.eps
        m1, m2 = k.masks
        masked = spatial and (m1 is not None or m2 is not None)
        if masked and len(spatial) != nsp:
            raise SpecError(f"{self!r}: with a padding mask, normalize over every spatial axis or none")
        keep1 = None if m1 is None else _masking.keep_of(m1, k.nngp.dtype)
        keep2 = None if m2 is None else _masking.keep_of(m2, k.nngp.dtype)

        def norm(q: torch.Tensor, first: int, step: int, keep: Any = None, lead: int = 0, batch: int = 0) -> torch.Tensor:
            q = q + eps
            if spatial and keep is not None:
                return _masking.spatial_mean(q, keep, lead, batch, full and (first - lead) % 2 == 1, full)
            if spatial:
                q = q.mean(dim=tuple(first + step * a for a in spatial), keepdim=True)
            return q

        q11, q22 = _spatial.pair_variances(k)
        step = 2 if full else 1
        d12 = torch.sqrt(norm(q11, 2, step, keep1, 2, 0) * norm(q22, 3 if full else 2, step, keep2, 2, 1))

        def self_norm(c: torch.Tensor, keep: Any) -> torch.Tensor:
            a, b = _spatial.self_variances(c, full, nsp)
            return torch.sqrt(norm(a, 1, step, keep, 1, 0) * norm(b, 2 if full else 1, step, keep, 1, 0))

        return k.replace(
            nngp=k.nngp / d12,
            ntk=None if k.ntk is None else k.ntk / d12,
            cov1=k.cov1 / self_norm(k.cov1, keep1),
            cov2=None if k.cov2 is None else k.cov2 / self_norm(k.cov2, keep2),
            is_input=False,
        )

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        return _LayerNormModule(self._dims(single(self, input_shape)), self.eps)


def _pixel_eye(k: Kernel, n: int | None, like: torch.Tensor) -> torch.Tensor:
    """Indicator of equal pixels (and of equal inputs when ``n`` is given), broadcastable to ``like``."""
    kw = {"dtype": like.dtype, "device": like.device}
    out = torch.eye(n, **kw) if n is not None else torch.ones(1, **kw)
    if k.full_spatial:
        for size in k.shape[1:]:
            out = out[..., None, None] * torch.eye(size, **kw)
    return out.reshape(out.shape + (1,) * (like.ndim - out.ndim))


class Dropout(Layer):
    """Dropout with drop probability ``rate`` (see the module docstring for the kernel).

    Args:
        rate: probability of zeroing a unit, in ``[0, 1)``.
        mode: ``"train"`` (the kernel of the randomly masked network, as neural-tangents) or
            ``"test"`` (identity).
    """

    supports = Supports(masks=True, features="dropout")

    def __init__(self, rate: float, mode: str = "train") -> None:
        self.rate = check_number("rate", rate, minimum=0.0, below=1.0, who="Dropout")
        self.mode = check_choice("mode", mode, ("train", "test"), any_case=True, who="Dropout")

    def __repr__(self) -> str:
        return f"Dropout({self.rate}, mode={self.mode!r})"

    def output_shape(self, input_shape: Shapes) -> Shapes:
        return single(self, input_shape)

    def kernel_rule(self, k: Kernel) -> Kernel:
        if self.mode == "test" or self.rate == 0:
            return k
        if k.is_input:
            raise SpecError(f"{self!r} cannot be applied to the network's input; put a Dense/Conv layer first")
        f = 1.0 / (1.0 - self.rate)

        def scale_self(c: torch.Tensor | None) -> torch.Tensor | None:
            if c is None:
                return None
            return c * (1 + (f - 1) * _pixel_eye(k, None, c))

        def scale_pair(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None or not k.same_inputs:
                return t
            return t * (1 + (f - 1) * _pixel_eye(k, t.shape[0], t))

        return k.replace(
            nngp=scale_pair(k.nngp), ntk=scale_pair(k.ntk), cov1=scale_self(k.cov1), cov2=scale_self(k.cov2),
            is_gaussian=False,
        )

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        return nn.Dropout(self.rate) if self.mode == "train" else nn.Identity()
