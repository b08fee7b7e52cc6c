"""The pieces of ``from_module`` (private): converted modules with their input checks
(:class:`Checked`, and :class:`ModelSerial` for an ``nn.Sequential``), constant scales,
concatenations, the origins of each traced node, and the elementwise functions met while
tracing.

Origins. At infinite width the rule of a sum, ``Sigma = sum_b Sigma_b`` (and ``Theta``
likewise), needs every cross term ``E[a(x) b(x')]`` (and the cross gradients) to vanish. Every
node carries the set of *origins* it is a function of (the input, or the output of one weight
layer: independent zero-mean fields at infinite width) and whether it is *zero-mean* (it is a
linear map of weight layers' outputs: linear maps keep that, a nonlinearity does not). Two terms
are uncorrelated when their origins are disjoint and at least one is zero-mean (then
``E[a b'] = E[a] E[b'] = 0``, and the cross gradients vanish with the zero-mean weights).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ShapeError, SpecError, UnsupportedLayerError
from .._core.combinators import FanInConcat, Identity
from .._core.kernel import Kernel
from .._core.protocol import Layer, Serial, Shapes, single
from .._core.supports import Supports
from ..activations import Elementwise, Erf, Gelu, LeakyRelu, Relu
from ..activations._elementwise import ElementwiseLayer
from ..conv.convolution import Conv
from ..dense.fully_connected import Dense
from ..normalization.normalizers import Dropout, LayerNorm
from ..pooling.pools import Flatten, GlobalAvgPool, _Pool

ADVICE = (
    "it has no infinite-width rule in torchntk.layers; estimate the kernel of the finite model "
    "with torchntk.layers.monte_carlo_kernel(model_factory, x, n_samples=...) instead"
)


def unsupported(where: str, why: str = "") -> UnsupportedLayerError:
    return UnsupportedLayerError(f"from_module: {where} is not supported{': ' + why if why else ''}; {ADVICE}")


def named(where: str, err: Exception) -> str:
    """The message of ``err`` with the module or node it happened in (once)."""
    text = str(err)
    return text if text.startswith("from_module:") else f"from_module: {where}: {text}"


class Scale(Layer):
    """``y = c x`` for a constant ``c``: ``Sigma' = c^2 Sigma``, ``Theta' = c^2 Theta`` (no
    parameters; Gaussian pre-activations stay Gaussian)."""

    linear_map = True

    def __init__(self, c: float) -> None:
        self.c = float(c)

    def __repr__(self) -> str:
        return f"Scale({self.c!r})"

    def output_shape(self, input_shape: Shapes) -> Shapes:
        return single(self, input_shape)

    def kernel_rule(self, k: Kernel) -> Kernel:
        c2 = self.c * self.c

        def sc(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t * c2

        return k.replace(nngp=sc(k.nngp), ntk=sc(k.ntk), cov1=sc(k.cov1), cov2=sc(k.cov2))

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        return _ScaleModule(self.c)


class _ScaleModule(nn.Module):
    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.c


class Checked(Layer):
    """A converted module: ``inner``, after ``check(input_shape)`` (the shapes the torch module
    accepts); errors name the module (``where``)."""

    def __init__(self, inner: Layer, where: str, check: Callable[[Shapes], None] | None = None) -> None:
        self.inner, self.where, self.check = inner, where, check

    def __repr__(self) -> str:
        return repr(self.inner)

    def output_shape(self, input_shape: Shapes) -> Shapes:
        if self.check is not None:
            self.check(input_shape)
        try:
            return self.inner.output_shape(input_shape)
        except (SpecError, ShapeError) as err:
            raise type(err)(named(self.where, err)) from None

    def needs_full(self, input_shape: Shapes, out_full: Any) -> Any:
        return self.inner.needs_full(input_shape, out_full)

    def mask_out(self, mask: Any, input_shape: Shapes) -> Any:
        return self.inner.mask_out(mask, input_shape)

    def _kernel(self, k: Any, out_full: Any) -> Any:
        try:
            return self.inner._kernel(k, out_full)
        except (SpecError, ShapeError) as err:
            raise type(err)(named(self.where, err)) from None

    def kernel_rule(self, k: Any) -> Any:
        return self._kernel(k, False)

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        return self.inner.make_module(input_shape, generator, dtype, device)


class ModelSerial(Serial):
    """The layers of an ``nn.Sequential`` (flattened, so that every consumer of a ``serial``
    spec reads them), with each module's input check and name from its :class:`Checked` part.
    ``header`` prefixes the repr."""

    supports = Supports(masks=True, features="serial")  # a serial: its own layers' rules

    def __init__(self, parts: list[Layer], header: str = "") -> None:
        layers: list[Layer] = []
        self.checks: dict[int, tuple[str, Any]] = {}  # first layer of a module -> (name, check)
        for part in parts:
            start, inner = len(layers), part.inner if isinstance(part, Checked) else part
            if isinstance(inner, ModelSerial):
                self.checks.update((start + i, c) for i, c in inner.checks.items())
            layers.extend(inner.layers if isinstance(inner, Serial) else [inner])
            if isinstance(part, Checked):
                self.checks[start] = (part.where, part.check)
        super().__init__(*layers)
        self.header = header

    def __repr__(self) -> str:
        return f"{self.header}{Serial.__repr__(self)}"

    def _shapes(self, input_shape: Shapes) -> list[Shapes]:
        shapes, where = [input_shape], "the model"
        for i, layer in enumerate(self.layers):
            if i in self.checks:
                where, check = self.checks[i]
                if check is not None:
                    check(shapes[-1])
            try:
                shapes.append(layer.output_shape(shapes[-1]))
            except (SpecError, ShapeError) as err:
                raise type(err)(named(where, err)) from None
        return shapes


class Concat(FanInConcat):
    """``torch.cat(..., dim=1)``: the channels of branches whose kernels differ are not one
    Gaussian law, so the output is marked non-Gaussian (a nonlinearity of it would mix the
    branches' laws; the traced graph applies channelwise steps to each branch instead, see
    :class:`~._fx.GraphSpec`). ``check``: of the concatenated shape (a distributed module's)."""

    def __init__(self, check: Callable[[Shapes], None] | None = None) -> None:
        super().__init__()
        self.check = check

    def output_shape(self, input_shape: Shapes) -> Shapes:
        out = super().output_shape(input_shape)
        if self.check is not None:
            self.check(out)
        return out

    def kernel_rule(self, k: Any) -> Kernel:
        out = super().kernel_rule(k)
        first = k[0]
        same = all(x is first or (x.shape == first.shape and torch.equal(x.nngp, first.nngp)
                                  and torch.equal(x.cov1, first.cov1)) for x in k[1:])
        return out if same else out.replace(is_gaussian=False)


#: Layers that act on every channel alike, so that they commute with a concatenation.
def channelwise(layer: Layer) -> bool:
    inner = layer.inner if isinstance(layer, Checked) else layer
    return isinstance(inner, (ElementwiseLayer, Scale, Identity, Dropout))


# -- origins and means (the module docstring) -----------------------------------------------

Info = tuple[frozenset, bool]  # (origins, zero-mean)
INPUT = "the input"


def flow(layer: Layer, info: Info) -> Info:
    """The origins and zero-mean flag after ``layer`` from those before it."""
    if isinstance(layer, Checked):
        return flow(layer.inner, info)
    if isinstance(layer, Serial):
        for inner in layer.layers:
            info = flow(inner, info)
        return info
    if callable(getattr(layer, "flow", None)):  # a traced graph
        return layer.flow(info)
    if isinstance(layer, (Dense, Conv)):  # a fresh zero-mean field (ConvTranspose is a Conv)
        return frozenset({object()}), True
    linear = (Scale, _Pool, GlobalAvgPool, Flatten, Identity, Dropout, LayerNorm)
    if isinstance(layer, linear) or getattr(layer, "linear_map", False):
        return info
    return info[0], False  # a nonlinearity (or an unknown layer): not zero-mean


# -- functions met while tracing --------------------------------------------------------------

def _gelu(approximate: str = "none") -> Layer:
    if approximate == "none":
        return Gelu()

    def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")

    return Elementwise(gelu_tanh)


#: Elementwise functions: the arguments after the input with their defaults (in order), and
#: the layer for given values (``None``: quadrature of the function with those values).
ACTIVATIONS: dict[Any, tuple[dict[str, Any], Callable[..., Layer] | None]] = {
    F.relu: ({"inplace": False}, lambda: Relu()), torch.relu: ({}, lambda: Relu()),
    F.leaky_relu: ({"negative_slope": 0.01, "inplace": False}, lambda negative_slope: LeakyRelu(negative_slope)),
    F.gelu: ({"approximate": "none"}, _gelu), torch.erf: ({}, lambda: Erf()),
    F.silu: ({"inplace": False}, None), F.elu: ({"alpha": 1.0, "inplace": False}, None),
    F.celu: ({"alpha": 1.0, "inplace": False}, None), F.selu: ({"inplace": False}, None),
    F.softplus: ({"beta": 1.0, "threshold": 20.0}, None), F.mish: ({"inplace": False}, None),
    F.hardtanh: ({"min_val": -1.0, "max_val": 1.0, "inplace": False}, None), F.relu6: ({"inplace": False}, None),
    F.hardswish: ({"inplace": False}, None), F.hardsigmoid: ({"inplace": False}, None),
    F.softsign: ({}, None), F.tanhshrink: ({}, None), F.logsigmoid: ({}, None),
    torch.tanh: ({}, None), F.tanh: ({}, None), torch.sigmoid: ({}, None), F.sigmoid: ({}, None),
    torch.sin: ({}, None), torch.cos: ({}, None),
}
#: In-place functions and their out-of-place form (the finite module must not change its input).
INPLACE = {F.relu_: F.relu, torch.relu_: torch.relu, torch.tanh_: torch.tanh, torch.sigmoid_: torch.sigmoid}
#: Tensor methods (``h.relu()``; a trailing ``_`` is the in-place form) and their function.
METHODS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "erf": torch.erf,
            "sin": torch.sin, "cos": torch.cos}


