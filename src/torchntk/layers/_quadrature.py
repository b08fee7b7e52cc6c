"""Gaussian expectations of products of an activation, by quadrature (private).

For a scalar function ``phi`` and a centred Gaussian pair

    (u, v) ~ N(0, [[q11, q12], [q12, q22]])

:func:`gaussian_expectations` returns ``sigma = E[phi(u) phi(v)]`` and
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
    ``"auto"`` uses it when the last 32 of its 256 coefficients hold less than 1e-4 of their
    norm (an error of about 1e-8), and the polar rule otherwise.
``"polar"``
    Polar coordinates ``z = r (cos theta, sin theta)``. Then ``u = sqrt(q11) r cos(theta)`` and
    ``v = sqrt(q22) r cos(theta - alpha)``: the lines ``u = 0`` and ``v = 0``, where ReLU-like
    activations have their kink (or jump), are the four angles ``-pi/2, alpha - pi/2, pi/2,
    alpha + pi/2``. The angle is integrated with Gauss-Legendre on each of the four arcs they
    bound, so kinks at 0 cost no accuracy. The arcs come in pairs ``theta, theta + pi``, which
    makes the angular sum an even function of ``r``; the radial integral
    ``int_0^inf r exp(-r^2/2) G(r) dr = int_0^inf exp(-s) G(sqrt(2 s)) ds`` is then done with
    Gauss-Laguerre in ``s = r^2 / 2`` (exact for positively homogeneous activations such as
    ReLU, geometric convergence for smooth ones).
``"hermite"``
    The plain tensor-product Gauss-Hermite rule in ``(z1, z2)`` (``degree^2`` nodes), as in
    neural-tangents' numerical activations: spectrally accurate for smooth ``phi``, but only
    algebraically convergent (about 1e-2 relative error at degree 20) for kinked ones.

Example:
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

from .._checks import check_choice
from ..errors import InvalidArgumentError

Fn = Callable[[torch.Tensor], torch.Tensor]

METHODS = ("auto", "series", "polar", "hermite")
#: Default numbers of nodes: ``polar`` uses ``RADIAL`` Laguerre nodes times 4 arcs of
#: ``ANGULAR`` Legendre nodes; ``hermite`` uses ``HERMITE^2`` nodes.
RADIAL, ANGULAR, HERMITE = 48, 24, 48
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


def angle(q11: torch.Tensor, q12: torch.Tensor, q22: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)``: ``s = sqrt(max(q11 q22 - q12^2, 0))`` and ``t = atan2(s, q12)`` (pi/2 at 0/0).

    ``t`` in ``[0, pi]`` is the angle between the two Gaussian variables (``cos t`` is their
    correlation). Gradients are finite everywhere, including correlation +-1.
    """
    s = safe_sqrt(q11 * q22 - q12 * q12)
    both_zero = (s == 0) & (q12 == 0)
    t = torch.atan2(s, torch.where(both_zero, torch.ones_like(q12), q12))
    return s, torch.where(both_zero, torch.full_like(t, math.pi / 2), t)


@lru_cache(maxsize=None)
def _laguerre(n: int) -> tuple[np.ndarray, np.ndarray]:
    s, w = special.roots_laguerre(n)
    return np.sqrt(2.0 * s), w / (2.0 * math.pi)  # radii and weights (with the 1/(2 pi))


