"""Gaussian expectations of products of an activation (private): the rule chosen per pair.

:func:`gaussian_expectations` applies the rules of :mod:`torchntk.layers.activations._quadrature`
(``"series"``, ``"polar"``, ``"hermite"``, or ``"auto"``: the series where it has converged and
the polar rule elsewhere), in chunks of bounded memory, and warns
(:class:`~torchntk.errors.AccuracyWarning`) for the pairs whose estimated error exceeds
:data:`~torchntk.layers.activations._quadrature.TOLERANCE`.
"""

from __future__ import annotations

import math
import warnings

import torch

from ..._checks import check_choice, check_int
from ...errors import AccuracyWarning
from ._quadrature import (
    _CHUNK_POINTS,
    _SERIES_TOL,
    _TIERS,
    HERMITE,
    METHODS,
    SERIES,
    TOLERANCE,
    Fn,
    _polar,
    _product_hermite,
    _series,
)



def _warn_inaccurate(error: torch.Tensor, q11: torch.Tensor, q22: torch.Tensor, fn: Fn) -> None:
    """Issue an :class:`~torchntk.errors.AccuracyWarning` for the pairs whose estimated relative
    error exceeds :data:`TOLERANCE`."""
    bad = error > TOLERANCE
    if not bool(bad.any()):
        return
    var = torch.maximum(q11, q22).detach()[bad]
    name = getattr(fn, "__name__", None) or repr(fn)
    warnings.warn(
        f"Gaussian expectations of {name}: {int(bad.sum())} of {error.numel()} pairs may be off by "
        f"up to {float(error.max()):.1e} (relative), above the tolerance {TOLERANCE:g}; their "
        f"pre-activation variances reach {float(var.max()):.3g} (an oscillating or steep activation "
        "at that scale; a closed form, or Elementwise(..., nngp_fn=...), is exact)",
        AccuracyWarning,
        stacklevel=3,
    )


def _chunked_rule(rule, q11, q12, q22, per_item: int, derivative: bool):
    """``rule`` on 1-D pairs in chunks of at most ``_CHUNK_POINTS`` quadrature points."""
    chunk = max(1, _CHUNK_POINTS // per_item)
    parts = [rule(q11[i : i + chunk], q12[i : i + chunk], q22[i : i + chunk]) for i in range(0, max(q11.numel(), 1), chunk)]
    sigma = torch.cat([p[0] for p in parts])
    sdot = torch.cat([p[1] for p in parts]) if derivative else None
    error = torch.cat([p[2] for p in parts]) if len(parts[0]) > 2 else None
    return sigma, sdot, error


def _polar_pairs(fn: Fn, q11, q12, q22, derivative: bool, degree: int | None):
    """The polar rule on 1-D pairs: ``degree`` nodes in each direction, or (``None``) the nodes
    of :data:`_TIERS` chosen per pair from its larger variance. Returns ``(sigma, sdot, error)``."""
    if degree is not None:
        n = degree | 1  # odd: the even nodes form the double-step rule of the error estimate

        def rule(a, b, c):
            return _polar(fn, a, b, c, derivative, n, n)

        return _chunked_rule(rule, q11, q12, q22, 4 * n * n, derivative)
    qmax = torch.maximum(q11, q22).detach()
    sigma = torch.zeros_like(q12)
    sdot = torch.zeros_like(q12) if derivative else None
    error = torch.full(q12.shape, math.inf, dtype=q12.dtype, device=q12.device)
    start = torch.zeros(q12.shape, dtype=torch.long, device=q12.device)
    for level, (bound, _, _) in enumerate(_TIERS[:-1]):
        start += (qmax > bound) | (qmax != qmax)
    for level, (_, radial, angular) in enumerate(_TIERS):
        # the pairs that start at this level, and those of the lower levels that missed the tolerance
        todo = (start == level) | ((start < level) & (error > TOLERANCE))
        idx = torch.nonzero(todo).flatten()
        if idx.numel() == 0:
            continue

        def rule(a, b, c, radial=radial, angular=angular):
            return _polar(fn, a, b, c, derivative, radial, angular)

        sg, sd, er = _chunked_rule(rule, q11[idx], q12[idx], q22[idx], 4 * radial * angular, derivative)
        sigma = sigma.index_put((idx,), sg)
        if derivative:
            sdot = sdot.index_put((idx,), sd)
        error[idx] = er
    return sigma, sdot, error


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
            ``"auto"``): radial nodes and angular nodes per arc (made odd), ``4 degree^2``
            points; default: chosen per pair from its variances (65 x 41 up to 129 x 161).
            ``"hermite"``: nodes per axis, ``degree^2`` points (default 48). With the default
            degree, ``"auto"``, ``"polar"`` and ``"series"`` warn
            (:class:`~torchntk.errors.AccuracyWarning`) for pairs whose estimated error exceeds
            :data:`TOLERANCE` (1e-6 of ``E|phi(u) phi(v)|``).

    Gradients with respect to ``q11, q12, q22`` flow through both expectations.

    Example:
        >>> sigma, sdot = gaussian_expectations(torch.relu, torch.tensor(1.0), 0.0, 1.0)
        >>> round(float(sigma), 6)  # 1 / (2 pi)
        0.159155
    """
    method = check_choice("method", method, METHODS, any_case=True)
    degree = check_int("degree", degree, minimum=2, allow_none=True)
    ref = next((q for q in (q11, q12, q22) if isinstance(q, torch.Tensor)), None)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float64
    device = ref.device if ref is not None else None
    same = q11 is q22
    q11, q12, q22 = (torch.as_tensor(q, dtype=dtype, device=device) for q in (q11, q12, q22))
    if method in ("series", "auto"):  # works on the un-broadcast variances (one expansion per point)
        terms = degree or SERIES if method == "series" else SERIES
        sigma, sdot, ok = _series(fn, q11, q12, q11 if same else q22, derivative, terms)
        if bool(ok.all()):
            return sigma, sdot
        if method == "series":
            if degree is None:
                _warn_inaccurate(torch.where(ok, 1.0, math.inf).to(dtype) * _SERIES_TOL, *torch.broadcast_tensors(q11, q22), fn)
            return sigma, sdot
    q11, q12, q22 = torch.broadcast_tensors(q11, q12, q22)
    shape = q11.shape
    q11, q12, q22 = (q.reshape(-1) for q in (q11, q12, q22))
    if method == "hermite":
        hdeg = degree or HERMITE

        def rule(a, b, c):
            return _product_hermite(fn, a, b, c, derivative, hdeg)

        sigma, sdot, _ = _chunked_rule(rule, q11, q12, q22, hdeg * hdeg, derivative)
        return sigma.reshape(shape), (sdot.reshape(shape) if derivative else None)
    if method == "polar":
        sigma, sdot, error = _polar_pairs(fn, q11, q12, q22, derivative, degree)
    else:  # "auto": the polar rule on the pairs whose expansion has not converged
        idx = torch.nonzero(~ok.reshape(-1)).flatten()
        sg, sd, error = _polar_pairs(fn, q11[idx], q12[idx], q22[idx], derivative, degree)
        sigma = sigma.reshape(-1).index_put((idx,), sg)
        sdot = sdot.reshape(-1).index_put((idx,), sd) if derivative else None
        q11, q22 = q11[idx], q22[idx]
    if degree is None:
        _warn_inaccurate(error, q11, q22, fn)
    return sigma.reshape(shape), (sdot.reshape(shape) if derivative else None)