def activation(fn: Any, args: tuple, kwargs: dict, where: str) -> tuple[Layer, bool]:
    """The layer of ``fn(node, *args, **kwargs)`` and whether the call is in place."""
    defaults, make = ACTIVATIONS[fn]
    names = list(defaults)
    if len(args) > len(names) or set(kwargs) - set(names):
        raise unsupported(f"{where}: the call {name_of(fn)}(...)", f"unexpected arguments {args!r}, {kwargs!r}")
    values = dict(defaults)
    values.update(zip(names, args))
    values.update(kwargs)
    for key, value in values.items():
        if isinstance(value, torch.fx.Node):
            raise unsupported(f"{where}: the call {name_of(fn)}(...)", f"its argument `{key}` is computed")
    inplace = bool(values.pop("inplace", False))
    changed = {k: v for k, v in values.items() if v != defaults[k]}
    if make is not None:
        return make(**values), inplace
    if not changed:
        return Elementwise(fn), inplace

    def bound(x: torch.Tensor) -> torch.Tensor:
        return fn(x, **changed)

    bound.__name__ = f"{name_of(fn)}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"
    return Elementwise(bound), inplace


def name_of(fn: Any) -> str:
    if isinstance(fn, str):  # a tensor method
        return f"Tensor.{fn}"
    name = getattr(fn, "__name__", repr(fn))
    if getattr(F, name, None) is fn:
        return f"F.{name}"
    return f"torch.{name}" if getattr(torch, name, None) is fn else name
