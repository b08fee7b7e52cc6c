"""The exact diagonal of the NNGP, carried beside the features (private).

The Hermite features of a nonlinearity (:mod:`torchntk.features._hermite`) need each row's own
pre-activation variance ``q(x)[p] = Sigma(x, x)[p, p]``. Its recursion only involves the
diagonal, so it is cheap and exact, and the map carries it in ``State.q`` instead of estimating
it from the (random) features:

    input          q = |x[p]|^2 / C
    Dense          q' = W_std^2 q + b_std^2                    (both parameterizations)
    Conv           q' = W_std^2 mean_{d in window} q(s p + d) + b_std^2   (padding counts as 0;
                   ConvLocal the same; ConvTranspose on the dilated q, unknown after a fold)
    nonlinearity   q' = E[a(u)^2], u ~ N(0, q)                 (the layer's own rule at q12 = q)
    Flatten        q' = mean_p q[p]
    LayerNorm      q' = q / (mean_{normalized axes} q + eps)
    FanInSum       q' = sum_b q_b;   FanInConcat: q' = sum_b (C_b / C) q_b
    Identity, Dropout(mode="test"), FanOut, parallel: unchanged

Pooling mixes pixels, so its diagonal needs the off-diagonal pixel covariances: after a pooling
layer ``q`` is None and the Hermite step falls back to the feature estimate ``|phi|^2``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable

import torch

from ..layers._core.supports import supports_of
from . import _steps as S

Tensor = torch.Tensor
Rule = Callable[[Any], Any]


class Tracked(S.Step):
    """``inner``, then ``q' = rule(q)`` (None when ``q`` is unknown or ``rule`` is None)."""

    def __init__(self, inner: S.Step, rule: Rule | None) -> None:
        self.inner, self.rule = inner, rule

    def __call__(self, s: Any) -> Any:
        out = self.inner(s)
        qs = [x.q for x in s] if isinstance(s, list) else s.q
        known = all(q is not None for q in qs) if isinstance(qs, list) else qs is not None
        q = self.rule(qs) if (self.rule is not None and known) else None
        return replace(out, q=q)


def track(layer: Any, step: S.Step, d: Any) -> S.Step:
    """``step`` with the exact variance rule of ``layer`` (composites pass their parts' on)."""
    name = supports_of(layer).features
    if name in ("serial", "parallel", "fan_out"):
        return step
    make = _RULES.get(name)
    return Tracked(step, None if make is None else make(layer, step))


def _conv(layer: Any, step: Any) -> Rule | None:
    window, affine = step.window, _affine(layer)
    if getattr(window, "fold", None) is not None:
        return None  # a CIRCULAR transposed convolution sums pixels: it needs their covariances

    def conv(q: Tensor) -> Tensor:
        cols = window(q.unsqueeze(-1))  # (N, *out, k) / sqrt(k)
        return affine(cols.sum(-1) * (1.0 / math.sqrt(cols.shape[-1])))

    return conv


def _layer_norm(layer: Any, step: Any) -> Rule:
    axes = tuple(1 + a for a in step.axes)
    return lambda q: q / ((q.mean(dim=axes, keepdim=True) if axes else q) + step.eps)


def _fan_in(layer: Any, step: Any) -> Rule:
    weights = [w * w for w in step.weights]
    return lambda qs: sum(w * q for w, q in zip(weights, qs))


#: The variance rule of each feature rule, by its name (pooling and anything absent: none,
#: the exact diagonal needs more than ``q``). ``ConvLocal``'s diagonal is Conv's.
_RULES: dict[str, Callable[[Any, Any], Rule | None]] = {
    "identity": lambda layer, step: (lambda q: q),
    "dropout": lambda layer, step: (lambda q: q),
    "dense": lambda layer, step: _affine(layer),
    "conv": _conv,
    "conv_local": _conv,
    "conv_transpose": _conv,
    "elementwise": lambda layer, step: (lambda q: layer.rule(q, q, q)[0]),
    "flatten": lambda layer, step: (lambda q: q if q.ndim == 1 else q.flatten(1).mean(-1)),
    "layer_norm": _layer_norm,
    "fan_in_sum": _fan_in,
    "fan_in_concat": _fan_in,
}


def _affine(layer: Any) -> Rule:
    w2, b2 = float(layer.W_std) ** 2, float(layer.b_std or 0.0) ** 2
    return lambda q: q * w2 + b2
