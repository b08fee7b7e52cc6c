"""The exact diagonal of the NNGP, carried beside the features (private).

The Hermite features of a nonlinearity (:mod:`torchntk.features._hermite`) need each row's own
pre-activation variance ``q(x)[p] = Sigma(x, x)[p, p]``. Its recursion only involves the
diagonal, so it is cheap and exact, and the map carries it in ``State.q`` instead of estimating
it from the (random) features:

    input          q = |x[p]|^2 / C
    Dense          q' = W_std^2 q + b_std^2                    (both parameterizations)
    Conv           q' = W_std^2 mean_{d in window} q(s p + d) + b_std^2   (padding counts as 0)
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

from .. import layers as L
from ..layers._core.combinators import Parallel as _SpecParallel
from ..layers._core.protocol import Serial as _SpecSerial
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
    if isinstance(layer, (_SpecSerial, _SpecParallel, L.FanOut)):
        return step
    return Tracked(step, _rule(layer, step, d))


def _rule(layer: Any, step: S.Step, d: Any) -> Rule | None:
    if isinstance(layer, (L.Identity, L.Dropout)):
        return lambda q: q
    if isinstance(layer, L.Dense):
        return _affine(layer)
    if isinstance(layer, L.Conv):
        window, affine = step.window, _affine(layer)

        def conv(q: Tensor) -> Tensor:
            cols = window(q.unsqueeze(-1))  # (N, *out, k) / sqrt(k)
            return affine(cols.sum(-1) * (1.0 / math.sqrt(cols.shape[-1])))

        return conv
    if isinstance(layer, L.ElementwiseLayer):
        return lambda q: layer.rule(q, q, q)[0]
    if isinstance(layer, L.Flatten):
        return lambda q: q if q.ndim == 1 else q.flatten(1).mean(-1)
    if isinstance(layer, L.LayerNorm):
        axes = tuple(1 + a for a in step.axes)
        return lambda q: q / ((q.mean(dim=axes, keepdim=True) if axes else q) + step.eps)
    if isinstance(layer, (L.FanInSum, L.FanInConcat)):
        weights = [w * w for w in step.weights]
        return lambda qs: sum(w * q for w, q in zip(weights, qs))
    return None  # pooling (and anything else): the exact diagonal needs more than q


def _affine(layer: Any) -> Rule:
    w2, b2 = float(layer.W_std) ** 2, float(layer.b_std or 0.0) ** 2
    return lambda q: q * w2 + b2
