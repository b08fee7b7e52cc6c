"""Nonlinearities of the architecture spec, with their infinite-width rules.

Each layer is an :class:`~torchntk.layers.ElementwiseLayer`: ``fn`` is the finite
network's activation ``phi`` and ``rule(q11, q12, q22)`` returns

    sigma = E[phi(u) phi(v)],   sdot = E[phi'(u) phi'(v)],   (u, v) ~ N(0, [[q11, q12], [q12, q22]])

so that after the layer ``Sigma' = sigma`` and ``Theta' = Theta * sdot`` (CONVENTIONS
section 2). Closed forms are used where they exist; :class:`Elementwise` covers any other torch
function by a Hermite series or 2-D quadrature (``phi'`` by autograd). Names and arguments follow
neural-tangents' ``stax`` where it has the layer.

Notation of the closed forms (all safe at correlation +-1 and at zero variance, with finite
gradients there):

    s = sqrt(max(q11 q22 - q12^2, 0)),   t = atan2(s, q12)  in [0, pi]   (t = pi/2 when both are 0)

Example:
    >>> from torchntk import layers
    >>> spec = layers.serial(layers.Dense(512), layers.Gelu(), layers.Dense(1))
    >>> spec.kernel(torch.randn(4, 3)).ntk.shape
    torch.Size([4, 4])
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from ...errors import InvalidArgumentError
from ._elementwise import ElementwiseLayer
from ..._checks import check_hyper, check_int, is_one

__all__ = [
    "Erf",
    "Sigmoid_like",
    "Gelu",
    "Sin",
    "Cos",
    "Rbf",
    "Exp",
    "Gaussian",
    "Monomial",
    "Polynomial",
]

Tensor = torch.Tensor
_PI = math.pi


def _math(fn: Callable[[Tensor], Tensor], value: float | Tensor) -> float | Tensor:
    """``fn`` (a torch function) of a hyperparameter, a float for a float."""
    return fn(value) if isinstance(value, Tensor) else float(fn(torch.tensor(value, dtype=torch.float64)))


def _records_grad(*ts: Tensor | float) -> bool:
    """Whether autograd records operations on any of ``ts`` (the safe rules are needed then)."""
    return torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in ts)


#: Variances in ``[2^-480, 2^480]`` (or 0) keep ``q11 q22`` and ``q12^2`` inside float64's range.
_SAFE_EXPONENT = 480


def _variance_range(q11: Tensor, q22: Tensor) -> tuple[bool, bool]:
    """``(in_range, positive)``: whether every nonzero variance lies in ``[2^-480, 2^480]`` (the
    plain formulas are then free of overflow and underflow; else the scaled forms are used), and
    whether every variance is > 0 (then, in range, every ``q11 q22`` product is > 0). One pass
    per tensor (the variances are per point: small next to the pairs)."""
    hi, lo = 2.0**_SAFE_EXPONENT, 2.0**-_SAFE_EXPONENT
    positive = True
    for q in (q11, q22):
        if q.numel() == 0:
            positive = False
            continue
        q = q.detach()
        bottom, top = torch.aminmax(q)
        bottom, top = float(bottom), float(top)
        if not top <= hi:
            # NaN or inf: no scaling helps (and the scaled form would recurse on it forever),
            # leave it to the plain formula
            return not math.isfinite(top), False
        positive = positive and bottom > 0
        if bottom < lo and float(torch.where(q > 0, q, torch.full_like(q, hi)).min()) < lo:
            return False, False
    return True, positive


def _in_range(q11: Tensor, q22: Tensor) -> bool:
    """Whether every nonzero variance lies in ``[2^-480, 2^480]`` (see :func:`_variance_range`)."""
    return _variance_range(q11, q22)[0]


def _half_exponent(q: Tensor) -> Tensor:
    """``k`` with ``q / 4^k`` in ``[1, 4)`` for ``q > 0`` (0 elsewhere), as a float tensor."""
    q = q.detach()
    _, e = torch.frexp(torch.where(q > 0, q, torch.ones_like(q)))
    return torch.where(q > 0, torch.div(e - 1, 2, rounding_mode="floor"), torch.zeros_like(e)).to(q.dtype)


def _ldexp(x: Tensor, e: Tensor) -> Tensor:
    """``x * 2^e`` for integer-valued ``e`` up to +-2100, exactly (``torch.ldexp`` forms ``2^e``
    first, which overflows or underflows beyond +-1023): three exact power-of-two factors,
    applied in turn so that no intermediate leaves the range between ``x`` and the result."""
    third = torch.trunc(e / 3)
    for part in (third, third, e - 2 * third):
        x = x * torch.pow(2.0, part)
    return x


def _scaled(q11: Tensor, q12: Tensor, q22: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Exact power-of-two rescaling of a covariance: ``(q11 / 4^k1, q12 / 2^(k1+k2), q22 / 4^k2,
    k1 + k2)`` with each variance in ``[1, 4)`` (multiplying by powers of two rounds nothing)."""
    k1, k2 = _half_exponent(q11), _half_exponent(q22)
    k = k1 + k2
    return _ldexp(q11, -2 * k1), _ldexp(q12, -k), _ldexp(q22, -2 * k2), k


