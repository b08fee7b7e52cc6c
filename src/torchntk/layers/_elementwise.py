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

from ..errors import SpecError
from . import _spatial
from ._base import Layer, Shapes, single
from .kernel import Kernel


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

    has_ntk: bool = True

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        """The activation of the finite network (elementwise)."""
        raise NotImplementedError

    def rule(
        self, q11: torch.Tensor, q12: torch.Tensor, q22: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(E[phi(u) phi(v)], E[phi'(u) phi'(v)])`` for the covariance ``[[q11, q12], [q12, q22]]``."""
        raise NotImplementedError

    # -- the protocol --------------------------------------------------------------------

    def output_shape(self, input_shape: Shapes) -> Shapes:
        return single(self, input_shape)

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        return _Activation(self)

    def _self_cov(self, cov: torch.Tensor, k: Kernel) -> torch.Tensor:
        q11, q22 = _spatial.self_variances(cov, k.full_spatial, k.spatial_ndim)
        return self.rule(q11, cov, q22)[0]

    def kernel_rule(self, k: Kernel) -> Kernel:
        if isinstance(k, list):
            single(self, [x.shape for x in k])
        if not k.is_gaussian:
            where = "the network's input" if k.is_input else "a non-Gaussian pre-activation"
            raise SpecError(
                f"{self!r} is applied to {where}; the infinite-width rule needs Gaussian "
                "pre-activations: put a Dense or Conv layer before this nonlinearity"
            )
        q11, q22 = _spatial.pair_variances(k)
        sigma, sdot = self.rule(q11, k.nngp, q22)
        ntk = None
        if self.has_ntk and sdot is not None and k.ntk is not None:
            ntk = k.ntk * sdot
        return k.replace(
            nngp=sigma,
            ntk=ntk,
            cov1=self._self_cov(k.cov1, k),
            cov2=None if k.cov2 is None else self._self_cov(k.cov2, k),
            is_gaussian=False,
            is_input=False,
        )