@lru_cache(maxsize=None)
def _legendre01(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = special.roots_legendre(n)
    return (x + 1.0) / 2.0, w / 2.0  # nodes and weights on [0, 1]


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


def _polar(fn: Fn, q11, q12, q22, derivative: bool, radial: int, angular: int):
    dt = q11.dtype
    r, wr = (torch.as_tensor(a, dtype=dt, device=q11.device) for a in _laguerre(radial))
    x, wx = (torch.as_tensor(a, dtype=dt, device=q11.device) for a in _legendre01(angular))
    _, alpha = angle(q11, q12, q22)
    a = alpha[:, None]
    half = math.pi / 2
    # Two arcs of lengths alpha and pi - alpha; the other two are these plus pi (sign flip).
    theta = torch.cat([-half + a * x, a - half + (math.pi - a) * x], dim=1)  # (B, 2A)
    w_theta = torch.cat([a * wx, (math.pi - a) * wx], dim=1)  # (B, 2A)
    cu = torch.cos(theta)
    cv = torch.cos(theta - a)
    sign = torch.tensor([1.0, -1.0], dtype=dt, device=q11.device)
    # (B, R, 2A, 2): radius x angle x (theta, theta + pi)
    base_u = (cu[:, None, :, None] * r[None, :, None, None]) * sign
    base_v = (cv[:, None, :, None] * r[None, :, None, None]) * sign
    u = safe_sqrt(q11)[:, None, None, None] * base_u
    v = safe_sqrt(q22)[:, None, None, None] * base_v
    w = wr[None, :, None, None] * w_theta[:, None, :, None]
    fu, du = _eval(fn, u, derivative)
    fv, dv = _eval(fn, v, derivative)
    sigma = (w * fu * fv).sum(dim=(1, 2, 3))
    sdot = None if not derivative else (w * du * dv).sum(dim=(1, 2, 3))
    return sigma, sdot


def _product_hermite(fn: Fn, q11, q12, q22, derivative: bool, degree: int):
    dt = q11.dtype
    z, wz = (torch.as_tensor(a, dtype=dt, device=q11.device) for a in _hermite(degree))
    _, alpha = angle(q11, q12, q22)
    c, s = torch.cos(alpha)[:, None, None], torch.sin(alpha)[:, None, None]
    z1, z2 = z[None, :, None], z[None, None, :]
    u = safe_sqrt(q11)[:, None, None] * z1  # (B, H, 1)
    v = safe_sqrt(q22)[:, None, None] * (c * z1 + s * z2)  # (B, H, H)
    w = wz[:, None] * wz[None, :]
    fu, du = _eval(fn, u, derivative)
    fv, dv = _eval(fn, v, derivative)
    sigma = (w * fu * fv).sum(dim=(1, 2))
    sdot = None if not derivative else (w * du * dv).sum(dim=(1, 2))
    return sigma, sdot


@lru_cache(maxsize=None)
def _hermite_projector(terms: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``z`` and the matrix ``P[k, q] = w_q h_k(z_q)`` of ``E[g(z) h_k(z)] ~ P @ g(z)``.

    ``h_k = He_k / sqrt(k!)`` are the orthonormal probabilists' Hermite polynomials (by their
    three-term recurrence); the 1-D Gauss-Hermite rule has ``2 * terms + 64`` nodes.
    """
    z, w = special.roots_hermitenorm(2 * terms + 64)
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
    """``b_k(q) = E[phi(sqrt(q) z) h_k(z)]`` (and for ``phi'``), shape ``q.shape + (terms + 1,)``."""
    z, proj = (torch.as_tensor(a, dtype=q11.dtype, device=q11.device) for a in _hermite_projector(terms))

    def coefficients(q):
        x = safe_sqrt(q)[..., None] * z
        f, df = _eval(fn, x, derivative)
        return f @ proj.T, (None if df is None else df @ proj.T)

    b1, d1 = coefficients(q11)
    b2, d2 = (b1, d1) if q22 is q11 else coefficients(q22)
    return b1, d1, b2, d2


def _converged(*coefs: torch.Tensor | None) -> bool:
    """Whether the last 32 Hermite coefficients carry less than ``_SERIES_TOL`` of the norm."""
    for c in coefs:
        if c is None:
            continue
        c = c.detach()
        total = (c * c).sum(-1)
        tail = (c[..., -32:] ** 2).sum(-1)
        if bool((tail > _SERIES_TOL**2 * total).any()):
            return False
    return True


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


def _series(fn: Fn, q11, q12, q22, derivative: bool, terms: int, check: bool = False):
    """Mehler's expansion: ``E[phi(u) phi(v)] = sum_k b_k(q11) b_k(q22) rho^k``.

    ``b_k(q) = E[phi(sqrt(q) z) h_k(z)]`` for a standard normal ``z`` and ``rho = cos(t)`` the
    correlation; likewise for ``phi'``. The coefficients are computed once per variance (not per
    pair), so the cost is ``O(points * terms * nodes + pairs * terms)``. With ``check``, returns
    None when the expansion has not converged (see :func:`_converged`).
    """
    b1, d1, b2, d2 = _series_coefficients(fn, q11, q22, derivative, terms)
    if check and not _converged(b1, d1, b2, d2):
        return None
    _, t = angle(q11, q12, q22)
    rho = torch.cos(t)
    return _horner(b1, b2, rho), (_horner(d1, d2, rho) if derivative else None)


def gaussian_expectations(
    fn: Fn,
    q11: torch.Tensor,
    q12: torch.Tensor,
    q22: torch.Tensor,
    *,
    derivative: bool = True,
    method: str = "auto",
    degree: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(E[phi(u) phi(v)], E[phi'(u) phi'(v)])`` for ``(u, v) ~ N(0, [[q11, q12], [q12, q22]])``.

    Args:
        fn: the elementwise activation ``phi`` (any torch function; ``phi'`` by autograd).
        q11, q12, q22: variances and covariance, tensors (or floats) that broadcast together;
            the result has their broadcast shape and dtype (float64 for Python floats).
        derivative: also return ``sdot`` (``None`` otherwise).
        method: ``"auto"`` (default: ``"series"`` when its Hermite coefficients have
            converged, else ``"polar"``), ``"series"``, ``"polar"`` (exact at kinks in 0) or
            ``"hermite"`` (tensor-product Gauss-Hermite); see the module docstring.
        degree: ``"series"``: number of terms (default 256). ``"polar"`` (and the fallback of
            ``"auto"``): Laguerre radial nodes, with ``degree // 2`` Legendre nodes on each of
            the 4 angular arcs, so ``2 degree^2`` points (default 48). ``"hermite"``: nodes per
            axis, ``degree^2`` points (default 48).

    Gradients with respect to ``q11, q12, q22`` flow through both expectations.

    Example:
        >>> sigma, sdot = gaussian_expectations(torch.relu, torch.tensor(1.0), 0.0, 1.0)
        >>> round(float(sigma), 6)  # 1 / (2 pi)
        0.159155
    """
    check_choice("method", method, METHODS)
    if degree is not None and (not isinstance(degree, int) or degree < 2):
        raise InvalidArgumentError(f"`degree` must be an int >= 2, got {degree!r}")
    ref = next((q for q in (q11, q12, q22) if isinstance(q, torch.Tensor)), None)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float64
    device = ref.device if ref is not None else None
    same = q11 is q22
    q11, q12, q22 = (torch.as_tensor(q, dtype=dtype, device=device) for q in (q11, q12, q22))
    if method in ("series", "auto"):  # works on the un-broadcast variances (one expansion per point)
        out = _series(fn, q11, q12, q11 if same else q22, derivative, SERIES if method == "auto" else degree or SERIES,
                      check=method == "auto")
        if out is not None:
            return out
        method = "polar"  # "auto": the expansion did not converge (a kink, or a steep function)
    q11, q12, q22 = torch.broadcast_tensors(q11, q12, q22)
    shape = q11.shape
    q11, q12, q22 = (q.reshape(-1) for q in (q11, q12, q22))
    if method == "polar":
        radial = degree or RADIAL
        angular = max(degree // 2, 2) if degree else ANGULAR
        per_item = radial * angular * 4

        def rule(a, b, c):
            return _polar(fn, a, b, c, derivative, radial, angular)
    else:
        hdeg = degree or HERMITE
        per_item = hdeg * hdeg

        def rule(a, b, c):
            return _product_hermite(fn, a, b, c, derivative, hdeg)

    chunk = max(1, _CHUNK_POINTS // per_item)
    sigmas, sdots = [], []
    for start in range(0, max(q11.numel(), 1), chunk):
        sl = slice(start, start + chunk)
        sg, sd = rule(q11[sl], q12[sl], q22[sl])
        sigmas.append(sg)
        sdots.append(sd)
    sigma = torch.cat(sigmas).reshape(shape)
    sdot = torch.cat(sdots).reshape(shape) if derivative else None
    return sigma, sdot
