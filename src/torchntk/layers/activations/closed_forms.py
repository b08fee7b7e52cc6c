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
from typing import Callable

import torch

from ...errors import InvalidArgumentError, SpecError
from ._elementwise import ElementwiseLayer
from ._scaling import _in_range, _ldexp, _scaled
from ..._checks import check_hyper, is_one, value_of

__all__ = [
    "Erf",
    "Sigmoid_like",
    "Gelu",
    "Sin",
    "Cos",
    "Rbf",
    "Exp",
    "Gaussian",
]

Tensor = torch.Tensor
_PI = math.pi


#: Largest magnitude of an activation's parameter: the rules raise parameters to the fourth
#: power (Erf's ``b^4``), which must stay inside float64's range.
PARAMETER_LIMIT = 1e75


def _parameter(name: str, value: object, **bounds: object) -> float | Tensor:
    """An activation's parameter: :func:`~torchntk._checks.check_hyper`'s checks, and a magnitude
    at most :data:`PARAMETER_LIMIT` (else ``SpecError`` naming ``name``)."""
    out = check_hyper(name, value, **bounds)
    if abs(value_of(out)) > PARAMETER_LIMIT:
        raise SpecError(
            f"`{name}` = {value_of(out):g} is beyond the range of activation parameters, |{name}| <= "
            f"{PARAMETER_LIMIT:g} (the kernel rules use its square and fourth power, which must fit float64)"
        )
    return out


def _math(fn: Callable[[Tensor], Tensor], value: float | Tensor) -> float | Tensor:
    """``fn`` (a torch function) of a hyperparameter, a float for a float."""
    return fn(value) if isinstance(value, Tensor) else float(fn(torch.tensor(value, dtype=torch.float64)))


def _records_grad(*ts: Tensor | float) -> bool:
    """Whether autograd records operations on any of ``ts`` (the safe rules are needed then)."""
    return torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in ts)


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
        # two rounded products, then one subtraction (not a fused multiply-add, which some
        # processors use in addcmul): at correlation 1 (q12 = q11 = q22, as on a kernel's
        # diagonal) the determinant is then exactly 0, not a rounding error of q^2 that would
        # swamp x (1 + 4 q for Erf) once q exceeds 1/u; near correlation 1 a determinant below
        # 64 ulps of q11 q22 is rounding too, and is taken as 0
        prod = q11 * q22
        det = prod - q12 * q12
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
        self.a, self.b, self.c = _parameter("a", a), _parameter("b", b), _parameter("c", c)

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
        self.a, self.b, self.c = _parameter("a", a), _parameter("b", b), _parameter("c", c)

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
        gamma = _parameter("gamma", gamma, minimum=0.0, strict=True)
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
        self.a, self.b = _parameter("a", a), _parameter("b", b)

    def __repr__(self) -> str:
        return f"Exp(a={self.a}, b={self.b})"

    def fn(self, x: Tensor) -> Tensor:
        return self.a * torch.exp(self.b * x)

    def rule(self, q11: Tensor, q12: Tensor, q22: Tensor) -> tuple[Tensor, Tensor]:
        sigma = self.a**2 * torch.exp(self.b**2 * (q11 + q22 + 2 * q12) / 2)
        return sigma, self.b**2 * sigma


class Gaussian(ElementwiseLayer):
    """``phi(x) = a exp(b x^2)`` (``b < 0`` for a bump). With ``c = -2 b``, ``S = q11 + q22``,
    ``D = max(q11 q22 - q12^2, 0)`` and ``det = det(I + c Q) = 1 + c S + c^2 D``:

        sigma = a^2 / sqrt(det),     sdot = 4 a^2 b^2 q12 / det^(3/2)

    For ``b <= 0`` every term of ``det`` is >= 0 (no cancellation, also at correlation 1); for
    ``c >= 1`` both are evaluated as ``det = c^2 (1/c^2 + S/c + D)`` (finite for any ``b``).
    For ``b > 0`` the expectations are finite only while ``2 b`` times the covariance's largest
    eigenvalue is below 1 (``1 - 2 b q11 > 0`` and ``det > 0``); beyond, ``E[phi(u)^2]`` is
    infinite and the rule raises :class:`~torchntk.errors.SpecError` naming ``b``.
    """

    def __init__(self, a: float = 1.0, b: float = -1.0) -> None:
        self.a, self.b = _parameter("a", a), _parameter("b", b)

    def __repr__(self) -> str:
        return f"Gaussian(a={self.a}, b={self.b})"

    def fn(self, x: Tensor) -> Tensor:
        return self.a * torch.exp(self.b * x * x)

    def rule(self, q11: Tensor, q12: Tensor, q22: Tensor) -> tuple[Tensor, Tensor]:
        c = -2 * self.b
        k = torch.clamp(c, min=1.0) if isinstance(c, Tensor) else max(c, 1.0)  # det = k^2 det_s
        det_s = 1 / k / k + (c / k) * ((q11 + q22) / k) + (c / k) ** 2 * torch.clamp(q11 * q22 - q12 * q12, min=0)
        if value_of(c) < 0:
            ok = (1 + c * q11 > 0) & (det_s > 0)
            if not bool(ok.all()):
                top = float(torch.maximum(q11, q22).detach().max())
                raise SpecError(
                    f"{self!r}: E[exp(b u^2) exp(b v^2)] is infinite for `b` = {value_of(self.b):g} > 0 unless 2 b "
                    "times the largest eigenvalue of each pair's covariance is below 1 (every variance below "
                    f"1 / (2 b) = {1 / (2 * value_of(self.b)):.3g}, at least); here the variances reach {top:.3g}: "
                    "use b <= 0, a smaller b or smaller inputs"
                )
        root = torch.sqrt(det_s)
        a2 = self.a**2
        return a2 / (k * root), a2 * (c / k) ** 2 * q12 / (k * det_s * root)
