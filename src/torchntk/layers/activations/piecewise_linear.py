"""Piecewise-linear nonlinearities (arc-cosine kernels of degrees 0 and 1) and their rules.

``ABRelu`` (``a min(x, 0) + b max(x, 0)``), ``Relu``, ``LeakyRelu``, ``Abs`` and ``Sign``; notation
and conventions as in :mod:`torchntk.layers.activations.closed_forms`.

Example:
    >>> from torchntk import layers
    >>> spec = layers.serial(layers.Dense(512), layers.Relu(), layers.Dense(1))
    >>> spec.kernel(torch.randn(4, 3)).ntk.shape
    torch.Size([4, 4])
"""

from __future__ import annotations

import math

import torch

from ..._checks import is_one
from ._elementwise import ElementwiseLayer
from ._quadrature import angle
from ._scaling import _ldexp, _scaled, _variance_range
from .closed_forms import _parameter, _records_grad

__all__ = ["ABRelu", "Relu", "LeakyRelu", "Abs", "Sign"]

Tensor = torch.Tensor
_PI = math.pi



# -- piecewise-linear activations (arc-cosine kernels of degrees 0 and 1) ----------------


class ABRelu(ElementwiseLayer):
    """``phi(x) = a min(x, 0) + b max(x, 0)``: ReLU, leaky ReLU, |x| and the identity in one.

    Rule (arc-cosine kernels of degree 1 and 0, with ``s``, ``t`` as in the module docstring):

        sigma = ((a - b)^2 s + ((a^2 + b^2) pi - (a - b)^2 t) q12) / (2 pi)
        sdot  = ((a^2 + b^2) pi - (a - b)^2 t) / (2 pi)

    Example:
        >>> ABRelu(0.1, 1.0).rule(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0))[0]
        tensor(0.5050)
    """

    def __init__(self, a: float, b: float) -> None:
        self.a, self.b = _parameter("a", a), _parameter("b", b)

    def __repr__(self) -> str:
        return f"ABRelu(a={self.a}, b={self.b})"

    def fn(self, x: Tensor) -> Tensor:
        return self.a * torch.clamp(x, max=0) + self.b * torch.clamp(x, min=0)

    def rule(self, q11: Tensor, q12: Tensor, q22: Tensor) -> tuple[Tensor, Tensor]:
        in_range, positive = _variance_range(q11, q22)
        if not in_range:
            # positively homogeneous: sigma(4^k1 q11, 2^(k1+k2) q12, 4^k2 q22) = 2^(k1+k2) sigma,
            # sdot unchanged; the scaled covariance is in range (no overflow of q11 q22)
            a, b, d, k = _scaled(q11, q12, q22)
            sigma, sdot = self.rule(a, b, d)
            return _ldexp(sigma, k), sdot
        if not _records_grad(q11, q12, q22, self.a, self.b):
            return self._rule_no_grad(q11, q12, q22, positive)
        s, t = angle(q11, q12, q22)
        a, b = self.a, self.b
        if is_one(a, 0.0) and is_one(b, 1.0):  # the ReLU, written exactly as in CONVENTIONS section 2
            return (s + (_PI - t) * q12) / (2 * _PI), (_PI - t) / (2 * _PI)
        d2, sq = (a - b) ** 2, a * a + b * b
        sdot = (sq * _PI - d2 * t) / (2 * _PI)
        return d2 * s / (2 * _PI) + sdot * q12, sdot


    def _rule_no_grad(self, q11: Tensor, q12: Tensor, q22: Tensor, positive: bool) -> tuple[Tensor, Tensor]:
        """The same values as the autograd-safe path, in fewer passes over reused buffers.

        Each step rounds exactly as the safe path does (no fused multiply-adds), so the results
        are the same bits; only the ``torch.where`` guards that keep gradients finite are gone.
        ``positive``: whether every ``q11 q22`` product is > 0 (then ``s = 0`` and ``q12 = 0``
        never meet, and the angle needs no fix-up).
        """
        t = q12 * q12
        s = q11 * q22
        s = (s.sub_(t) if s.shape == t.shape else s - t).clamp_(min=0).sqrt_()  # sqrt(max(q11 q22 - q12^2, 0))
        t = torch.atan2(s, q12, out=t) if t.shape == s.shape else torch.atan2(s, q12)
        if not positive:  # atan2(0, 0) = 0, but the angle there is pi/2
            t.masked_fill_((s == 0) & (q12 == 0), _PI / 2)
        a, b = self.a, self.b
        if is_one(a, 0.0) and is_one(b, 1.0):  # the ReLU: sigma = (s + (pi - t) q12) / (2 pi), sdot = (pi - t) / (2 pi)
            u = t.neg_().add_(_PI)  # pi - t, rounded once (negation is exact)
            sigma = s.add_(u * q12).div_(2 * _PI) if s.shape == q12.shape else (s + u * q12).div_(2 * _PI)
            return sigma, u.div_(2 * _PI)
        d2, sq = (a - b) ** 2, a * a + b * b
        sdot = t.mul_(-d2).add_(sq * _PI).div_(2 * _PI)
        return s.mul_(d2).div_(2 * _PI).add_(sdot * q12), sdot


