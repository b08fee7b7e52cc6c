"""Any elementwise torch function as a nonlinearity of the spec, its rule by quadrature.

:class:`Elementwise` takes the kernel from given formulas (``nngp_fn``, ``d_nngp_fn``) or from
:func:`~torchntk.layers.activations._expectations.gaussian_expectations` (a Hermite series or 2-D
quadrature, ``phi'`` by autograd); :func:`ElementwiseNumerical` is neural-tangents' name of the
tensor-product Gauss-Hermite variant.
"""

from __future__ import annotations

from typing import Callable

import torch

from ...errors import InvalidArgumentError
from ..._checks import check_choice, check_int
from ._elementwise import ElementwiseLayer
from ._expectations import gaussian_expectations
from ._quadrature import METHODS

__all__ = ["Elementwise", "ElementwiseNumerical"]

Tensor = torch.Tensor



# -- any function ---------------------------------------------------------------------------

NngpFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class Elementwise(ElementwiseLayer):
    """Any elementwise torch function ``fn``, its kernel by quadrature or by given formulas.

    Args:
        fn: the activation (``torch.tanh``, ``torch.nn.functional.softplus``, ``torch.nn.SiLU()``,
            a lambda...). It must map a tensor to a tensor of the same shape, elementwise, and
            be differentiable by autograd.
        nngp_fn: optional closed form ``nngp_fn(cov12, var1, var2) = E[fn(u) fn(v)]``
            (neural-tangents' argument order).
        d_nngp_fn: optional ``E[fn'(u) fn'(v)]``, same signature. When ``nngp_fn`` is given but
            not ``d_nngp_fn``, it is ``d nngp_fn / d cov12`` by autograd (Price's theorem).
        method, degree: how the expectations are computed when ``nngp_fn`` is None:
            ``"auto"`` (default) uses, pair by pair, Mehler's Hermite series (fast, for smooth
            ``fn``) where it has converged and the polar quadrature otherwise (kinks at 0 and
            steep parts at the ends of its arcs), to 1e-6 of ``E|fn(u) fn(v)|`` for
            variances from 1e-4 to 1e4, with an ``AccuracyWarning`` where it cannot vouch for
            that (fast-oscillating ``fn`` at large variances); ``"series"`` (``degree``
            terms, default 256), ``"polar"`` (``4 degree^2`` points) or ``"hermite"``
            (tensor-product Gauss-Hermite, ``degree^2`` points, default 48) force one rule;
            see ``docs/activations.md``.

    Example:
        >>> from torchntk import layers
        >>> spec = layers.serial(layers.Dense(256), layers.Elementwise(torch.tanh), layers.Dense(1))
        >>> spec.kernel(torch.randn(3, 5)).nngp.shape
        torch.Size([3, 3])
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        nngp_fn: NngpFn | None = None,
        d_nngp_fn: NngpFn | None = None,
        *,
        method: str = "auto",
        degree: int | None = None,
    ) -> None:
        if not callable(fn):
            raise InvalidArgumentError(f"`fn` must be a callable Tensor -> Tensor, got {fn!r}")
        for name, f in (("nngp_fn", nngp_fn), ("d_nngp_fn", d_nngp_fn)):
            if f is not None and not callable(f):
                raise InvalidArgumentError(f"`{name}` must be None or a callable, got {f!r}")
        if d_nngp_fn is not None and nngp_fn is None:
            raise InvalidArgumentError("`d_nngp_fn` needs `nngp_fn` too")
        method = check_choice("method", method, METHODS, any_case=True, who="Elementwise")
        degree = check_int("degree", degree, minimum=2, allow_none=True, who="Elementwise")
        self._fn, self.nngp_fn, self.d_nngp_fn = fn, nngp_fn, d_nngp_fn
        self.method, self.degree = method, degree

    def __repr__(self) -> str:
        name = getattr(self._fn, "__name__", None) or repr(self._fn)
        return f"Elementwise({name})"

    def fn(self, x: Tensor) -> Tensor:
        return self._fn(x)

    def rule(self, q11: Tensor, q12: Tensor, q22: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.nngp_fn is None:
            return gaussian_expectations(self._fn, q11, q12, q22, method=self.method, degree=self.degree)
        if self.d_nngp_fn is not None:
            return self.nngp_fn(q12, q11, q22), self.d_nngp_fn(q12, q11, q22)
        with torch.enable_grad():
            keep = q12.requires_grad
            leaf = q12 if keep else q12.detach().requires_grad_(True)
            sigma = self.nngp_fn(leaf, q11, q22)
            (sdot,) = torch.autograd.grad(sigma.sum(), leaf, create_graph=keep)
        return (sigma if keep else sigma.detach()), sdot


def ElementwiseNumerical(fn: Callable[[Tensor], Tensor], deg: int = 25) -> Elementwise:  # noqa: N802
    """neural-tangents' name: ``Elementwise(fn, method="hermite", degree=deg)``."""
    return Elementwise(fn, method="hermite", degree=deg)
