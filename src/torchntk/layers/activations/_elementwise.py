"""Base class of every elementwise nonlinearity of the spec (private).

A subclass gives the finite network's activation ``fn(x)`` and the Gaussian expectations

    sigma = E[phi(u) phi(v)],   sdot = E[phi'(u) phi'(v)],   (u, v) ~ N(0, [[q11, q12], [q12, q22]])

as ``rule(q11, q12, q22) -> (sigma, sdot)`` on tensors that broadcast together. The base class
applies it to a :class:`~torchntk.layers.Kernel` in any layout:

    nngp' = sigma(q11, nngp, q22),   ntk' = ntk * sdot(q11, nngp, q22),
    cov1' = sigma(q11, cov1, q11)    (and cov2' likewise)

where ``q11``/``q22`` are the variances of the two points (of the two pixels of each pixel pair).
The pre-activation must be Gaussian (a Dense or Conv layer before the nonlinearity).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..._memory import cache_entries
from ...errors import NonFiniteError, SpecError, UnsupportedLayerError
from .. import _spatial
from .._core.protocol import Layer, Shapes, single
from .._core.kernel import Kernel
from .._core.supports import Supports


# Entries of the kernel per slice of rows that the rule gets at once without autograd (its
# few temporaries then fit in a processor cache: a large speed-up over memory-bound passes):
# ``cache_entries()``, 2^15 unless TORCHNTK_CACHE_BYTES says otherwise.


def _chunked(q11: torch.Tensor, q12: torch.Tensor, q22: torch.Tensor, ntk: torch.Tensor | None) -> bool:
    """Whether to apply the rule slice by slice: large kernels, no autograd, rows of q11 aligned."""
    if q12.numel() <= 2 * cache_entries() or q12.ndim < 2:
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q11, q12, q22, ntk)):
        return False
    return q11.shape[0] == q12.shape[0] and q22.shape[0] == 1 and (ntk is None or ntk.shape == q12.shape)


def _finite(t: torch.Tensor | None) -> bool:
    """Whether every entry of ``t`` is finite (``None``: True); one sum in the common case."""
    if t is None or t.numel() == 0:
        return True
    t = t.detach()
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


class _Activation(nn.Module):
    """The finite network's activation: ``layer.fn`` applied elementwise."""

    def __init__(self, layer: "ElementwiseLayer") -> None:
        super().__init__()
        self._layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._layer.fn(x)

    def extra_repr(self) -> str:
        return repr(self._layer)


