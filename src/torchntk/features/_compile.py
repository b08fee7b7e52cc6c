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
from ..layers._core.supports import supports_of
from ..layers.conv.convolution import window_geometry
from . import _hermite, _variance
from . import _conv_steps as CS
from . import _steps as S
from ._sketch import next_pow2, projection

Tensor = torch.Tensor


class Context:
    """What every step draws with: the generator, the width ``m'``, the projection kind, and
    the rule of the nonlinearities (``"auto"``, ``"hermite"`` or ``"monte_carlo"``) with the
    Hermite truncation tolerance."""

    def __init__(self, gen: torch.Generator, width: int, kind: str, nonlinear: str = "monte_carlo",
                 tolerance: float = _hermite.TOLERANCE, budget: Callable[[int], None] | None = None) -> None:
        self.gen, self.width, self.kind = gen, width, kind
        self.nonlinear, self.tolerance = nonlinear, tolerance
        self.budget = budget
        self.peak = 0  # largest number of feature entries per input seen while compiling
        self.hermite = False  # whether a Hermite step was drawn (the map then calibrates)

    def need(self, entries: int) -> None:
        """Check, before drawing a step, that one input's ``entries`` feature entries fit the
        map's memory budget (``budget`` raises otherwise)."""
        if self.budget is not None:
            self.budget(int(entries))

    def seen(self, entries: int) -> None:
        self.need(entries)
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


Rule = Callable[[Any, Any, Context], tuple[S.Step, Any]]
#: The feature rules, by the name a layer class declares (``supports.features``, read from
#: the layer's exact class by :func:`torchntk.layers._supports.supports_of`).
RULES: dict[str, Rule] = {}
# Rules that take a list of branches (the others refuse one through the spec's own error).
_BRANCHED = ("serial", "parallel", "fan_out", "fan_in_sum", "fan_in_concat")


