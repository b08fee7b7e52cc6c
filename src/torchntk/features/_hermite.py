"""Random features of a nonlinearity through its Hermite expansion (private).

For a Gaussian pair ``(u, v) ~ N(0, [[q1, c], [c, q2]])`` with correlation ``rho = c / sqrt(q1 q2)``
and the orthonormal probabilists' Hermite polynomials ``h_k = He_k / sqrt(k!)``,

    E[a(u) a(v)]   = sum_k a_k(q1) a_k(q2) rho^k,    a_k(q) = E[a(sqrt(q) z) h_k(z)],
    E[a'(u) a'(v)] = sum_k b_k(q1) b_k(q2) rho^k,    b_k(q) = E[a'(sqrt(q) z) h_k(z)]

(Mehler's formula; Han et al. 2022, "Fast Neural Kernel Embeddings for General Activations").
With ``w(x) = phi(x) / |phi(x)|`` the unit-normalized features of the pre-activation
(``<w(x), w(x')> ~ rho``) and ``q(x)`` each row's exact variance (``State.q``), the features

    phi'(x) = [ a_0(q(x)),  a_1(q(x)) T_1(w(x)),  ...,  a_K(q(x)) T_K(w(x)) ]

with ``T_k`` an unbiased sketch of the tensor power ``w^(x)k`` (``E[<T_k(w), T_k(w')>] = <w, w'>^k``)
estimate the first ``K + 1`` terms, so the truncation leaves at most
``sum_{k > K} |a_k(q1) a_k(q2)| <= sqrt(tail(q1) tail(q2))``, ``tail(q) = sum_{k > K} a_k(q)^2 =
E[a(sqrt(q) z)^2] - sum_{k <= K} a_k(q)^2`` (Cauchy-Schwarz). The NTK features split
``Theta * Sdot = b_0(q1) b_0(q2) Theta + Theta * sum_{k >= 1} b_k(q1) b_k(q2) rho^k``:

    psi' = [ b_0(q(x)) S psi(x),  TensorSRHT(psi(x), g(x)) ]

with ``S`` a plain sketch of ``psi`` and ``g`` the construction above for ``a'`` without its
degree 0 (independent draws), ``m0 ~ m b_0^2 / sum_k b_k^2`` and ``m - m0`` columns, so
``E[<psi', psi''>] = Theta * Sdot``; the plain sketch has less variance than the tensor one.

``T_k`` is a chain of TensorSRHTs (:class:`~torchntk.features._sketch.TensorSrht`):
``T_1(w) = S(w)`` (or ``w`` itself when it has at most the degree's columns: exact),
``T_k(w) = TensorSRHT(T_{k-1}(w), w)``; every stage draws afresh, so each degree is unbiased,
and the re-sketch at each stage keeps the variance growing about linearly in ``k`` (a plain
product of ``k`` sketches grows like ``3^k``). Degree ``k`` takes ``m_k`` columns,
``m_k ~ importance_k * sqrt(k)`` with ``importance_k = max a_k(q)^2 / E[a(sqrt(q) z)^2]`` over
the calibration rows (at least ``MIN_WIDTH``), the variance-optimal split for a stage variance
growing like ``k``.

Truncation degree: the smallest ``K`` whose relative tail ``tail(q) / E[a(sqrt(q) z)^2]`` (and
the same for ``a'``) is at most the tolerance on every calibration row, ``K <= MAX_DEGREE``.
The coefficients are computed per row by Gauss-Hermite quadrature (the projector of
:mod:`torchntk.layers.activations._quadrature`), so rows of any norm get their own ``a_k(q(x))``; a row whose
tail exceeds ``WARN_FACTOR`` times the tolerance (a larger variance than the calibration's)
raises an :class:`~torchntk.errors.AccuracyWarning`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..errors import AccuracyWarning, UnsupportedLayerError
from ..layers import activations as A
from ..layers.activations._elementwise import ElementwiseLayer
from ..layers.activations._quadrature import _eval, _hermite_projector
from ..layers.activations.special import RectifiedMonomial
from . import _steps as S
from ._sketch import TensorSrht, sketch

Tensor = torch.Tensor

#: Highest Hermite degree of a feature map.
MAX_DEGREE = 32
#: Default relative truncation tail (of ``E[a(u)^2]`` and ``E[a'(u)^2]``) at the calibration rows
#: (see :func:`default_tolerance`).
TOLERANCE = 1e-3
#: The default truncation tolerance is at least ``SAMPLING / m``: with fewer than
#: ``SAMPLING / TOLERANCE`` columns the sampling error dominates such a tail, and more degrees
#: would only thin the columns.
SAMPLING = 4.0
#: Fewest columns of a degree of the expansion.
MIN_WIDTH = 8
#: A row whose relative tail exceeds this many tolerances warns.
WARN_FACTOR = 10.0
#: Input variances ``|x[p]|^2 / C`` of the default calibration rows (constant inputs).
REFERENCE_VARIANCES = (0.5, 1.0, 2.0)
#: Coefficients below this part of the second moment count as zero (odd/even activations).
_ZERO = 1e-14
#: Least number of terms of the quadrature (its nodes also give the second moment).
_MIN_TERMS = 16


#: The largest default tolerance (a map of fewer than ``SAMPLING / MAX_DEFAULT`` columns).
MAX_DEFAULT = 0.5


def default_tolerance(width: int) -> float:
    """``min(max(TOLERANCE, SAMPLING / width), MAX_DEFAULT)``: the truncation tolerance of a map
    of ``width`` columns (a valid ``hermite_tolerance`` in ``(0, 1)`` for every width >= 2)."""
    return min(max(TOLERANCE, SAMPLING / width), MAX_DEFAULT)


def expandable(layer: Any) -> bool:
    """Whether ``layer`` is a scalar activation ``a`` whose Hermite coefficients can be computed."""
    return isinstance(layer, ElementwiseLayer) and type(layer).fn is not ElementwiseLayer.fn


def preferred(layer: Any) -> bool:
    """Whether ``method="auto"`` tries the expansion: smooth activations, not the kinked ReLU
    family (whose derivative, a step, has coefficients decaying like ``k^(-3/4)``: the
    arc-cosine features are exact in distribution there). By exact type: a subclass with a
    ``fn`` of its own is tried (``"auto"`` falls back to Monte Carlo when it misses)."""
    return expandable(layer) and type(layer) not in _KINKED


_KINKED = (A.ABRelu, A.Relu, A.LeakyRelu, A.Abs, A.Sign, RectifiedMonomial)


def coefficients(
    layer: Any, q: Tensor, degree: int, derivative: bool
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(a, m2, b, m2')``: ``a[..., k] = E[a(sqrt(q) z) h_k(z)]`` for ``k <= degree``, the second
    moment ``m2 = E[a(sqrt(q) z)^2]``, and the same for ``a'`` (None unless ``derivative``).

    ``q`` any shape (>= 0); Gauss-Hermite quadrature with ``2 max(degree, 16) + 64`` nodes, exact
    for polynomials of that degree and spectrally accurate for smooth ``a``.
    """
    z, proj = (torch.as_tensor(t, dtype=q.dtype, device=q.device)
               for t in _hermite_projector(max(degree, _MIN_TERMS)))
    weights = proj[0]  # h_0 = 1: the quadrature weights
    proj = proj[: degree + 1]
    x = torch.sqrt(torch.clamp(q, min=0))[..., None] * z
    f, df = _eval(layer.fn, x, derivative)
    a, m2 = f @ proj.T, (f * f) @ weights
    if df is None:
        return a, m2, None, None
    return a, m2, df @ proj.T, (df * df) @ weights


