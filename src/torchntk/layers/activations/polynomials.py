"""Polynomial nonlinearities: ``Polynomial``, ``Monomial`` and ``Hermite``, with exact rules
that stay finite wherever the expectation is representable (no factorials or binomial
coefficients are formed: their logarithms are).

Same contract as :mod:`.closed_forms`: ``rule(q11, q12, q22) -> (sigma, sdot)`` with
``sigma = E[phi(u) phi(v)]``, ``sdot = E[phi'(u) phi'(v)]`` for
``(u, v) ~ N(0, [[q11, q12], [q12, q22]])``.

Example (Mehler's formula at unit variances, ``sigma = q12^n``):
    >>> one = torch.tensor(1.0, dtype=torch.float64)
    >>> round(float(Hermite(40).rule(one, 0.5 * one, one)[0] / 0.5**40), 12)
    1.0
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import torch

from ..._checks import check_int
from ...errors import InvalidArgumentError, SpecError
from ._elementwise import ElementwiseLayer
from .closed_forms import _parameter

__all__ = ["Polynomial", "Monomial", "Hermite"]

Tensor = torch.Tensor

#: Largest degree: the coefficients of the rules below (at most ``2^degree`` for Hermite, up to
#: ``1e283`` for a monomial of degree 250) must be finite float64 numbers.
MAX_DEGREE = 250


def _degree(value: object, who: str) -> int:
    """``check_int(degree >= 0)``, and at most :data:`MAX_DEGREE` (else ``SpecError``)."""
    value = check_int("degree", value, minimum=0, who=who)
    if value > MAX_DEGREE:
        raise SpecError(
            f"{who}: `degree` = {value} is beyond {MAX_DEGREE}, the largest degree whose kernel rule "
            "has float64 coefficients"
        )
    return value


@lru_cache(maxsize=None)
def _monomial_table(degree: int) -> tuple[tuple[float, ...], ...]:
    """``T[i][k]`` with ``x^i = sum_k T[i][k] h_k(x)`` (``h_k = He_k / sqrt(k!)``, orthonormal):
    ``T[i][k] = i! / (sqrt(k!) j! 2^j)`` for ``i - k = 2 j >= 0``, else 0; from logarithms, so
    that no factorial is formed (``171!`` is beyond float64)."""
    lg = math.lgamma
    return tuple(
        tuple(
            math.exp(lg(i + 1) - 0.5 * lg(k + 1) - lg((i - k) // 2 + 1) - (i - k) // 2 * math.log(2.0))
            if k <= i and (i - k) % 2 == 0 else 0.0
            for k in range(degree + 1)
        )
        for i in range(degree + 1)
    )


def _polynomial_expectation(coef: Sequence[float | Tensor], q11: Tensor, q12: Tensor, q22: Tensor) -> Tensor:
    """``E[p(u) p(v)]`` for ``p(x) = sum_i coef[i] x^i``, exactly (Mehler's formula).

    With ``x^i = sum_k T[i][k] h_k(x)`` (:func:`_monomial_table`) and
    ``E[h_k(z1) h_l(z2)] = delta_kl rho^k`` for unit normals of correlation ``rho``:

        E[p(u) p(v)] = sum_k q12^k M_k(q11) M_k(q22),   M_k(q) = sum_j coef[k + 2j] T[k + 2j][k] q^j
    """
    n = len(coef)
    if n == 0:
        return torch.zeros_like(q12 + q11 + q22)
    table = _monomial_table(n - 1)
    total = torch.zeros_like(q12 + q11 + q22)
    for k in range(n):
        left = sum(coef[i] * table[i][k] * q11 ** ((i - k) // 2) for i in range(k, n, 2) if _nonzero(coef[i]))
        right = sum(coef[j] * table[j][k] * q22 ** ((j - k) // 2) for j in range(k, n, 2) if _nonzero(coef[j]))
        if isinstance(left, int) or isinstance(right, int):  # no term of this parity
            continue
        total = total + q12**k * left * right
    return total


def _nonzero(c: float | Tensor) -> bool:
    """Whether a coefficient takes part (a tensor always does: its gradient is needed)."""
    return isinstance(c, Tensor) or c != 0


class Polynomial(ElementwiseLayer):
    """``phi(x) = sum_i coef[i] x^i``: exact expectations through the Hermite expansion.

    ``sigma = sum_k q12^k M_k(q11) M_k(q22)`` with ``M_k(q) = sum_j coef_{k+2j} T_{k+2j,k} q^j``,
    where ``x^i = sum_k T_ik h_k(x)`` in the orthonormal Hermite polynomials
    (``T_ik = i! / (sqrt(k!) j! 2^j)``, ``i - k = 2j``); ``sdot`` is the same for the derivative
    polynomial. Degree at most 250; coefficients of magnitude at most 1e75.
    """

    def __init__(self, coef: Sequence[float] | Tensor) -> None:
        if isinstance(coef, Tensor):
            if coef.ndim != 1:
                raise InvalidArgumentError(f"`coef` must be a 1-D tensor, got shape {tuple(coef.shape)}")
            entries: list = list(coef.unbind())  # 0-dim views: the kernel stays differentiable in coef
        else:
            try:
                entries = [c if isinstance(c, Tensor) else float(c) for c in coef]
            except (TypeError, ValueError):
                raise InvalidArgumentError(f"`coef` must be a sequence of numbers, got {coef!r}") from None
        if len(entries) > MAX_DEGREE + 1:
            raise SpecError(f"Polynomial: degree {len(entries) - 1} is beyond {MAX_DEGREE} (`coef` has {len(entries)} entries)")
        values = [_parameter(f"coef[{i}]", c) for i, c in enumerate(entries)]
        self.coef = tuple(values)
        self._c = self.coef
        self._dc = tuple(i * c for i, c in enumerate(values))[1:]  # coefficients of phi'

    def __repr__(self) -> str:
        return f"Polynomial(coef={list(self.coef)})"

    def fn(self, x: Tensor) -> Tensor:
        out = torch.zeros_like(x)
        for c in reversed(self.coef):  # Horner
            out = out * x + c
        return out

    def rule(self, q11: Tensor, q12: Tensor, q22: Tensor) -> tuple[Tensor, Tensor]:
        return (
            _polynomial_expectation(self._c, q11, q12, q22),
            _polynomial_expectation(self._dc, q11, q12, q22),
        )


class Monomial(Polynomial):
    """``phi(x) = x^degree`` (a :class:`Polynomial` with one coefficient; degree at most 250)."""

    def __init__(self, degree: int) -> None:
        degree = _degree(degree, "Monomial")
        super().__init__([0.0] * degree + [1.0])
        self.degree = degree

    def __repr__(self) -> str:
        return f"Monomial(degree={self.degree})"

    def fn(self, x: Tensor) -> Tensor:
        return x**self.degree


# -- Hermite ------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _hermite_terms(degree: int) -> tuple[float, ...]:
    """``C_j = n! / ((j!)^2 (n - 2j)! 4^j)`` for ``j <= n/2`` (each at most ``2^n``), from logarithms."""
    lg = math.lgamma
    return tuple(
        math.exp(lg(degree + 1) - 2 * lg(j + 1) - lg(degree - 2 * j + 1) - j * math.log(4.0))
        for j in range(degree // 2 + 1)
    )


def _hermite_expectation(degree: int, q12: Tensor, p: Tensor) -> Tensor:
    """``E[h_n(u) h_n(v)] = sum_j C_j q12^(n - 2j) p^j`` with ``p = (q11 - 1)(q22 - 1)``.

    Evaluated homogeneously: with ``s = max(|q12|, sqrt|p|)`` (held constant for autograd: the
    sum is exactly ``s^n`` times the same sum in ``q12 / s`` and ``p / s^2``), every power is at
    most 1 and only the final ``s^n`` can overflow, where the value itself does.
    """
    terms = _hermite_terms(degree)
    with torch.no_grad():
        s = torch.maximum(q12.abs(), p.abs().sqrt())
        s = torch.where(s > 0, s, torch.ones_like(s))
    a, b = q12 / s, p / (s * s)
    # sum_j C_j (a^2)^(m - j) b^j (m = n // 2) by Horner's rule in a^2, the powers of b carried
    a2, total, pb = a * a, torch.full_like(a + b, terms[0]), torch.ones_like(b)
    for c in terms[1:]:
        pb = pb * b
        total = total * a2 + c * pb
    if degree % 2:
        total = total * a
    return total * s**degree


class Hermite(ElementwiseLayer):
    """``phi(x) = He_degree(x) / sqrt(degree!)``, the normalized probabilists' Hermite polynomial.

    For unit-variance pre-activations (``q11 = q22 = 1``) Mehler's formula gives
    ``sigma = q12^degree`` and ``sdot = degree q12^(degree - 1)``, which is neural-tangents'
    rule (it assumes unit variances). torchntk computes the exact expectation for *any*
    variances: with ``p = (q11 - 1)(q22 - 1)`` and ``n = degree``,

        sigma_n = sum_j n! / ((j!)^2 (n - 2j)! 4^j) q12^(n - 2j) p^j,     sdot = n sigma_(n-1)

    (``He_n(sqrt(q) z)`` expanded in ``He_(n-2j)(z)``, then Mehler's formula;
    ``phi' = sqrt(n) h_(n-1)``). The activation is evaluated by the three-term recurrence of the
    orthonormal polynomials, ``h_(k+1) = (x h_k - sqrt(k) h_(k-1)) / sqrt(k + 1)``, so no
    coefficient of ``He_n`` (alternating, up to ``10^20`` at degree 30) is formed. Degree at most 250.
    """

    def __init__(self, degree: int) -> None:
        self.degree = _degree(degree, "Hermite")

    def __repr__(self) -> str:
        return f"Hermite(degree={self.degree})"

    def fn(self, x: Tensor) -> Tensor:
        prev, cur = torch.zeros_like(x), torch.ones_like(x)
        for k in range(self.degree):
            prev, cur = cur, (x * cur - math.sqrt(k) * prev) / math.sqrt(k + 1)
        return cur

    def rule(self, q11: Tensor, q12: Tensor, q22: Tensor) -> tuple[Tensor, Tensor]:
        n = self.degree
        p = (q11 - 1) * (q22 - 1)
        sigma = _hermite_expectation(n, q12, p)
        if n == 0:
            return sigma, torch.zeros_like(sigma)
        return sigma, n * _hermite_expectation(n - 1, q12, p)