def _rule_of(name: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        RULES[name] = fn
        return fn

    return register


def _rule(layer: Any, d: Any, ctx: Context) -> tuple[S.Step, Any]:
    name = supports_of(layer).features
    if name not in RULES:
        raise UnsupportedLayerError(
            f"torchntk.features has no feature rule for {layer!r} (type {type(layer).__name__}); supported: "
            f"{', '.join(supported_names())} (use spec.kernel or torchntk.scale for this spec)"
        )
    if isinstance(d, list) and name not in _BRANCHED:
        layer.output_shape(_shapes(d))  # raises the spec's own error for a branch list
    return RULES[name](layer, d, ctx)


def supported_names() -> list[str]:
    """The public layer types (and activations) that have a feature rule."""
    names = [n for n in L.__all__ if isinstance(getattr(L, n), type) and supports_of(getattr(L, n)).features in RULES]
    return names + ["parallel(...)"]


@_rule_of("serial")
def _serial(layer: Any, d: Any, ctx: Context) -> tuple[S.Step, Any]:
    steps = []
    for sub in layer.layers:
        step, d = _compile(sub, d, ctx)
        steps.append(step)
    return S.Serial(steps), d


@_rule_of("parallel")
def _parallel(layer: Any, d: Any, ctx: Context) -> tuple[S.Step, Any]:
    if not isinstance(d, list) or len(d) != len(layer.layers):
        layer.output_shape(d.shape if not isinstance(d, list) else [x.shape for x in d])
    pairs = [_compile(sub, x, ctx) for sub, x in zip(layer.layers, d)]
    return S.Parallel([p[0] for p in pairs]), [p[1] for p in pairs]


@_rule_of("fan_out")
def _fan_out(layer: Any, d: Any, ctx: Context) -> tuple[S.Step, Any]:
    layer.output_shape(_shapes(d))
    return S.FanOut(layer.num), [d] * layer.num


def _fan_in(layer: Any, d: Any, ctx: Context, concat: bool) -> tuple[S.Step, Any]:
    out = layer.output_shape(_shapes(d))
    weights = [math.sqrt(x.shape[0] / out[0]) for x in d] if concat else [1.0] * len(d)
    step = S.FanIn(weights, d, out, ctx.width, ctx.gen)
    ctx.seen(step.dims.entries + sum(x.entries for x in d))
    return step, step.dims


RULES["fan_in_sum"] = lambda layer, d, ctx: _fan_in(layer, d, ctx, False)
RULES["fan_in_concat"] = lambda layer, d, ctx: _fan_in(layer, d, ctx, True)
RULES["identity"] = lambda layer, d, ctx: (S.Serial([]), d)


@_rule_of("dense")
def _dense(layer: Any, d: Any, ctx: Context) -> tuple[S.Step, Any]:
    out = layer.output_shape(d.shape)
    aff = S.Affine(layer.W_std, layer.b_std, d.shape[0], layer.parameterization)
    nd = aff.out_dims(d, out)
    ctx.seen(nd.entries)
    return aff, nd


def _conv_window(layer: Any, d: Any) -> tuple[S.Window, S.Affine, tuple[int, ...]]:
    out = layer.output_shape(d.shape)
    filt, strides, _ = window_geometry(type(layer).__name__, d.shape, layer.filter_shape, layer.strides,
                                       layer.padding)
    window = S.Window(filt, strides, S.conv_pads(d.shape, filt, strides, layer.padding), layer.padding == "CIRCULAR")
    aff = S.Affine(layer.W_std, layer.b_std, d.shape[0] * math.prod(filt), layer.parameterization)
    return window, aff, out


@_rule_of("conv")
def _conv(layer: Any, d: Any, ctx: Context) -> tuple[S.Step, Any]:
    window, aff, out = _conv_window(layer, d)
    step = S.Conv(window, d, aff, out, ctx.width, ctx.gen)
    ctx.seen(step.peak)
    return step, step.dims


@_rule_of("conv_local")
def _conv_local(layer: Any, d: Any, ctx: Context) -> tuple[S.Step, Any]:
    window, aff, out = _conv_window(layer, d)
    ctx.need(math.prod(out[1:]) * 2 * (next_pow2(ctx.width) + d.entries))  # its rotated features
    step = CS.Local(S.Conv(window, d, aff, out, ctx.width, ctx.gen), ctx.width, ctx.gen)
    ctx.seen(step.peak)
    return step, step.dims


@_rule_of("conv_transpose")
def _conv_transpose(layer: Any, d: Any, ctx: Context) -> tuple[S.Step, Any]:
    out = layer.output_shape(d.shape)
    filt, strides, pads, sizes = layer._geometry(d.shape)
    spread = CS.Dilate(strides, pads, filt, sizes if layer.padding == "CIRCULAR" else None)
    aff = S.Affine(layer.W_std, layer.b_std, d.shape[0] * math.prod(filt), layer.parameterization)
    step = S.Conv(spread, d, aff, out, ctx.width, ctx.gen)
    step.peak = spread.peak(d)
    ctx.seen(step.peak)
    return step, step.dims


@_rule_of("pool")
def _pool(layer: Any, d: Any, ctx: Context) -> tuple[S.Step, Any]:
    out = layer.output_shape(d.shape)
    win, strides, _ = layer._geometry(d.shape)
    scale = float(math.prod(win)) if layer._sum else 1.0
    step = S.Pool(win, strides, S.conv_pads(d.shape, win, strides, layer.padding),
                  layer.padding == "CIRCULAR", scale)
    return step, S.Dims(out, d.dphi, d.dpsi, d.gaussian, False)


@_rule_of("global_pool")
def _global_pool(layer: Any, d: Any, ctx: Context) -> tuple[S.Step, Any]:
    out = layer.output_shape(d.shape)
    scale = float(d.pixels) if layer._sum else 1.0  # the sum over D positions is D times the mean
    return S.GlobalMean(scale, keep=len(out) > 1), S.Dims(out, d.dphi, d.dpsi, d.gaussian, False)


@_rule_of("flatten")
def _flatten(layer: Any, d: Any, ctx: Context) -> tuple[S.Step, Any]:
    layer.output_shape(d.shape)
    if len(d.shape) == 1:
        return S.Serial([]), d
    step = S.Flatten(d, ctx.width, ctx.gen)
    ctx.seen(step.peak)
    return step, step.dims


@_rule_of("layer_norm")
def _layer_norm(layer: Any, d: Any, ctx: Context) -> tuple[S.Step, Any]:
    layer.output_shape(d.shape)
    dims = layer._dims(d.shape)
    if not d.gaussian:
        raise SpecError(f"{layer!r} needs Gaussian pre-activations: put it after a Dense/Conv layer")
    return S.Normalize([a - 2 for a in dims if a >= 2], layer.eps), S.Dims(d.shape, d.dphi, d.dpsi, True, False)


@_rule_of("dropout")
def _dropout(layer: Any, d: Any, ctx: Context) -> tuple[S.Step, Any]:
    if layer.mode == "test" or layer.rate == 0:
        layer.output_shape(d.shape)
        return S.Serial([]), d
    raise UnsupportedLayerError(
        f"torchntk.features has no feature rule for {layer!r} (the kernel of a randomly masked network); "
        "use Dropout(rate, mode='test') or spec.kernel"
    )


@_rule_of("elementwise")
def _elementwise(layer: Any, d: Any, ctx: Context) -> tuple[S.Step, Any]:
    _check_own_fn(layer)
    layer.output_shape(d.shape)
    if not d.gaussian:
        where = "the network's input" if d.is_input else "a non-Gaussian pre-activation"
        raise SpecError(
            f"{layer!r} is applied to {where}; the infinite-width rule needs Gaussian "
            "pre-activations: put a Dense or Conv layer before this nonlinearity"
        )
    ctx.need(d.entries + 3 * d.pixels * ctx.width)  # before the draws of width m'
    step = _nonlinearity(layer, d, ctx)
    ctx.seen(d.entries + 3 * step.dims.entries)
    return step, step.dims


def _owner(cls: type, name: str) -> type:
    return next(c for c in cls.__mro__ if name in c.__dict__)


def _check_own_fn(layer: Any) -> None:
    """The features of a nonlinearity draw on its ``fn``: refuse a class whose kernel ``rule``
    is defined below the class that defines its ``fn`` (the ``fn`` would be a parent's)."""
    cls = type(layer)
    fn, rule = _owner(cls, "fn"), _owner(cls, "rule")
    if fn is L.ElementwiseLayer:
        raise UnsupportedLayerError(
            f"torchntk.features has no feature rule for {layer!r}: it has no scalar activation function (fn) "
            "to draw features from (use spec.kernel or torchntk.scale for this spec)"
        )
    if rule is L.ElementwiseLayer or not issubclass(fn, rule):
        raise UnsupportedLayerError(
            f"torchntk.features has no feature rule for {layer!r}: its kernel rule comes from {rule.__name__} "
            f"but its activation fn from {fn.__name__}; define both in the same class"
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
    ctx.hermite = True
    return _hermite.HermiteActivation(layer, d, ctx.width, seed, ctx.tolerance, fallback)


def _shapes(d: Any) -> Any:
    return [x.shape for x in d] if isinstance(d, list) else d.shape


_RELU_FAMILY = (A.ABRelu, A.Relu, A.LeakyRelu, A.Abs)  # fn = a min(u, 0) + b max(u, 0)


def value(layer: L.ElementwiseLayer) -> Callable[[Tensor], Tensor]:
    """``a(u)``: the layer's own function, with ``b max(u, 0)`` in one pass for ``ABRelu(0, b)``."""
    if type(layer) in _RELU_FAMILY and float(layer.a) == 0.0:
        b = float(layer.b)
        return torch.relu if b == 1.0 else (lambda u: torch.relu(u) * b)
    return layer.fn


def _relu_derivative(layer: Any) -> Callable[[Tensor], Any]:
    a, b = float(layer.a), float(layer.b)
    if a == 0.0 and b == 1.0:  # ReLU: the boolean mask itself (products promote it, no cast pass)
        return lambda u: u > 0
    if a == 0.0:
        return lambda u: (u > 0).to(u.dtype) * b
    return lambda u: (u > 0).to(u.dtype) * (b - a) + a


def _erf_derivative(layer: Any) -> Callable[[Tensor], Tensor]:
    c = layer.a * layer.b * 2.0 / math.sqrt(math.pi)
    return lambda u: c * torch.exp(-((layer.b * u) ** 2))


def _gelu_derivative(layer: Any) -> Callable[[Tensor], Tensor]:
    return lambda u: torch.special.ndtr(u) + u * torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)


def _sin_derivative(layer: Any) -> Callable[[Tensor], Tensor]:
    return lambda u: layer.a * layer.b * torch.cos(layer.b * u + layer._shift())


#: Closed-form derivatives, by exact type (any other nonlinearity: autograd of its ``fn``).
_DERIVATIVES: dict[type, Callable[[Any], Callable[[Tensor], Any]]] = {
    **{t: _relu_derivative for t in _RELU_FAMILY},
    A.Erf: _erf_derivative, A.Sigmoid_like: _erf_derivative, A.Gelu: _gelu_derivative,
    A.Sin: _sin_derivative, A.Cos: _sin_derivative, A.Rbf: _sin_derivative,
    A.Sign: lambda layer: torch.zeros_like,
}


def derivative(layer: L.ElementwiseLayer) -> Callable[[Tensor], Tensor]:
    """``a'(u)`` of a nonlinearity: closed forms for the common ones, autograd otherwise."""
    closed = _DERIVATIVES.get(type(layer))
    if closed is not None:
        return closed(layer)
    return lambda u: _autograd_derivative(layer.fn, u)


def _autograd_derivative(fn: Callable[[Tensor], Tensor], u: Tensor) -> Tensor:
    with torch.enable_grad():
        leaf = u.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(leaf).sum(), leaf)
    return g
