"""Three more nonlinearities of neural-tangents' ``stax``: ``RectifiedMonomial``,
``ExpNormalized`` and ``Gabor``, with rules that stay finite where the peer's divide by zero
(``Hermite`` is in :mod:`.polynomials`).

Same contract as :mod:`.activations`: ``rule(q11, q12, q22) -> (sigma, sdot)`` with
``sigma = E[phi(u) phi(v)]``, ``sdot = E[phi'(u) phi'(v)]`` for
``(u, v) ~ N(0, [[q11, q12], [q12, q22]])``; ``s = sqrt(max(q11 q22 - q12^2, 0))`` and
``t = atan2(s, q12)`` as there.

Example:
    >>> from torchntk import layers as L
    >>> spec = L.serial(L.Dense(512), L.RectifiedMonomial(2), L.Dense(1))
    >>> spec.kernel(torch.randn(3, 4)).ntk.shape
    torch.Size([3, 3])
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn
from numpy.polynomial import polynomial as P

from ..._checks import check_hyper, check_int
from ...errors import InvalidArgumentError
from .._core.protocol import Shapes, single
from ._elementwise import ElementwiseLayer
from ._quadrature import angle
from ._scaling import _in_range, _ldexp, _scaled

__all__ = ["RectifiedMonomial", "ExpNormalized", "Gabor"]

Tensor = torch.Tensor
_PI = math.pi


# -- RectifiedMonomial ----------------------------------------------------------------------


@lru_cache(maxsize=None)
def _arccos_polynomials(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (in ``c = cos t``) of ``A_n, B_n`` with ``J_n(t) = A_n(c) (pi - t) + B_n(c) sin t``.

    ``J_n`` is Cho and Saul's arc-cosine function; differentiating its defining formula gives
    ``J_{n+1} = (2n + 1) cos(t) J_n - sin(t) J_n'(t)``, hence
    ``A_{n+1} = (2n + 1) c A_n + (1 - c^2) A_n'`` and ``B_{n+1} = 2n c B_n + A_n + (1 - c^2) B_n'``
    from ``A_0 = 1, B_0 = 0``.
    """
    a, b = np.array([1.0]), np.array([0.0])
    one_minus_c2 = np.array([1.0, 0.0, -1.0])
    for n in range(degree):
        a_next = P.polyadd(P.polymulx(a) * (2 * n + 1), P.polymul(one_minus_c2, P.polyder(a)))
        b_next = P.polyadd(P.polyadd(P.polymulx(b) * (2 * n), a), P.polymul(one_minus_c2, P.polyder(b)))
        a, b = a_next, b_next
    return a, b


