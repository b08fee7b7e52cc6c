"""Nonlinearities of the architecture spec, with their infinite-width rules.

- ``_elementwise``: :class:`ElementwiseLayer`, the base of every nonlinearity;
- ``piecewise_linear``: ``ABRelu``, ``Relu``, ``LeakyRelu``, ``Abs``, ``Sign`` (arc-cosine kernels);
- ``closed_forms``: ``Erf``, ``Sigmoid_like``, ``Gelu``, ``Sin``, ``Cos``, ``Rbf``, ``Exp``,
  ``Gaussian``, and the numerics the closed forms share (hyperparameters, the exponent
  scaling of extreme variances);
- ``polynomials``: ``Polynomial``, ``Monomial``, ``Hermite`` (exact rules, no factorials formed);
- ``special``: ``RectifiedMonomial``, ``ExpNormalized``, ``Gabor``;
- ``numerical``: ``Elementwise`` (any torch function) and ``ElementwiseNumerical``;
- ``_quadrature`` (the quadrature and series rules) and ``_expectations``
  (``gaussian_expectations``, the rule chosen per pair): private.
"""

from ._elementwise import ElementwiseLayer
from .closed_forms import Cos, Erf, Exp, Gaussian, Gelu, Rbf, Sigmoid_like, Sin
from .numerical import Elementwise, ElementwiseNumerical
from .piecewise_linear import ABRelu, Abs, LeakyRelu, Relu, Sign
from .polynomials import Hermite, Monomial, Polynomial
from .special import ExpNormalized, Gabor, RectifiedMonomial

__all__ = [
    "ElementwiseLayer",
    "ABRelu",
    "Relu",
    "LeakyRelu",
    "Abs",
    "Sign",
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
    "Elementwise",
    "ElementwiseNumerical",
    "Hermite",
    "RectifiedMonomial",
    "ExpNormalized",
    "Gabor",
]
