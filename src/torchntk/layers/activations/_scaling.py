"""Exact power-of-two rescaling of covariances at extreme variances (private).

The closed forms multiply variances (``q11 q22``, ``q12^2``), which overflows or underflows
long before the kernels do. Where a variance leaves ``[2^-E, 2^E]`` (:func:`_safe_exponent`),
the rules evaluate a rescaled covariance instead, ``(q11 / 4^k1, q12 / 2^(k1+k2), q22 / 4^k2)``
with each variance in ``[1, 4)`` (exact: powers of two round nothing), and scale the result
back by the rule's homogeneity.
"""

from __future__ import annotations

import math

import torch

from ...errors import NonFiniteError

Tensor = torch.Tensor


def _safe_exponent(dtype: torch.dtype) -> int:
    """``E`` such that variances in ``[2^-E, 2^E]`` (or 0) keep ``q11 q22``, ``q12^2`` and the
    closed forms' sums inside the range of ``dtype``: 480 for float64 (largest exponent 1024), 60
    for float32 and bfloat16 (128), 7 for float16 (16), the same 15/32 of the range."""
    return (math.frexp(torch.finfo(dtype).max)[1] * 15) // 32


def _variance_range(q11: Tensor, q22: Tensor) -> tuple[bool, bool]:
    """``(in_range, positive)``: whether every nonzero variance lies in ``[2^-E, 2^E]`` with ``E``
    of :func:`_safe_exponent` (the plain formulas are then free of overflow and underflow; else
    the scaled forms are used), and whether every variance is > 0 (then, in range, every
    ``q11 q22`` product is > 0). One pass per tensor (the variances are per point: small next
    to the pairs). An infinite variance (the covariance overflowed before the layer) raises
    :class:`~torchntk.errors.NonFiniteError`: no scaling recovers it."""
    exponent = _safe_exponent(q11.dtype)
    hi, lo = 2.0**exponent, 2.0**-exponent
    positive = True
    for q in (q11, q22):
        if q.numel() == 0:
            positive = False
            continue
        q = q.detach()
        bottom, top = torch.aminmax(q)
        bottom, top = float(bottom), float(top)
        if top == math.inf:
            raise NonFiniteError(_overflowed(q.dtype))
        if not top <= hi:
            return top != top, False  # NaN: no scaling helps, leave it to the plain formula
        positive = positive and bottom > 0
        if bottom < lo and float(torch.where(q > 0, q, torch.full_like(q, hi)).min()) < lo:
            return False, False
    return True, positive


def _overflowed(dtype: torch.dtype, who: str = "a nonlinearity") -> str:
    """The message for a pre-activation variance that overflowed ``dtype`` before ``who``."""
    return (
        f"{who}: a pre-activation variance is inf (beyond {dtype}'s range, {torch.finfo(dtype).max:.3g}); "
        "the inputs (or the weights) are too large for the kernel to be represented: rescale the inputs"
    )


def _in_range(q11: Tensor, q22: Tensor) -> bool:
    """Whether every nonzero variance lies in the safe range of :func:`_variance_range`."""
    return _variance_range(q11, q22)[0]


def _half_exponent(q: Tensor) -> Tensor:
    """``k`` with ``q / 4^k`` in ``[1, 4)`` for ``q > 0`` (0 elsewhere), as a float tensor."""
    q = q.detach()
    _, e = torch.frexp(torch.where(q > 0, q, torch.ones_like(q)))
    return torch.where(q > 0, torch.div(e - 1, 2, rounding_mode="floor"), torch.zeros_like(e)).to(q.dtype)


def _ldexp(x: Tensor, e: Tensor) -> Tensor:
    """``x * 2^e`` for integer-valued ``e``, exactly (``torch.ldexp`` forms ``2^e`` first, which
    overflows or underflows beyond +-1023): equal power-of-two factors of at most ``2^700``,
    applied in turn so that no intermediate leaves the range between ``x`` and the result (a
    zero ``x`` stays 0, an overflowing result is inf)."""
    top = float(e.detach().abs().max()) if isinstance(e, Tensor) and e.numel() else abs(float(e))
    parts = max(3, math.ceil(top / 700))
    step = torch.trunc(torch.as_tensor(e, dtype=x.dtype, device=x.device) / parts)
    for _ in range(parts - 1):
        x = x * torch.pow(2.0, step)
    return x * torch.pow(2.0, e - (parts - 1) * step)


def _scaled(q11: Tensor, q12: Tensor, q22: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Exact power-of-two rescaling of a covariance: ``(q11 / 4^k1, q12 / 2^(k1+k2), q22 / 4^k2,
    k1 + k2)`` with each variance in ``[1, 4)`` (multiplying by powers of two rounds nothing)."""
    k1, k2 = _half_exponent(q11), _half_exponent(q22)
    k = k1 + k2
    return _ldexp(q11, -2 * k1), _ldexp(q12, -k), _ldexp(q22, -2 * k2), k
