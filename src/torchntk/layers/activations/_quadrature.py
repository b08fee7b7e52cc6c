"""Gaussian expectations of products of an activation, by quadrature (private): the rules.

For a scalar function ``phi`` and a centred Gaussian pair

    (u, v) ~ N(0, [[q11, q12], [q12, q22]])

:func:`~torchntk.layers.activations._expectations.gaussian_expectations` returns ``sigma = E[phi(u) phi(v)]`` and
``sdot = E[phi'(u) phi'(v)]`` (``phi'`` by autograd), batched over any broadcastable
``q11, q12, q22`` tensors. All rules use the angle ``alpha`` of the safe factorization

    alpha = atan2(sqrt(max(q11 q22 - q12^2, 0)), q12)      (alpha = pi/2 when both are 0)
    u = sqrt(q11) z1,    v = sqrt(q22) (cos(alpha) z1 + sin(alpha) z2),    z ~ N(0, I_2)

``alpha`` is the angle between ``u`` and ``v``; it needs no division, so correlation +-1
(``alpha`` = 0 or pi) and zero variances are ordinary points.

Three rules are offered, and ``"auto"`` (the default) picks the first that fits:

``"series"``
    Mehler's expansion in orthonormal Hermite polynomials ``h_k = He_k / sqrt(k!)``:
    ``E[phi(u) phi(v)] = sum_k b_k(q11) b_k(q22) cos(alpha)^k`` with
    ``b_k(q) = E[phi(sqrt(q) z) h_k(z)]`` (a 1-D Gauss-Hermite rule). The coefficients are
    computed once per *point*, so a kernel of ``P`` pairs costs ``O(P * terms)``: tens of times
    faster than the 2-D rules. It converges fast for smooth ``phi`` and slowly for kinks;
    ``"auto"`` uses it for a pair when, at both of its points, the last 32 of its 256
    coefficients hold less than 1e-4 of their norm and two Gauss-Hermite rules agree on them
    (an error of about 1e-8), and the polar rule otherwise: the choice is made per pair, from
    its own variances, so a pair's value does not depend on the rest of the batch.
``"polar"``
    Polar coordinates ``z = r (cos theta, sin theta)``. Then ``u = sqrt(q11) r cos(theta)`` and
    ``v = sqrt(q22) r cos(theta - alpha)``: the lines ``u = 0`` and ``v = 0``, where ReLU-like
    activations have their kink (or jump) and saturating ones their steep part, bound four
    arcs of angle. Each arc is integrated with the tanh-sinh rule, whose nodes crowd into its
    two ends; the radius with the trapezoid rule in ``x``, ``r = log(1 + e^x)`` (logarithmic
    spacing for small ``r``, where ``phi(sigma r)`` has its features when ``sigma`` is large).
    Both converge geometrically for piecewise-analytic ``phi``, at any scale of the variances.
    The rule on every other node gives an error estimate per pair; ``"auto"`` picks the nodes
    per pair from its larger variance (``_TIERS``), takes more for the pairs that miss
    :data:`TOLERANCE`, and warns (:class:`~torchntk.errors.AccuracyWarning`) for the pairs
    that still miss it (fast-oscillating ``phi`` at large variances, e.g. ``sin`` beyond a
    variance of about 100).
``"hermite"``
    The plain tensor-product Gauss-Hermite rule in ``(z1, z2)`` (``degree^2`` nodes), as in
    neural-tangents' numerical activations: spectrally accurate for smooth ``phi``, but only
    algebraically convergent (about 1e-2 relative error at degree 20) for kinked ones.

Example:
    >>> from torchntk.layers.activations._expectations import gaussian_expectations
    >>> q = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    >>> sigma, sdot = gaussian_expectations(torch.tanh, q[0], q[1], q[2])
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from scipy import special

from ...errors import InvalidArgumentError
from ._scaling import _in_range, _ldexp, _scaled

Fn = Callable[[torch.Tensor], torch.Tensor]

METHODS = ("auto", "series", "polar", "hermite")
#: Default numbers of nodes: ``polar`` uses ``RADIAL`` Laguerre nodes times 4 arcs of
#: ``ANGULAR`` Legendre nodes; ``hermite`` uses ``HERMITE^2`` nodes.
RADIAL, ANGULAR, HERMITE = 65, 41, 48
#: ``"auto"``: nodes of the polar rule (radial, angular per arc) for the pairs whose larger
#: variance is at most the bound: a pre-activation of standard deviation ``sigma`` puts the steep
#: part of a saturating ``phi`` at radius ``1/sigma`` and angle ``1/(sigma r)`` from the kinks.
#: A pair whose error estimate misses :data:`TOLERANCE` is computed again with the next tier's.
_TIERS = ((10.0, RADIAL, ANGULAR), (1e3, 65, 61), (1e5, 97, 121), (math.inf, 129, 161))
#: Relative error (against ``E|phi(u) phi(v)|``) above which ``"auto"`` warns.
TOLERANCE = 1e-6
#: Default number of terms of the ``"series"`` method (Hermite polynomials of degree <= it).
SERIES = 256
#: ``"auto"`` uses the series when its last 32 coefficients hold less than this part of the norm.
_SERIES_TOL = 1e-4
#: Quadrature points evaluated at once (bounds the memory of large kernel batches).
_CHUNK_POINTS = 1 << 22


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` whose gradient is 0 (not inf or NaN) where ``x <= 0``."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


#: The determinant floor of :func:`angle` (``floor=True``), in units of the dtype's epsilon.
DET_FLOOR_EPS = 8


def angle(
    q11: torch.Tensor, q12: torch.Tensor, q22: torch.Tensor, *, floor: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)``: ``s = sqrt(max(q11 q22 - q12^2, 0))`` and ``t = atan2(s, q12)`` (pi/2 at 0/0).

    ``t`` in ``[0, pi]`` is the angle between the two Gaussian variables (``cos t`` is their
    correlation). Gradients are finite everywhere, including correlation +-1. Variances beyond
    the safe range (where ``q11 q22`` would overflow or underflow: input scales beyond about
    1e75 or below 1e-75 made every angle 0) are rescaled exactly first: ``t`` is invariant,
    ``s`` scales as ``q12``.

    ``floor``: subtract the rounding noise of the determinant, ``f q11 q22`` with
    ``f = 8 eps`` (:data:`DET_FLOOR_EPS`; 16 units of rounding, 1.8e-15 in float64), before the
    square root. Covariances carry rounding errors of a few units relative (their matmul, the
    rules before), so near correlation 1 the computed ``q11 q22 - q12^2`` is noise of size
    ~``4 u q11 q22`` around the true, tiny determinant, and its square root turns that into
    angles of ~``sqrt(u)`` (1e-8) that differ from pair to pair: the degree-0 arc-cosine kernel
    (``Sign``, ``RectifiedMonomial(0)``, and ``RectifiedMonomial(1)``'s ``sdot``) of near-duplicate
    inputs was indefinite (min eigenvalue -3.6e-10 of the largest, -1.8e-6 through two layers).
    With the floor, pairs within the noise are exact duplicates (angle 0: a consistent PSD
    block); angles below ``sqrt(2 f)`` (6e-8) become 0 and larger ones move by about
    ``f / t^2`` relative, the order of what the rounded covariances already leave.
    """
    if not _in_range(q11, q22):
        a, b, d, k = _scaled(q11, q12, q22)
        s, t = angle(a, b, d, floor=floor)
        return _ldexp(s, k), t
    p = q11 * q22
    det = p - q12 * q12
    s = safe_sqrt(det - p * (DET_FLOOR_EPS * torch.finfo(p.dtype).eps) if floor else det)
    both_zero = (s == 0) & (q12 == 0)
    t = torch.atan2(s, torch.where(both_zero, torch.ones_like(q12), q12))
    return s, torch.where(both_zero, torch.full_like(t, math.pi / 2), t)


