"""Turn a :mod:`torchntk.layers` spec into feature steps with their random draws (private).

The draws are made here, once per per-sample input shape, from a generator seeded by the
feature map: the map owns them, and every call of the map reuses them.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .. import layers as L
from ..errors import SpecError, UnsupportedLayerError
from ..layers import activations as A
from ..layers._core.combinators import Parallel as _SpecParallel
from ..layers._core.protocol import Serial as _SpecSerial
from ..layers.conv.convolution import window_geometry
from ..layers.pooling.pools import _Pool
from . import _hermite, _variance
from . import _steps as S
from ._sketch import projection

Tensor = torch.Tensor


class Context:
    """What every step draws with: the generator, the width ``m'``, the projection kind, and
    the rule of the nonlinearities (``"auto"``, ``"hermite"`` or ``"monte_carlo"``) with the
    Hermite truncation tolerance."""

    def __init__(self, gen: torch.Generator, width: int, kind: str, nonlinear: str = "monte_carlo",
                 tolerance: float = _hermite.TOLERANCE) -> None:
        self.gen, self.width, self.kind = gen, width, kind
        self.nonlinear, self.tolerance = nonlinear, tolerance
        self.peak = 0  # largest number of feature entries per input seen while compiling

    def seen(self, entries: int) -> None:
        self.peak = max(self.peak, int(entries))


def compile_spec(spec: L.Layer, shape: tuple[int, ...], ctx: Context) -> tuple[S.Step, S.Dims]:
    """Steps of ``spec`` for inputs of per-sample ``shape`` (``(C, *spatial)``)."""
    d = S.Dims(shape, shape[0], 0, False, True)
    ctx.seen(d.entries)
    return _compile(spec, d, ctx)


def _compile(layer: Any, d: Any, ctx: Context) -> tuple[S.Step, Any]:
    step, out = _rule(layer, d, ctx)
    if ctx.nonlinear == "monte_carlo":  # only the Hermite steps read the exact variances
        return step, out
    return _variance.track(layer, step, d), out


def _rule(layer: Any, d: Any, ctx: Context) -> tuple[S.Step, Any]:
    if isinstance(layer, _SpecSerial):
        steps = []
        for sub in layer.layers:
            step, d = _compile(sub, d, ctx)
            steps.append(step)
        return S.Serial(steps), d
    if isinstance(layer, _SpecParallel):
        if not isinstance(d, list) or len(d) != len(layer.layers):
            layer.output_shape(d.shape if not isinstance(d, list) else [x.shape for x in d])
        pairs = [_compile(sub, x, ctx) for sub, x in zip(layer.layers, d)]
        return S.Parallel([p[0] for p in pairs]), [p[1] for p in pairs]
    if isinstance(layer, L.FanOut):
        layer.output_shape(_shapes(d))
        return S.FanOut(layer.num), [d] * layer.num
    if isinstance(layer, (L.FanInSum, L.FanInConcat)):
        out = layer.output_shape(_shapes(d))
        weights = [1.0] * len(d) if isinstance(layer, L.FanInSum) else [math.sqrt(x.shape[0] / out[0]) for x in d]
        step = S.FanIn(weights, d, out, ctx.width, ctx.gen)
        ctx.seen(step.dims.entries + sum(x.entries for x in d))
        return step, step.dims
    if isinstance(d, list):
        layer.output_shape(_shapes(d))  # raises the spec's own error for a branch list
    if isinstance(layer, L.Identity):
        return S.Serial([]), d
    if isinstance(layer, L.Dense):
        out = layer.output_shape(d.shape)
        aff = S.Affine(layer.W_std, layer.b_std, d.shape[0], layer.parameterization)
        nd = aff.out_dims(d, out)
        ctx.seen(nd.entries)
        return aff, nd
    if isinstance(layer, L.Conv):
        out = layer.output_shape(d.shape)
        filt, strides, _ = window_geometry("Conv", d.shape, layer.filter_shape, layer.strides, layer.padding)
        window = S.Window(filt, strides, S.conv_pads(d.shape, filt, strides, layer.padding),
                          layer.padding == "CIRCULAR")
        aff = S.Affine(layer.W_std, layer.b_std, d.shape[0] * math.prod(filt), layer.parameterization)
        step = S.Conv(window, d, aff, out, ctx.width, ctx.gen)
        ctx.seen(step.peak)
        return step, step.dims
    if isinstance(layer, _Pool):
        out = layer.output_shape(d.shape)
        win, strides, _ = layer._geometry(d.shape)
        scale = float(math.prod(win)) if isinstance(layer, L.SumPool) else 1.0
        step = S.Pool(win, strides, S.conv_pads(d.shape, win, strides, layer.padding),
                      layer.padding == "CIRCULAR", scale)
        return step, S.Dims(out, d.dphi, d.dpsi, d.gaussian, False)
    if isinstance(layer, L.GlobalAvgPool):
        out = layer.output_shape(d.shape)
        return S.GlobalMean(), S.Dims(out, d.dphi, d.dpsi, d.gaussian, False)
    if isinstance(layer, L.Flatten):
        layer.output_shape(d.shape)
        if len(d.shape) == 1:
            return S.Serial([]), d
        step = S.Flatten(d, ctx.width, ctx.gen)
        ctx.seen(step.peak)
        return step, step.dims
    if isinstance(layer, L.LayerNorm):
        layer.output_shape(d.shape)
        dims = layer._dims(d.shape)
        if not d.gaussian:
            raise SpecError(f"{layer!r} needs Gaussian pre-activations: put it after a Dense/Conv layer")
        return S.Normalize([a - 2 for a in dims if a >= 2], layer.eps), S.Dims(d.shape, d.dphi, d.dpsi, True, False)
    if isinstance(layer, L.Dropout) and (layer.mode == "test" or layer.rate == 0):
        return S.Serial([]), d
    if isinstance(layer, L.ElementwiseLayer):
        layer.output_shape(d.shape)
        if not d.gaussian:
            where = "the network's input" if d.is_input else "a non-Gaussian pre-activation"
            raise SpecError(
                f"{layer!r} is applied to {where}; the infinite-width rule needs Gaussian "
                "pre-activations: put a Dense or Conv layer before this nonlinearity"
            )
        step = _nonlinearity(layer, d, ctx)
        ctx.seen(d.entries + 3 * step.dims.entries)
        return step, step.dims
    raise UnsupportedLayerError(
        f"torchntk.features has no feature rule for {layer!r}; supported: Dense, Conv, AvgPool, SumPool, "
        "GlobalAvgPool, Flatten, LayerNorm, Dropout(mode='test'), Identity, FanOut, parallel, FanInSum, "
        "FanInConcat and elementwise nonlinearities (use spec.kernel or torchntk.scale for this spec)"
    )


def _nonlinearity(layer: L.ElementwiseLayer, d: S.Dims, ctx: Context) -> S.Step:
    """Hermite features (``"hermite"``; ``"auto"`` for smooth activations, Monte Carlo when the
    expansion misses the tolerance) or Monte Carlo / arc-cosine features."""
    hermite = ctx.nonlinear == "hermite" or (ctx.nonlinear == "auto" and _hermite.preferred(layer))
    if ctx.nonlinear == "hermite" and not _hermite.expandable(layer):
        raise UnsupportedLayerError(
            f"{layer!r} has no scalar activation function to expand in Hermite polynomials; "
            "use method='auto' or 'monte_carlo'"
        )
    fallback = None
    if not hermite or ctx.nonlinear == "auto":
        proj = projection(ctx.kind, d.dphi, ctx.width, ctx.gen)
        dfn = derivative(layer) if (layer.has_ntk and d.dpsi is not None) else None
        fallback = S.Activation(value(layer), dfn, proj, d, ctx.gen)
        if not hermite:
            return fallback
    seed = int(torch.randint(0, 2**62, (1,), generator=ctx.gen))
    return _hermite.HermiteActivation(layer, d, ctx.width, seed, ctx.tolerance, fallback)


def _shapes(d: Any) -> Any:
    return [x.shape for x in d] if isinstance(d, list) else d.shape


def value(layer: L.ElementwiseLayer) -> Callable[[Tensor], Tensor]:
    """``a(u)``: the layer's own function, with ``b max(u, 0)`` in one pass for ``ABRelu(0, b)``."""
    if isinstance(layer, A.ABRelu) and float(layer.a) == 0.0:
        b = float(layer.b)
        return torch.relu if b == 1.0 else (lambda u: torch.relu(u) * b)
    return layer.fn