#: Relative size below which a covariance's determinant is rounding (64 ulps of q11 q22).
_DET_FLOOR = 64 * 2.0**-52


def _zero_keeping_grad(t: Tensor) -> Tensor:
    """0 with the gradient of ``t`` (Price's theorem differentiates the rule in q12)."""
    return t - t.detach()


def _root_plus_det(x: Tensor, q11: Tensor, q12: Tensor, q22: Tensor, c: float | Tensor = 1.0) -> Tensor:
    """``sqrt(x + c D)`` (for ``x >= 1``) with ``D = max(q11 q22 - q12^2, 0)`` the determinant of the covariance,
    finite wherever the result is representable: in the plain form when the variances are in
    range, else as ``2^k sqrt(x / 4^k + c D_s)`` with ``D = 4^k D_s`` from :func:`_scaled`.
    A ``D`` below ``_DET_FLOOR q11 q22`` is the rounding of a correlation-1 covariance (its
    products carry ~1e-16 relative error) and is taken as 0: at large variances it would
    otherwise outweigh ``x`` (its gradient is kept)."""
    if _in_range(q11, q22):
        prod = q11 * q22
        det = torch.addcmul(prod, q12, q12, value=-1)
        det = torch.where(det > _DET_FLOOR * prod, det, _zero_keeping_grad(det))
        # a tensor c (a differentiable hyperparameter) cannot be torch.add's alpha
        return torch.sqrt(x + c * det if isinstance(c, Tensor) else torch.add(x, det, alpha=c))
    a, b, d, k = _scaled(q11, q12, q22)
    det = a * d - b * b
    det = c * torch.where(det > _DET_FLOOR * (a * d), det, _zero_keeping_grad(det))
    # k < 0 (tiny variances): D = 4^k D_s is negligible against x >= 1 and may underflow
    up = torch.clamp(k, min=0)
    return _ldexp(torch.sqrt(_ldexp(x, -2 * up) + _ldexp(det, 2 * (k - up))), up)


# -- erf family ---------------------------------------------------------------------------