class Relu(ABRelu):
    """``phi(x) = max(x, 0)``: ``sigma = (s + (pi - t) q12) / (2 pi)``, ``sdot = (pi - t) / (2 pi)``.

    Example:
        >>> sigma, sdot = Relu().rule(torch.tensor(2.0), torch.tensor(0.0), torch.tensor(2.0))
        >>> round(float(sigma), 6), float(sdot)  # 2 / (2 pi), 1/4
        (0.31831, 0.25)
    """

    def __init__(self) -> None:
        super().__init__(0.0, 1.0)

    def __repr__(self) -> str:
        return "Relu()"

    def fn(self, x: Tensor) -> Tensor:
        return torch.relu(x)


class LeakyRelu(ABRelu):
    """``phi(x) = x`` for ``x >= 0`` and ``alpha x`` otherwise (``ABRelu(alpha, 1)``)."""

    def __init__(self, alpha: float) -> None:
        super().__init__(_parameter("alpha", alpha), 1.0)  # errors name `alpha`, not `a`
        self.alpha = self.a

    def __repr__(self) -> str:
        return f"LeakyRelu(alpha={self.alpha})"


class Abs(ABRelu):
    """``phi(x) = |x|`` (``ABRelu(-1, 1)``): ``sigma = (2 s + (pi - 2 t) q12) / pi``."""

    def __init__(self) -> None:
        super().__init__(-1.0, 1.0)

    def __repr__(self) -> str:
        return "Abs()"

    def fn(self, x: Tensor) -> Tensor:
        return torch.abs(x)


class Sign(ElementwiseLayer):
    """``phi(x) = sign(x)``: ``sigma = 1 - 2 t / pi`` (the degree-0 arc-cosine kernel).

    The derivative of ``sign`` is 0 almost everywhere and a Dirac delta at 0, so
    ``E[phi'(u) phi'(v)]`` is not a function. torchntk follows what autograd does in the
    finite network (``torch.sign`` back-propagates 0) and what neural-tangents does:
    ``sdot = 0``, so the NTK accumulated *before* a ``Sign`` is dropped and only the layers
    after it contribute (their ``Sigma`` terms). Monte Carlo estimates with
    :func:`torchntk.empirical_ntk` agree with this.
    """

    def fn(self, x: Tensor) -> Tensor:
        return torch.sign(x)

    def rule(self, q11: Tensor, q12: Tensor, q22: Tensor) -> tuple[Tensor, Tensor]:
        _, t = angle(q11, q12, q22, floor=True)  # near-duplicates: a PSD kernel (see angle)
        sigma = 1 - 2 * t / _PI
        return sigma, torch.zeros_like(sigma)