def derivative(layer: L.ElementwiseLayer) -> Callable[[Tensor], Tensor]:
    """``a'(u)`` of a nonlinearity: closed forms for the common ones, autograd otherwise."""
    if isinstance(layer, A.ABRelu):
        a, b = float(layer.a), float(layer.b)
        if a == 0.0 and b == 1.0:  # ReLU: the boolean mask itself (products promote it, no cast pass)
            return lambda u: u > 0
        if a == 0.0:
            return lambda u: (u > 0).to(u.dtype) * b
        return lambda u: (u > 0).to(u.dtype) * (b - a) + a
    if isinstance(layer, A.Erf):
        c = layer.a * layer.b * 2.0 / math.sqrt(math.pi)
        return lambda u: c * torch.exp(-((layer.b * u) ** 2))
    if isinstance(layer, A.Sign):
        return torch.zeros_like
    if isinstance(layer, A.Gelu):
        return lambda u: torch.special.ndtr(u) + u * torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
    if isinstance(layer, A.Sin):
        return lambda u: layer.a * layer.b * torch.cos(layer.b * u + layer._shift())
    return lambda u: _autograd_derivative(layer.fn, u)


def _autograd_derivative(fn: Callable[[Tensor], Tensor], u: Tensor) -> Tensor:
    with torch.enable_grad():
        leaf = u.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(leaf).sum(), leaf)
    return g