class Erf(ElementwiseLayer):
    """``phi(x) = a erf(b x) + c``. With ``d = (1 + 2 b^2 q11)(1 + 2 b^2 q22)``:

        sigma = a^2 (2 / pi) asin(2 b^2 q12 / sqrt(d)) + c^2
        sdot  = a^2 b^2 (4 / pi) / sqrt(d - 4 b^4 q12^2)

    (for ``a = b = 1, c = 0`` the formulas of CONVENTIONS section 2).
    """

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0) -> None:
        self.a, self.b, self.c = check_hyper("a", a), check_hyper("b", b), check_hyper("c", c)

    def __repr__(self) -> str:
        return f"Erf(a={self.a}, b={self.b}, c={self.c})"

    def fn(self, x: Tensor) -> Tensor:
        return self.a * torch.special.erf(self.b * x) + self.c

    def rule(self, q11: Tensor, q12: Tensor, q22: Tensor) -> tuple[Tensor, Tensor]:
        # d - 4 b^4 q12^2 = 1 + 2 b^2 (q11 + q22) + 4 b^4 (q11 q22 - q12^2): written so, it has
        # no cancellation at correlation 1 and large variances, and stays finite (scaled form)
        # and asin(2 b^2 q12 / sqrt(d)) = atan2(2 b^2 q12, sqrt(d - 4 b^4 q12^2)): exact at
        # correlation +-1 however large the variances (asin would amplify a rounded argument)
        b2 = self.b**2
        root = _root_plus_det((0.5 + 2 * b2 * q11) + (0.5 + 2 * b2 * q22), q11, q12, q22, 4 * b2 * b2)
        sigma = torch.atan2(q12 * (2 * b2), root) * (self.a**2 * (2 / _PI))
        if not is_one(self.c, 0.0):
            sigma = sigma + self.c**2
        sdot = torch.reciprocal(root) * ((self.a * self.b) ** 2 * (4 / _PI))
        return sigma, sdot


#: Scale of the erf that best fits the logistic sigmoid on [-5, 5] (neural-tangents' value).
_SIGMOID_SCALE = 2.4020563531719796


class Sigmoid_like(Erf):  # noqa: N801 - the neural-tangents name
    """``phi(x) = (erf(x / 2.4020563531719796) + 1) / 2``, an erf close to the logistic sigmoid."""

    def __init__(self) -> None:
        super().__init__(a=0.5, b=1 / _SIGMOID_SCALE, c=0.5)

    def __repr__(self) -> str:
        return "Sigmoid_like()"


class Gelu(ElementwiseLayer):
    """``phi(x) = x Phi(x)`` (exact GELU, ``torch.nn.functional.gelu``). With
    ``D = (1 + q11)(1 + q22) - q12^2`` and ``rho = q12 / sqrt((1 + q11)(1 + q22))``:

        sigma = q12 (1/4 + asin(rho) / (2 pi))
                + (q11 q22 + q12^2 (1 - q11 q22) / ((1 + q11)(1 + q22))) / (2 pi sqrt(D))
        sdot  = 1/4 + asin(rho) / (2 pi) + q12 (1/(1 + q11) + 1/(1 + q22)) / (2 pi sqrt(D))
                + q12 / (2 pi D^(3/2))

    (Gaussian integration by parts; the quadrature tests check it.) ``approximate="tanh"`` is
    not supported (use ``Elementwise``).
    """

    def __init__(self, approximate: bool | str = False) -> None:
        if approximate not in (False, "none"):
            raise InvalidArgumentError(
                "Gelu(approximate=...) only supports the exact GELU (False); for the tanh "
                "approximation use Elementwise(lambda x: torch.nn.functional.gelu(x, approximate='tanh'))"
            )

    def fn(self, x: Tensor) -> Tensor:
        return torch.nn.functional.gelu(x)

    def rule(self, q11: Tensor, q12: Tensor, q22: Tensor) -> tuple[Tensor, Tensor]:
        # The docstring's formulas rearranged to have no cancellation and no overflow:
        # D = 1 + q11 + q22 + (q11 q22 - q12^2) and
        # (q11 q22 + q12^2 (1 - q11 q22) / (p1 p2)) / sqrt(D)
        #     = (q11 / p1) (q22 / p2) sqrt(D) + rho^2 / sqrt(D)
        # and asin(rho) = atan2(q12, sqrt(D)), exact at correlation +-1
        p1, p2 = 1 + q11, 1 + q22
        rho = q12 * torch.rsqrt(p1) * torch.rsqrt(p2)
        root = _root_plus_det(p1 + q22, q11, q12, q22)
        orthant = 0.25 + torch.atan2(q12, root) / (2 * _PI)
        sigma = q12 * orthant + ((q11 / p1) * (q22 / p2) * root + rho * rho / root) / (2 * _PI)
        sdot = orthant + (q12 / root) * (1 / p1 + 1 / p2) / (2 * _PI) + ((q12 / root) / root) / root / (2 * _PI)
        return sigma, sdot