def _homogeneous(coef: np.ndarray, parity: int, q12: Tensor, p: Tensor) -> Tensor | float:
    """``sum_k coef[k] q12^k p^((parity - k) / 2)`` over the ``k`` of ``parity``'s parity."""
    out: Tensor | float = 0.0
    for k, c in enumerate(coef):
        if c == 0.0 or k > parity or (parity - k) % 2:
            continue
        out = out + float(c) * q12**k * p ** ((parity - k) // 2)
    return out


def _rectified_sigma(degree: int, q12: Tensor, p: Tensor, s: Tensor, t: Tensor) -> Tensor:
    """``E[relu(u)^n relu(v)^n] = (P_n (pi - t) + Q_n s) / (2 pi)``, polynomial in ``q12, p = q11 q22``.

    ``P_n = p^(n/2) A_n(q12 / sqrt(p))`` and ``Q_n = p^((n-1)/2) B_n(q12 / sqrt(p))`` are
    polynomials (``A_n`` has the parity of ``n``, ``B_n`` the other), so there is no division:
    the rule is finite at correlation 1 and at zero variance.
    """
    a, b = _arccos_polynomials(degree)
    first = _homogeneous(a, degree, q12, p) * (_PI - t)
    second = _homogeneous(b, degree - 1, q12, p) * s if degree > 0 else 0.0
    return (first + second) / (2 * _PI)


class RectifiedMonomial(ElementwiseLayer):
    """``phi(x) = x^degree`` for ``x >= 0`` and 0 otherwise (``degree = 1``: ReLU; 0: step).

    Rule (the arc-cosine kernel of Cho and Saul, with ``p = q11 q22``):

        sigma = (p^(n/2) A_n(cos t) (pi - t) + p^((n-1)/2) B_n(cos t) s) / (2 pi)
        sdot  = n^2 sigma_{n-1}        (Price's theorem; 0 for n = 0, as the step's derivative)

    ``A_n, B_n`` are polynomials (see :func:`_arccos_polynomials`); both terms are written as
    polynomials in ``q12`` and ``p``, so the rule is exact and finite on the diagonal
    (``t = 0``), where neural-tangents' formula divides by ``sin t``. On the diagonal
    ``sigma = (2n - 1)!! q^n / 2``.
    """

    def __init__(self, degree: int) -> None:
        self.degree = check_int("degree", degree, minimum=0, who="RectifiedMonomial")

    def __repr__(self) -> str:
        return f"RectifiedMonomial(degree={self.degree})"

    def fn(self, x: Tensor) -> Tensor:
        if self.degree == 0:
            return (x >= 0).to(x.dtype)
        return torch.clamp(x, min=0) ** self.degree

    def rule(self, q11: Tensor, q12: Tensor, q22: Tensor) -> tuple[Tensor, Tensor]:
        n = self.degree
        if not _in_range(q11, q22):
            # homogeneous: sigma(4^k1 q11, 2^(k1+k2) q12, 4^k2 q22) = 2^(n (k1+k2)) sigma, and
            # sdot = n^2 sigma_(n-1) scales as 2^((n-1)(k1+k2)); p = q11 q22 stays in range
            a, b, d, k = _scaled(q11, q12, q22)
            sigma, sdot = self.rule(a, b, d)
            return _ldexp(sigma, n * k), _ldexp(sdot, max(n - 1, 0) * k)
        s, t = angle(q11, q12, q22, floor=True)  # near-duplicates: a PSD kernel (see angle)
        p = q11 * q22
        sigma = _rectified_sigma(n, q12, p, s, t)
        if n == 0:
            return sigma, torch.zeros_like(sigma)
        return sigma, n * n * _rectified_sigma(n - 1, q12, p, s, t)


# -- ExpNormalized ----------------------------------------------------------------------------


class _ExpNormalizedModule(nn.Module):
    """``phi(u) = sqrt(v) exp(gamma shift / 2) exp(sqrt(gamma) u / sqrt(v) - gamma / 2)``,
    ``v`` the mean of ``u^2`` over the channels at each position (a per-sample normalization)."""

    def __init__(self, gamma: float | Tensor, shift: float | Tensor, tol: float) -> None:
        super().__init__()
        self.gamma, self.shift, self.tol = gamma, shift, tol

    def forward(self, x: Tensor) -> Tensor:
        gamma = torch.as_tensor(self.gamma, dtype=x.dtype, device=x.device)
        v = (x * x).mean(dim=1, keepdim=True).clamp(min=self.tol)
        root = torch.sqrt(v)
        return root * torch.exp(gamma * self.shift / 2 + torch.sqrt(gamma) * x / root - gamma / 2)

    def extra_repr(self) -> str:
        return f"gamma={float(self.gamma)}, shift={float(self.shift)}"


class ExpNormalized(ElementwiseLayer):
    """The "Gaussian normalized kernel" (Shankar et al. 2020, neural-tangents' ``ExpNormalized``).

    With ``v_i = max(q_ii, tol)`` (``tol = 1e-30``, the finite layer's clamp), ``r = sqrt(v1 v2)``,
    ``rho = q12 / r`` (clipped to ``[-1, 1]`` when ``do_clip``) and
    ``g = gamma (rho + shift + (q11 / v1 + q22 / v2) / 2 - 1)`` (the last term is 0 unless a
    variance is below ``tol``):

        Sigma' = r exp(g),      Theta' = gamma exp(g) Theta

    For variances above ``tol`` this is ``r exp(gamma (rho + shift))``, homogeneous of degree 1
    (``Sigma'(x, x) = q`` with the default shift) at every scale.

    (``sdot = d Sigma' / d q12``). The finite layer realizing it normalizes each position's
    pre-activations by their mean square over the channels ``v``:
    ``phi(u) = sqrt(v) e^(gamma shift / 2) exp(sqrt(gamma) u / sqrt(v) - gamma / 2)``, whose
    Hermite coefficients ``gamma^(k/2) / sqrt(k!)`` give ``E[phi phi'] = r e^(gamma shift) e^(gamma rho)``
    at infinite width (``v -> q``); the normalization's own derivative vanishes there.

    Args:
        gamma: exponent factor, > 0 (a number or a 0-dim tensor).
        shift: added to the normalized covariance (default -1, so that ``Sigma'(x, x) = q``).
        do_clip: clip ``rho`` to ``[-1, 1]``.
    """

    _TOL = 1e-30

    def __init__(self, gamma: float | Tensor = 1.0, shift: float | Tensor = -1.0, do_clip: bool = False) -> None:
        self.gamma = check_hyper("gamma", gamma, minimum=0.0, strict=True, who="ExpNormalized")
        self.shift = check_hyper("shift", shift, who="ExpNormalized")
        if not isinstance(do_clip, bool):
            raise InvalidArgumentError(f"ExpNormalized: `do_clip` must be a bool, got {do_clip!r}")
        self.do_clip = do_clip

    def __repr__(self) -> str:
        return f"ExpNormalized(gamma={float(self.gamma)}, shift={float(self.shift)}, do_clip={self.do_clip})"

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        single(self, input_shape)
        return _ExpNormalizedModule(self.gamma, self.shift, self._TOL)

    def rule(self, q11: Tensor, q12: Tensor, q22: Tensor) -> tuple[Tensor, Tensor]:
        # the finite layer's clamp v >= tol, per variance (not on the product q11 q22, which
        # reaches tol already at variances of 1e-15, input scales of 1e-8)
        v1, v2 = torch.clamp(q11, min=self._TOL), torch.clamp(q22, min=self._TOL)
        r = torch.sqrt(v1) * torch.sqrt(v2)
        rho = q12 / r
        if self.do_clip:
            rho = torch.clamp(rho, -1.0, 1.0)
        # below the clamp, E[exp(sqrt(gamma) u / sqrt(v))] = exp(gamma q / (2 v)), not exp(gamma / 2)
        below = (q11 / v1 + q22 / v2) / 2 - 1
        e = torch.exp(self.gamma * (rho + self.shift + below))
        return r * e, self.gamma * e


# -- Gabor -------------------------------------------------------------------------------------


class Gabor(ElementwiseLayer):
    """``phi(x) = exp(-x^2) sin(x)``.

    With ``S = q11 + q22``, ``D = max(q11 q22 - q12^2, 0)``, ``d = 1 + 2 S + 4 D``
    (``= det(I + 2 Q)``), ``B = S + 4 D`` and
    ``E[exp(-u^2 - v^2) cos(u -+ v)] = exp(-(B -+ 2 q12) / (2 d)) / sqrt(d)``:

        sigma = exp(-B / (2 d)) sinh(q12 / d) / sqrt(d)
        sdot  = d sigma / d q12
              = exp(-B / (2 d)) / sqrt(d) * [sinh(q12 / d) 4 q12 ((1 + S) / d^2 + 1 / d)
                                              + cosh(q12 / d) (d + 8 q12^2) / d^2]

    (``D' = -2 q12``). The difference of the two exponentials is written as a ``sinh``: no
    cancellation at small variances, where ``sigma ~ q12`` (``phi(x) ~ x``) and the difference
    form lost every digit below variances of about 1e-8. ``d >= 1`` and ``B >= 0``, so both are
    finite and bounded everywhere (the clamp on ``D`` keeps rounding from pushing ``d`` below 1
    deep in a network); they are evaluated in units of ``m^2``, ``m = max(1, q11, q22)``, so that
    ``q11 q22`` cannot overflow at huge variances.
    """

    def fn(self, x: Tensor) -> Tensor:
        return torch.exp(-x * x) * torch.sin(x)

    def rule(self, q11: Tensor, q12: Tensor, q22: Tensor) -> tuple[Tensor, Tensor]:
        # everything in units of m^2, m = max(1, q11, q22) (held constant for autograd: the
        # forms below are exact identities for any m), so that q11 q22 cannot overflow:
        # d = m^2 d_s, D = m^2 D_s, S = m^2 S_s; for variances <= 1, m = 1 and nothing changes
        with torch.no_grad():
            m = torch.clamp(torch.maximum(q11, q22), min=1.0)
        a11, a12, a22 = q11 / m, q12 / m, q22 / m  # each divided by m twice: m^2 may overflow
        inv = 1 / m / m
        s_s = (a11 + a22) / m
        det_s = torch.clamp(a11 * a22 - a12 * a12, min=0)
        d_s = inv + 2 * s_s + 4 * det_s
        c_s = a12 / m
        scale = torch.exp(-(s_s + 4 * det_s) / (2 * d_s)) / (m * torch.sqrt(d_s))
        f = c_s / d_s  # q12 / d
        sigma = scale * torch.sinh(f)
        # the docstring's sdot with q12 / d = f, (1 + S) / d = (m^-2 + S_s) / d_s and
        # 1 / d = (1 / m) / (m d_s): no d^2 (which underflows or overflows at huge variances)
        sdot = scale * (
            torch.sinh(f) * (4 * f) * ((inv + s_s) / d_s + 1) + torch.cosh(f) * ((1 / m) / (m * d_s) + 8 * f * f)
        )
        return sigma, sdot