def relative_tails(c: Tensor, m2: Tensor) -> Tensor:
    """``tail_K / m2`` for every ``K`` (last axis): ``1 - sum_{k <= K} c_k^2 / m2`` (0 where m2 = 0)."""
    safe = torch.where(m2 > 0, m2, torch.ones_like(m2))[..., None]
    tails = 1.0 - torch.cumsum(c * c, dim=-1) / safe
    return torch.where(m2[..., None] > 0, tails.clamp(min=0), torch.zeros_like(tails))


def allocate(weights: list[float], budget: int) -> list[int]:
    """Split ``budget`` columns in proportion to ``weights`` (at least ``MIN_WIDTH`` each, fewer
    when the budget is short; the heaviest weight takes the rounding)."""
    n = len(weights)
    if n == 0:
        return []
    low = max(1, min(MIN_WIDTH, budget // n))
    total = sum(weights)
    out = [max(low, int(budget * w / total)) for w in weights]
    top = int(np.argmax(weights))
    while sum(out) > budget:
        i = int(np.argmax(out))
        out[i] -= min(out[i] - low, sum(out) - budget) or 1
    out[top] += budget - sum(out)
    return out


class _Expansion:
    """``[c_0, c_1 T_1(w), ..., c_K T_K(w)]`` for coefficients ``c`` given per row.

    ``importance`` ``(K + 1,)``: which degrees carry columns (above ``_ZERO``) and how many.
    The output has exactly ``width`` columns (zero columns pad an expansion that needs fewer).
    """

    def __init__(self, d: int, importance: np.ndarray, width: int, gen: torch.Generator) -> None:
        self.const = bool(importance[0] > _ZERO)
        degree = len(importance) - 1
        active = [k for k in range(1, degree + 1) if importance[k] > _ZERO]
        budget = width - int(self.const)
        keep = max(1, budget // MIN_WIDTH)
        if len(active) > keep:  # a small budget keeps the heaviest degrees
            active = sorted(sorted(active, key=lambda k: -importance[k])[:keep])
        weights = [float(importance[k]) * math.sqrt(k) for k in active]
        widths = dict(zip(active, allocate(weights, budget)))
        rest = [k for k in active if k != 1]
        if 1 in widths and d <= widths[1] and budget - d >= MIN_WIDTH * len(rest):  # degree 1 exactly: w
            widths = {1: d, **dict(zip(rest, allocate(weights[1:], budget - d)))} if rest else {1: d}
        self.active = active
        self.pad = budget - sum(widths.values())
        top = active[-1] if active else 0
        self.stages: list[Any] = []
        prev = d
        for k in range(1, top + 1):
            # a degree without columns still carries the chain, at the next degree's width
            w = widths.get(k) or widths[min(j for j in active if j > k)]
            if k == 1:
                self.stages.append(None if w == d and widths.get(1) == d else sketch(d, w, gen))
            else:
                self.stages.append(TensorSrht(prev, d, w, gen))
            prev = w

    def to(self, dtype: torch.dtype, device: torch.device) -> "_Expansion":
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.stages = [None if s is None else s.to(dtype, device) for s in self.stages]
        return out

    def __call__(self, w: Tensor, c: Tensor) -> Tensor:
        parts = [c[..., :1]] if self.const else []
        z = w
        for k, stage in enumerate(self.stages, 1):
            z = (w if stage is None else stage(w)) if k == 1 else stage(z, w)
            if k in self.active:
                parts.append(c[..., k : k + 1] * z)
        if self.pad:
            parts.append(w.new_zeros(*w.shape[:-1], self.pad))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


class HermiteActivation(S.Step):
    """The Hermite-feature step of a nonlinearity (module docstring).

    The truncation degrees and the column split are fitted on the first call (the map's
    calibration rows, see :class:`~torchntk.features.FeatureMap`), with draws from a generator
    seeded at compile time, so the map stays a function of its seed. ``fallback``: the Monte
    Carlo step used instead when the expansion misses the tolerance at ``MAX_DEGREE``
    (``method="auto"``); without one that is an :class:`UnsupportedLayerError`.
    """

    def __init__(self, layer: Any, d: S.Dims, width: int, seed: int, tolerance: float,
                 fallback: S.Step | None) -> None:
        self.layer, self.d_in, self.dpsi_in, self.width, self.seed = layer, d.dphi, d.dpsi, width, seed
        self.tolerance, self.fallback = tolerance, fallback
        self.with_ntk = bool(layer.has_ntk and d.dpsi is not None)
        self.dims = S.Dims(d.shape, width, width if self.with_ntk else None, False, False)
        self.fitted = False
        self.fit_variances: Tensor | None = None  # the calibration rows' pre-activation variances
        self.use_fallback = False
        self.degree = self.degree_ntk = None
        self.sig = self.der = None
        self.tensor: TensorSrht | None = None
        self.plain = None

    def to(self, dtype: torch.dtype, device: torch.device, precision: str = "full") -> "HermiteActivation":
        # the expansions stay in ``dtype`` at every precision; bfloat16 inputs (the features of
        # dense bfloat16 steps before this one) are cast back to ``dtype`` on entry
        out = super().to(dtype, device)
        out.sig = None if self.sig is None else self.sig.to(dtype, device)
        out.der = None if self.der is None else self.der.to(dtype, device)
        out.dtype = dtype
        return out

    # -- calibration ------------------------------------------------------------------------
    def _degree(self, c: Tensor, m2: Tensor) -> tuple[int | None, float]:
        """The smallest degree meeting the tolerance on every row (None: none <= MAX_DEGREE)."""
        worst = relative_tails(c, m2).reshape(-1, c.shape[-1]).amax(0)
        ok = torch.nonzero(worst <= self.tolerance).flatten()
        return (int(ok[0]) if ok.numel() else None), float(worst[-1])

    def fit(self, q: Tensor) -> None:
        q = q.detach().reshape(-1).to(device="cpu", dtype=torch.float64)
        a, m2, b, m2d = coefficients(self.layer, q, MAX_DEGREE, self.with_ntk)
        k_sig, tail = self._degree(a, m2)
        k_ntk, tail_d = self._degree(b, m2d) if self.with_ntk else (0, 0.0)
        self.fitted, self.fit_variances = True, q
        if k_sig is None or k_ntk is None:
            if self.fallback is not None:
                self.use_fallback = True
                return
            which = "a" if k_sig is None else "a'"
            raise UnsupportedLayerError(
                f"{self.layer!r} has no Hermite expansion within the tolerance {self.tolerance:g} up to degree "
                f"{MAX_DEGREE} at the calibration variances (<= {float(q.max()):.3g}): the relative tail of {which} "
                f"is {max(tail, tail_d):.2g}; use method='auto' or 'monte_carlo' (Monte Carlo features), a larger "
                "`hermite_tolerance`, or calibration inputs of smaller norm"
            )
        gen = torch.Generator().manual_seed(self.seed)
        self.degree, self.degree_ntk = k_sig, k_ntk
        imp = _importance(a[:, : k_sig + 1], m2)
        self.sig = _Expansion(self.d_in, imp, self.width, gen)
        if self.with_ntk:
            imp = _importance(b[:, : k_ntk + 1], m2d)
            # Theta Sdot = b_0(q1) b_0(q2) Theta + Theta sum_{k >= 1} ...: the first term by a plain
            # sketch of psi (m0 columns), the rest by the tensor sketch (width - m0 columns)
            rest = float(imp[1:].sum())
            m0 = 0
            if imp[0] > _ZERO and rest > _ZERO:
                m0 = min(self.width - MIN_WIDTH, max(MIN_WIDTH, round(self.width * imp[0] / (imp[0] + rest))))
            elif imp[0] > _ZERO:
                m0 = self.width
            self.split = m0
            self.plain = sketch(max(1, self.dpsi_in), m0, gen) if m0 else None
            imp[0] = 0.0
            self.der = _Expansion(self.d_in, imp, self.width, gen) if m0 < self.width else None
            self.tensor = TensorSrht(max(1, self.dpsi_in), self.width, self.width - m0, gen) if self.der else None

    # -- features ---------------------------------------------------------------------------
    def __call__(self, s: S.State) -> S.State:
        dtype = getattr(self, "dtype", None)
        if dtype is not None and s.phi.dtype != dtype:
            s = replace(s, phi=s.phi.to(dtype), psi=None if s.psi is None else s.psi.to(dtype))
        if not self.fitted:
            self.fit(s.q if s.q is not None else (s.phi * s.phi).sum(-1))
        if self.use_fallback:
            return self.fallback(s)
        norm2 = (s.phi * s.phi).sum(-1, keepdim=True)
        w = s.phi * torch.where(norm2 > 0, torch.rsqrt(torch.where(norm2 > 0, norm2, 1.0)), 0.0)
        q = s.q if s.q is not None else norm2[..., 0]
        deg = max(self.degree, self.degree_ntk if self.with_ntk else 0)
        a, m2, b, m2d = coefficients(self.layer, q, deg, self.with_ntk and s.psi is not None)
        self._check(a[..., : self.degree + 1], m2, q, "a")
        phi = self.sig(w, a)
        psi = None
        if self.with_ntk and s.psi is not None:
            if s.psi.shape[-1] == 0:  # Theta0 = 0
                psi = phi.new_zeros(*phi.shape[:-1], self.width)
            else:
                self._check(b[..., : self.degree_ntk + 1], m2d, q, "a'")
                parts = []
                if self.plain is not None:
                    parts.append(b[..., :1] * self.plain(s.psi))
                if self.der is not None:
                    parts.append(self.tensor(s.psi, self.der(w, b)))
                psi = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        return S.State(phi, psi, False, False)

    def _check(self, c: Tensor, m2: Tensor, q: Tensor, which: str) -> None:
        tail = relative_tails(c, m2)[..., -1]
        worst = float(tail.max()) if tail.numel() else 0.0
        if worst > WARN_FACTOR * self.tolerance:
            warnings.warn(
                f"{self.layer!r}: the Hermite expansion of {which} truncated at degree {c.shape[-1] - 1} leaves "
                f"{worst:.2g} of its second moment (tolerance {self.tolerance:g}) for pre-activation variances up "
                f"to {float(q.max()):.3g}; calibrate the FeatureMap on inputs like these (`calibration=`)",
                AccuracyWarning,
                stacklevel=4,
            )


def _importance(c: Tensor, m2: Tensor) -> np.ndarray:
    """``max over rows of c_k^2 / m2`` per degree."""
    safe = torch.where(m2 > 0, m2, torch.ones_like(m2))[:, None]
    return ((c * c) / safe).amax(0).numpy()