# -- trigonometric ------------------------------------------------------------------------


class Sin(ElementwiseLayer):
    """``phi(x) = a sin(b x + c)``. With ``e_pm = exp(-b^2 (q11 + q22 +- 2 q12) / 2)``:

        sigma = a^2 (e_- - cos(2 c) e_+) / 2,    sdot = a^2 b^2 (e_- + cos(2 c) e_+) / 2
    """

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0) -> None:
        self.a, self.b, self.c = check_hyper("a", a), check_hyper("b", b), check_hyper("c", c)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(a={self.a}, b={self.b}, c={self.c})"

    def _shift(self) -> float:
        return self.c

    def fn(self, x: Tensor) -> Tensor:
        return self.a * torch.sin(self.b * x + self._shift())

    def rule(self, q11: Tensor, q12: Tensor, q22: Tensor) -> tuple[Tensor, Tensor]:
        half_b2 = self.b**2 / 2
        e_minus = torch.exp(-half_b2 * (q11 + q22 - 2 * q12))
        e_plus = _math(torch.cos, 2 * self._shift()) * torch.exp(-half_b2 * (q11 + q22 + 2 * q12))
        a2 = self.a**2
        return a2 * (e_minus - e_plus) / 2, a2 * self.b**2 * (e_minus + e_plus) / 2


class Cos(Sin):
    """``phi(x) = a cos(b x + c)`` (``Sin`` with the phase ``c + pi/2``)."""

    def _shift(self) -> float:
        return self.c + _PI / 2


class Rbf(Sin):
    """``phi(x) = sqrt(2) sin(sqrt(2 gamma) x + pi/4)``, whose NNGP is the RBF kernel of the
    pre-activations: ``sigma = exp(-gamma (q11 + q22 - 2 q12))``, ``sdot = 2 gamma sigma``."""

    def __init__(self, gamma: float = 1.0) -> None:
        gamma = check_hyper("gamma", gamma, minimum=0.0, strict=True)
        super().__init__(a=math.sqrt(2), b=_math(torch.sqrt, 2 * gamma), c=_PI / 4)
        self.gamma = gamma

    def __repr__(self) -> str:
        return f"Rbf(gamma={self.gamma})"


# -- exponentials -------------------------------------------------------------------------


class Exp(ElementwiseLayer):
    """``phi(x) = a exp(b x)``: ``sigma = a^2 exp(b^2 (q11 + q22 + 2 q12) / 2)``, ``sdot = b^2 sigma``.

    (The moment generating function of ``u + v``.)
    """

    def __init__(self, a: float = 1.0, b: float = 1.0) -> None:
        self.a, self.b = check_hyper("a", a), check_hyper("b", b)

    def __repr__(self) -> str:
        return f"Exp(a={self.a}, b={self.b})"

    def fn(self, x: Tensor) -> Tensor:
        return self.a * torch.exp(self.b * x)

    def rule(self, q11: Tensor, q12: Tensor, q22: Tensor) -> tuple[Tensor, Tensor]:
        sigma = self.a**2 * torch.exp(self.b**2 * (q11 + q22 + 2 * q12) / 2)
        return sigma, self.b**2 * sigma


