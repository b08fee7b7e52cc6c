"""Gaussian expectations of products of an activation, by quadrature (private).

For a scalar function ``phi`` and a centred Gaussian pair

    (u, v) ~ N(0, [[q11, q12], [q12, q22]])

:func:`gaussian_expectations` returns ``sigma = E[phi(u) phi(v)]`` and
``sdot = E[phi'(u) phi'(v)]`` (``phi'`` by autograd), batched over any broadcastable
``q11, q12, q22`` tensors. Both rules start from the same safe factorization

    alpha = atan2(sqrt(max(q11 q22 - q12^2, 0)), q12)      (alpha = pi/2 when both are 0)
    u = sqrt(q11) z1,    v = sqrt(q22) (cos(alpha) z1 + sin(alpha) z2),    z ~ N(0, I_2)

``alpha`` is the angle between ``u`` and ``v``; it needs no division, so correlation +-1
(``alpha`` = 0 or pi) and zero variances are ordinary points.

Two rules are offered:

``"polar"`` (default)
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

from .._checks import check_choice
from ..errors import InvalidArgumentError

Fn = Callable[[torch.Tensor], torch.Tensor]

METHODS = ("polar", "hermite")
#: Default numbers of nodes: ``polar`` uses ``RADIAL`` Laguerre nodes times 4 arcs of
#: ``ANGULAR`` Legendre nodes; ``hermite`` uses ``HERMITE^2`` nodes.
RADIAL, ANGULAR, HERMITE = 48, 24, 48
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
    s, w = np.polynomial.laguerre.laggauss(n)
    return np.sqrt(2.0 * s), w / (2.0 * math.pi)  # radii and weights (with the 1/(2 pi))


@lru_cache(maxsize=None)
def _legendre01(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1.0) / 2.0, w / 2.0  # nodes and weights on [0, 1]


@lru_cache(maxsize=None)
def _hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.hermite.hermgauss(n)
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


def gaussian_expectations(
    fn: Fn,
    q11: torch.Tensor,
    q12: torch.Tensor,
    q22: torch.Tensor,
    *,
    derivative: bool = True,
    method: str = "polar",
    degree: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(E[phi(u) phi(v)], E[phi'(u) phi'(v)])`` for ``(u, v) ~ N(0, [[q11, q12], [q12, q22]])``.

    Args:
        fn: the elementwise activation ``phi`` (any torch function; ``phi'`` by autograd).
        q11, q12, q22: variances and covariance, tensors (or floats) that broadcast together;
            the result has their broadcast shape and dtype (float64 for Python floats).
        derivative: also return ``sdot`` (``None`` otherwise).
        method: ``"polar"`` (default; exact at kinks in 0) or ``"hermite"`` (tensor-product
            Gauss-Hermite); see the module docstring.
        degree: nodes per dimension: Laguerre radial nodes for ``"polar"`` (with
            ``degree // 2`` Legendre nodes on each of the 4 angular arcs, so ``2 degree^2``
            points), Hermite nodes per axis for ``"hermite"`` (``degree^2`` points).
            Defaults: 48 and 48 (polar: about 1e-5 relative for tanh, 1e-7 for erf, 1e-10
            for GELU at variances up to 3; ReLU-like activations are exact from degree 24).

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
    q11, q12, q22 = (torch.as_tensor(q, dtype=dtype, device=device) for q in (q11, q12, q22))
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