@lru_cache(maxsize=None)
def _hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = special.roots_hermite(n)
    return math.sqrt(2.0) * x, w / math.sqrt(math.pi)  # standard-normal nodes and weights


def _eval(fn: Fn, x: torch.Tensor, derivative: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``fn(x)`` and, if asked, ``fn'(x)`` by autograd (elementwise ``fn``).

    When ``x`` carries a graph (the caller differentiates the kernel), the derivative is built
    with ``create_graph=True`` so that it is differentiable too.
    """
    if not derivative:
        y = fn(x)
        _check_elementwise(y, x)
        return y, None
    with torch.enable_grad():
        keep = x.requires_grad
        leaf = x if keep else x.detach().requires_grad_(True)
        y = fn(leaf)
        _check_elementwise(y, x)
        if y.requires_grad:
            (dy,) = torch.autograd.grad(y.sum(), leaf, create_graph=keep, allow_unused=True)
        else:
            dy = None
    if dy is None:
        dy = torch.zeros_like(x)
    return (y if keep else y.detach()), dy


def _check_elementwise(y: object, x: torch.Tensor) -> None:
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise InvalidArgumentError(
            f"the activation `fn` must be elementwise (a tensor of the input's shape "
            f"{tuple(x.shape)}), got {shape}"
        )


@lru_cache(maxsize=None)
def _radial(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Radii and weights of ``(1 / 2 pi) int_0^inf g(r) r exp(-r^2/2) dr ~ sum_k w_k g(r_k)``.

    Trapezoid rule in ``x`` with ``r = log(1 + e^x)``: logarithmic spacing for small ``r`` (a
    feature of ``phi(sigma r)`` sits at ``r ~ 1/sigma``, at any scale) and linear spacing where
    the Gaussian decays. ``x`` runs from ``r = 1e-7`` to ``r = 9.6`` (the cut-offs lose less than
    1e-13 of the integral for ``g`` growing at most polynomially).
    """
    lo, hi = math.log(math.expm1(1e-7)), 9.6
    x = np.linspace(lo, hi, n)
    r = np.logaddexp(0.0, x)
    w = (x[1] - x[0]) * special.expit(x) * r * np.exp(-r * r / 2) / (2.0 * math.pi)
    return r, w


@lru_cache(maxsize=None)
def _tanh_sinh(n: int, reach: float = 3.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tanh-sinh (double exponential) rule on ``[0, 1]``: distances of the nodes from the left
    end, from the right end (each exact to full relative precision, however close) and weights.

    ``x = (1 + tanh((pi/2) sinh t)) / 2``, trapezoid in ``t`` on ``[-reach, reach]``: the nodes
    crowd double-exponentially into both ends, where the kinks (and, for large variances, the
    steep parts) of ``phi(u) phi(v)`` lie.
    """
    t = np.linspace(-reach, reach, n)
    g = (math.pi / 2) * np.sinh(t)
    left, right = special.expit(2 * g), special.expit(-2 * g)
    w = (t[1] - t[0]) * (math.pi / 4) * np.cosh(t) / np.cosh(g) ** 2
    return left, right, w


def _polar(fn: Fn, q11, q12, q22, derivative: bool, radial: int, angular: int):
    """The polar rule (module docstring): ``(sigma, sdot, error)`` per pair, 1-D inputs.

    With ``alpha`` the angle of the pair, the four arcs between the lines ``u = 0`` and
    ``v = 0`` are, by the distances ``phi`` and ``psi = L - phi`` from their two ends,

        arc of length alpha:       u =  sqrt(q11) r sin(phi),  v = -sqrt(q22) r sin(psi)
        arc of length pi - alpha:  u =  sqrt(q11) r sin(psi),  v =  sqrt(q22) r sin(phi)

    and the same two with ``(u, v) -> (-u, -v)``. ``error`` estimates the relative error of
    ``sigma`` and ``sdot`` against ``E|phi(u) phi(v)|`` (and the same for ``phi'``): the rule on
    every other node (double step) differs from the full one by ``d``, and the trapezoid rules
    converge geometrically, so the full rule is off by about ``d^2`` (relative).
    """
    dt, dev = q11.dtype, q11.device
    r, wr = (torch.as_tensor(a, dtype=dt, device=dev) for a in _radial(radial))
    left, right, wt = (torch.as_tensor(a, dtype=dt, device=dev) for a in _tanh_sinh(angular))
    _, alpha = angle(q11, q12, q22)
    a = alpha[:, None]
    b = math.pi - a
    su = torch.cat([torch.sin(a * left), torch.sin(b * right)], dim=1)  # (B, 2A)
    sv = torch.cat([-torch.sin(a * right), torch.sin(b * left)], dim=1)
    w_theta = torch.cat([a * wt, b * wt], dim=1)
    sign = torch.tensor([1.0, -1.0], dtype=dt, device=dev)
    # (B, R, 2A, 2): radius x angle x (theta, theta + pi)
    u = safe_sqrt(q11)[:, None, None, None] * ((su[:, None, :, None] * r[None, :, None, None]) * sign)
    v = safe_sqrt(q22)[:, None, None, None] * ((sv[:, None, :, None] * r[None, :, None, None]) * sign)
    w = wr[None, :, None, None] * w_theta[:, None, :, None]
    fu, du = _eval(fn, u, derivative)
    fv, dv = _eval(fn, v, derivative)
    sigma = (w * fu * fv).sum(dim=(1, 2, 3))
    sdot = None if not derivative else (w * du * dv).sum(dim=(1, 2, 3))
    with torch.no_grad():
        error = _halved_error(w, fu * fv, sigma)
        if derivative:
            error = torch.maximum(error, _halved_error(w, du * dv, sdot))
    return sigma, sdot, error


def _halved_error(w: torch.Tensor, f: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """Relative error estimate ``(|full - coarse| / sum w |f|)^2`` of a product rule whose
    double-step version keeps the even nodes of the radial and of each arc's angular axes."""
    f, w, full = f.detach(), w.detach(), full.detach()
    coarse = 4 * (w * f)[:, ::2, :, :].unflatten(2, (2, -1))[:, :, :, ::2].sum(dim=(1, 2, 3, 4))
    scale = (w * f.abs()).sum(dim=(1, 2, 3))
    rel = (full - coarse).abs() / torch.where(scale > 0, scale, torch.ones_like(scale))
    return rel * rel


def _product_hermite(fn: Fn, q11, q12, q22, derivative: bool, degree: int):
    dt = q11.dtype
    z, wz = (torch.as_tensor(a, dtype=dt, device=q11.device) for a in _hermite(degree))
    z, wz = (z - z.flip(0)) / 2, (wz + wz.flip(0)) / 2  # exactly symmetric about 0
    _, alpha = angle(q11, q12, q22)
    # the symmetric factorization u = sqrt(q11) (c z1 + s z2), v = sqrt(q22) (c z1 - s z2) with
    # c = cos(alpha / 2), s = sin(alpha / 2) (correlation c^2 - s^2 = cos(alpha)): swapping the
    # two points maps the nodes onto themselves (z2 -> -z2), so the kernel is symmetric to
    # rounding even where the rule is inexact (the factorization u = sqrt(q11) z1 was 1e-3
    # asymmetric for tanh at variance 1, degree 16)
    c, s = torch.cos(alpha / 2)[:, None, None], torch.sin(alpha / 2)[:, None, None]
    z1, z2 = z[None, :, None], z[None, None, :]
    u = safe_sqrt(q11)[:, None, None] * (c * z1 + s * z2)  # (B, H, H)
    v = safe_sqrt(q22)[:, None, None] * (c * z1 - s * z2)
    w = wz[:, None] * wz[None, :]
    fu, du = _eval(fn, u, derivative)
    fv, dv = _eval(fn, v, derivative)
    sigma = (w * fu * fv).sum(dim=(1, 2))
    sdot = None if not derivative else (w * du * dv).sum(dim=(1, 2))
    return sigma, sdot


@lru_cache(maxsize=None)
def _hermite_projector(terms: int, extra: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``z`` and the matrix ``P[k, q] = w_q h_k(z_q)`` of ``E[g(z) h_k(z)] ~ P @ g(z)``.

    ``h_k = He_k / sqrt(k!)`` are the orthonormal probabilists' Hermite polynomials (by their
    three-term recurrence); the 1-D Gauss-Hermite rule has ``2 * terms + extra`` nodes.
    """
    z, w = special.roots_hermitenorm(2 * terms + extra)
    root_w = np.sqrt(w / math.sqrt(2 * math.pi))
    # the recurrence on h_k(z) sqrt(w) stays bounded where h_k(z) alone would overflow
    h = np.empty((terms + 1, z.size))
    h[0] = root_w
    if terms >= 1:
        h[1] = z * root_w
    for k in range(1, terms):
        h[k + 1] = (z * h[k] - math.sqrt(k) * h[k - 1]) / math.sqrt(k + 1)
    return z, h * root_w


def _series_coefficients(fn: Fn, q11, q22, derivative: bool, terms: int):
    """``b_k(q) = E[phi(sqrt(q) z) h_k(z)]`` (and for ``phi'``), shape ``q.shape + (terms + 2,)``.

    The last entry is ``||b - b'||`` where ``b'`` are the same coefficients by a Gauss-Hermite
    rule with 32 more nodes: two rules agree when both resolve ``phi(sqrt(q) z)``, and disagree
    when it oscillates faster than their nodes (the aliased coefficients of ``sin(100 z)`` look
    converged). See :func:`_converged`.
    """
    rules = [
        tuple(torch.as_tensor(a, dtype=q11.dtype, device=q11.device) for a in _hermite_projector(terms, extra))
        for extra in (64, 96)
    ]

    def coefficients(q):
        out = []
        for z, proj in rules:
            f, df = _eval(fn, safe_sqrt(q)[..., None] * z, derivative)
            out.append((f @ proj.T, None if df is None else df @ proj.T))
        (b, d), (b2, d2) = out

        def checked(c, c2):
            return torch.cat([c, (c.detach() - c2.detach()).norm(dim=-1, keepdim=True)], dim=-1)

        return checked(b, b2), (None if d is None else checked(d, d2))

    b1, d1 = coefficients(q11)
    b2, d2 = (b1, d1) if q22 is q11 else coefficients(q22)
    return b1, d1, b2, d2


def _converged(*coefs: torch.Tensor | None) -> torch.Tensor:
    """Per point: whether the expansion holds ``phi(sqrt(q) z)`` to ``_SERIES_TOL``.

    Two checks on the coefficients of :func:`_series_coefficients` (last entry: the gap between
    two rules): the last 32 carry less than ``_SERIES_TOL`` of the norm, and the two rules agree
    to ``_SERIES_TOL^2`` of it. The truncation error is then about ``_SERIES_TOL^2`` of
    ``E|phi(u) phi(v)|``.
    """
    ok = None
    for c in coefs:
        if c is None:
            continue
        c = c.detach()
        gap, c = c[..., -1], c[..., :-1]
        total = (c * c).sum(-1)
        tail = (c[..., -32:] ** 2).sum(-1)
        fine = (tail <= _SERIES_TOL**2 * total) & (gap * gap <= _SERIES_TOL**4 * total) & torch.isfinite(total)
        ok = fine if ok is None else ok & fine
    return ok


def _horner(c1: torch.Tensor, c2: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """``sum_k c1[..., k] c2[..., k] rho^k`` (broadcasting), by Horner's rule."""
    terms = c1.shape[-1] - 1
    shape = torch.broadcast_shapes(c1.shape[:-1], c2.shape[:-1], rho.shape)
    grad = torch.is_grad_enabled() and (c1.requires_grad or c2.requires_grad or rho.requires_grad)
    acc = (c1[..., terms] * c2[..., terms]).expand(shape).clone()
    for k in range(terms - 1, -1, -1):
        if grad:
            acc = torch.addcmul(c1[..., k] * c2[..., k], acc, rho)
        else:  # in place: no pair-sized temporaries
            acc.mul_(rho).addcmul_(c1[..., k], c2[..., k])
    return acc


def _series(fn: Fn, q11, q12, q22, derivative: bool, terms: int):
    """Mehler's expansion: ``E[phi(u) phi(v)] = sum_k b_k(q11) b_k(q22) rho^k``.

    ``b_k(q) = E[phi(sqrt(q) z) h_k(z)]`` for a standard normal ``z`` and ``rho = cos(t)`` the
    correlation; likewise for ``phi'``. The coefficients are computed once per variance (not per
    pair), so the cost is ``O(points * terms * nodes + pairs * terms)``. Returns
    ``(sigma, sdot, converged)`` with ``converged`` per pair (both points pass
    :func:`_converged`), of the broadcast shape.
    """
    b1, d1, b2, d2 = _series_coefficients(fn, q11, q22, derivative, terms)
    ok = _converged(b1, d1) & _converged(b2, d2)
    _, t = angle(q11, q12, q22)
    rho = torch.cos(t)
    sigma = _horner(b1[..., :-1], b2[..., :-1], rho)
    sdot = _horner(d1[..., :-1], d2[..., :-1], rho) if derivative else None
    return sigma, sdot, ok.expand(sigma.shape)