class Gaussian(ElementwiseLayer):
    """``phi(x) = a exp(b x^2)`` (``b < 0`` for a bump). With
    ``det = (1 - 2 b q11)(1 - 2 b q22) - 4 b^2 q12^2`` (which must be > 0, true for ``b <= 0``):

        sigma = a^2 / sqrt(det),     sdot = 4 a^2 b^2 q12 / det^(3/2)
    """

    def __init__(self, a: float = 1.0, b: float = -1.0) -> None:
        self.a, self.b = check_hyper("a", a), check_hyper("b", b)

    def __repr__(self) -> str:
        return f"Gaussian(a={self.a}, b={self.b})"

    def fn(self, x: Tensor) -> Tensor:
        return self.a * torch.exp(self.b * x * x)

    def rule(self, q11: Tensor, q12: Tensor, q22: Tensor) -> tuple[Tensor, Tensor]:
        b = self.b
        det = (1 - 2 * b * q11) * (1 - 2 * b * q22) - 4 * b * b * q12 * q12
        root = torch.sqrt(det)
        return self.a**2 / root, 4 * self.a**2 * b * b * q12 / (det * root)


# -- polynomials --------------------------------------------------------------------------


def _hermite_table(degree: int) -> np.ndarray:
    """``A[i, k]``: ``x^i = sum_k A[i, k] He_k(x)`` (probabilists' Hermite), ``i, k <= degree``."""
    table = np.zeros((degree + 1, degree + 1))
    for i in range(degree + 1):
        c = np.polynomial.hermite_e.poly2herme(np.eye(degree + 1)[i])
        table[i, : len(c)] = c
    return table


def _polynomial_expectation(coef: Sequence[float | Tensor], q11: Tensor, q12: Tensor, q22: Tensor) -> Tensor:
    """``E[p(u) p(v)]`` for ``p(x) = sum_i coef[i] x^i``, exactly.

    Uses ``E[u^i v^j] = sum_k A[i,k] A[j,k] k! q12^k q11^((i-k)/2) q22^((j-k)/2)``
    (``E[He_k(z1) He_l(z2)] = delta_kl k! rho^k`` for unit normals of correlation ``rho``).
    """
    n = len(coef)
    if n == 0:
        return torch.zeros_like(q12 + q11 + q22)
    table = _hermite_table(n - 1)
    total = torch.zeros_like(q12 + q11 + q22)
    for k in range(n):
        # b[k] coefficients: sum_i coef[i] A[i, k] q11^((i-k)/2), and the same in q22.
        left = sum(coef[i] * float(table[i, k]) * q11 ** ((i - k) // 2) for i in range(k, n, 2) if _nonzero(coef[i]))
        right = sum(coef[j] * float(table[j, k]) * q22 ** ((j - k) // 2) for j in range(k, n, 2) if _nonzero(coef[j]))
        if isinstance(left, int) or isinstance(right, int):  # no term of this parity
            continue
        total = total + math.factorial(k) * q12**k * left * right
    return total


def _nonzero(c: float | Tensor) -> bool:
    """Whether a coefficient takes part (a tensor always does: its gradient is needed)."""
    return isinstance(c, Tensor) or c != 0


class Polynomial(ElementwiseLayer):
    """``phi(x) = sum_i coef[i] x^i``: exact expectations through the Hermite expansion.

    ``sigma = sum_{i,j} coef_i coef_j E[u^i v^j]`` with
    ``E[u^i v^j] = sum_k A_ik A_jk k! q12^k q11^((i-k)/2) q22^((j-k)/2)``, where
    ``x^i = sum_k A_ik He_k(x)``; ``sdot`` is the same for the derivative polynomial.
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
        values = [check_hyper(f"coef[{i}]", c) for i, c in enumerate(entries)]
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
    """``phi(x) = x^degree`` (a :class:`Polynomial` with one coefficient)."""

    def __init__(self, degree: int) -> None:
        degree = check_int("degree", degree, minimum=0, who="Monomial")
        super().__init__([0.0] * degree + [1.0])
        self.degree = degree

    def __repr__(self) -> str:
        return f"Monomial(degree={self.degree})"

    def fn(self, x: Tensor) -> Tensor:
        return x**self.degree