class ElementwiseLayer(Layer):
    """A nonlinearity ``phi`` applied to every unit; subclasses define ``fn`` and ``rule``.

    Attributes:
        has_ntk: whether ``rule`` returns a usable ``sdot`` (False for a ``phi`` without a
            derivative, e.g. ``Sign``: the kernel then has ``ntk=None``).

    Example (a ReLU written from scratch):
        >>> import math
        >>> class MyRelu(ElementwiseLayer):
        ...     def fn(self, x):
        ...         return torch.relu(x)
        ...     def rule(self, q11, q12, q22):
        ...         s = torch.sqrt(torch.clamp(q11 * q22 - q12**2, min=0))
        ...         t = torch.atan2(s, q12)
        ...         return (s + (math.pi - t) * q12) / (2 * math.pi), (math.pi - t) / (2 * math.pi)
    """

    supports = Supports(masks=True, features="elementwise")

    has_ntk: bool = True

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        """The activation of the finite network (elementwise)."""
        raise UnsupportedLayerError(f"{type(self).__name__} defines no activation fn")

    def rule(
        self, q11: torch.Tensor, q12: torch.Tensor, q22: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(E[phi(u) phi(v)], E[phi'(u) phi'(v)])`` for the covariance ``[[q11, q12], [q12, q22]]``."""
        raise UnsupportedLayerError(f"{type(self).__name__} defines no kernel rule")

    # -- the protocol --------------------------------------------------------------------

    def output_shape(self, input_shape: Shapes) -> Shapes:
        return single(self, input_shape)

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        return _Activation(self)

    def _rows_in_cache(
        self, q11: torch.Tensor, q12: torch.Tensor, q22: torch.Tensor, ntk: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``rule`` applied to slices of rows small enough for the rule's temporaries to stay in
        the processor's cache (no autograd; elementwise, so the values are the same)."""
        sigma = torch.empty_like(q12)
        ntk_out = None if ntk is None else torch.empty_like(ntk)
        rows = max(1, cache_entries() // max(1, q12[0].numel()))
        for i in range(0, q12.shape[0], rows):
            j = min(i + rows, q12.shape[0])
            sig, sdot = self.rule(q11[i:j], q12[i:j], q22)
            sigma[i:j] = sig
            if ntk_out is not None:
                if sdot is None:
                    ntk_out = None
                else:
                    torch.mul(ntk[i:j], sdot, out=ntk_out[i:j])
        return sigma, ntk_out

    def _self_cov(self, cov: torch.Tensor, k: Kernel) -> torch.Tensor:
        q11, q22 = _spatial.self_variances(cov, k.full_spatial, k.spatial_ndim)
        return self.rule(q11, cov, q22)[0]

    def _mixture(self, k: Kernel) -> Kernel:
        """After a concatenation of Gaussian branches: the rule on each branch's kernel, mixed with
        the branches' channel fractions (each channel is Gaussian with its own branch's covariance)."""
        outs = [(w, self.kernel_rule(part)) for w, part in k.parts]

        def mix(field: str) -> torch.Tensor | None:
            vals = [(w, getattr(o, field)) for w, o in outs]
            if any(v is None for _, v in vals):
                return None
            return sum((w * v for w, v in vals[1:]), vals[0][0] * vals[0][1])

        return k.replace(nngp=mix("nngp"), ntk=mix("ntk"), cov1=mix("cov1"), cov2=mix("cov2"),
                         is_gaussian=False, is_input=False)

    def _self_covs(self, k: Kernel) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(cov1', cov2')``; both batches in one call of the rule when they are small (the
        rule is elementwise: the values are those of two calls, with half the calls' overhead)."""
        if k.cov2 is None:
            return self._self_cov(k.cov1, k), None
        n1 = k.cov1.shape[0]
        if k.cov1.numel() + k.cov2.numel() > cache_entries() or k.cov1.shape[1:] != k.cov2.shape[1:]:
            return self._self_cov(k.cov1, k), self._self_cov(k.cov2, k)
        both = self._self_cov(torch.cat((k.cov1, k.cov2)), k)
        return both[:n1], both[n1:]

    def kernel_rule(self, k: Kernel) -> Kernel:
        if isinstance(k, list):
            single(self, [x.shape for x in k])
        if not k.is_gaussian and k.parts is not None:
            return self._mixture(k)
        if not k.is_gaussian:
            where = "the network's input" if k.is_input else "a non-Gaussian pre-activation"
            raise SpecError(
                f"{self!r} is applied to {where}; the infinite-width rule needs Gaussian "
                "pre-activations: put a Dense or Conv layer before this nonlinearity"
            )
        q11, q22 = _spatial.pair_variances(k)
        for q in (q11, q22):
            if q.numel() and float(q.detach().max()) == float("inf"):
                raise NonFiniteError(
                    f"{self!r}: a pre-activation variance is inf (beyond {q.dtype}'s range, "
                    f"{torch.finfo(q.dtype).max:.3g}): the inputs (or the weights) are too large for the "
                    "kernel to be represented; rescale the inputs"
                )
        with_ntk = self.has_ntk and k.ntk is not None
        if _chunked(q11, k.nngp, q22, k.ntk):
            sigma, ntk = self._rows_in_cache(q11, k.nngp, q22, k.ntk if with_ntk else None)
        else:
            sigma, sdot = self.rule(q11, k.nngp, q22)
            ntk = None
            if with_ntk and sdot is not None:
                ntk = k.ntk * sdot
        cov1, cov2 = self._self_covs(k)
        if not all(_finite(t) for t in (sigma, ntk, cov1, cov2)) and all(_finite(t) for t in (k.nngp, k.ntk, k.cov1, k.cov2)):
            top = max(float(q.detach().abs().max()) for q in (q11, q22) if q.numel())
            raise NonFiniteError(
                f"{self!r}: the kernel after this layer is not representable in {sigma.dtype} (its "
                f"pre-activation variances reach {top:.3g}); rescale the inputs or the weights"
            )
        return k.replace(
            nngp=sigma,
            ntk=ntk,
            cov1=cov1,
            cov2=cov2,
            is_gaussian=False,
            is_input=False,
        )
