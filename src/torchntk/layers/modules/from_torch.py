"""``from_module``: the architecture spec of a plain ``torch.nn`` model.

The infinite-width kernels do not depend on the drawn weights, only on the architecture and on
the weight and bias scales, so the spec is read from the module tree: widths, kernel sizes,
strides and paddings from the modules, ``W_std``/``b_std``/``parameterization`` from the
arguments (torchntk's own :mod:`torchntk.nn` layers carry theirs). ``nn.Sequential`` (nested)
is walked; any other container is traced with ``torch.fx``, which sees residual additions
(``x + f(x)``: a :class:`~torchntk.layers.FanInSum`, whose rule assumes the branches are
uncorrelated, true when ``f`` starts with its own weight layer) and concatenations along the
channels. Anything without an infinite-width rule raises an error that names it.

Example:
    >>> from torch import nn
    >>> from torchntk import layers as L
    >>> model = nn.Sequential(nn.Linear(3, 512), nn.ReLU(), nn.Linear(512, 1))
    >>> spec = L.from_module(model, W_std=1.0, b_std=0.1)
    >>> spec.kernel(torch.randn(4, 3)).ntk.shape
    torch.Size([4, 4])
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ... import nn as tnn
from ...errors import InvalidArgumentError, SpecError, UnsupportedLayerError
from .. import _spatial
from .._core.protocol import Layer, Shapes, any_full, single
from ..activations import Elementwise, Erf, Gelu, LeakyRelu, Relu
from .._core.combinators import FanInConcat, FanInSum, Identity, serial
from ..conv.convolution import Conv
from ..conv.transpose import ConvTranspose
from ..dense.fully_connected import Dense, check_affine_args
from .._core.kernel import Kernel
from .._core.supports import Supports
from ..normalization.normalizers import Dropout, LayerNorm
from ..pooling.pools import AvgPool, Flatten, GlobalAvgPool

__all__ = ["from_module"]

_ADVICE = (
    "it has no infinite-width rule in torchntk.layers; estimate the kernel of the finite model "
    "with torchntk.layers.monte_carlo_kernel(model_factory, x, n_samples=...) instead"
)

#: Stateless elementwise activation modules, whose kernel comes by quadrature.
_QUADRATURE = (
    nn.Tanh, nn.Sigmoid, nn.SiLU, nn.ELU, nn.CELU, nn.SELU, nn.Softplus, nn.Mish, nn.Hardtanh, nn.ReLU6,
    nn.Softsign, nn.Tanhshrink, nn.Hardswish, nn.Hardsigmoid, nn.LogSigmoid,
)
#: Functions (``F.relu(x)``, ``torch.tanh(x)``, ``x.relu()``) met while tracing.
_FUNCTIONS: dict[Any, Callable[[], Layer]] = {
    F.relu: Relu, torch.relu: Relu, "relu": Relu,
    torch.tanh: lambda: Elementwise(torch.tanh), "tanh": lambda: Elementwise(torch.tanh),
    torch.sigmoid: lambda: Elementwise(torch.sigmoid), "sigmoid": lambda: Elementwise(torch.sigmoid),
    F.gelu: Gelu, F.silu: lambda: Elementwise(F.silu), torch.erf: Erf,
}


class _ZeroPad(Layer):
    """Explicit padding of the spatial axes by ``pads[a] = (before, after)`` zeros (or wrapped)."""

    def __init__(self, pads: tuple[tuple[int, int], ...], circular: bool = False) -> None:
        self.pads, self.circular = pads, circular

    def __repr__(self) -> str:
        return f"_ZeroPad({self.pads}, circular={self.circular})"

    def output_shape(self, input_shape: Shapes) -> Shapes:
        shape = single(self, input_shape)
        if len(shape) - 1 != len(self.pads):
            raise SpecError(f"{self!r} on input of shape {shape}")
        return (shape[0], *[n + a + b for n, (a, b) in zip(shape[1:], self.pads)])

    def kernel_rule(self, k: Kernel) -> Kernel:
        out = self.output_shape(k.shape)
        full = k.full_spatial

        def pad(t: torch.Tensor | None, lead: int) -> torch.Tensor | None:
            if t is None:
                return None
            for a, p in enumerate(self.pads):
                for ax in ((lead + 2 * a, lead + 2 * a + 1) if full else (lead + a,)):
                    t = _spatial._pad_axis(t, ax, p, self.circular)
            return t

        return k.replace(nngp=pad(k.nngp, 2), ntk=pad(k.ntk, 2), cov1=pad(k.cov1, 1), cov2=pad(k.cov2, 1), shape=out)

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        self.output_shape(input_shape)
        return _PadModule([p for pair in reversed(self.pads) for p in pair], "circular" if self.circular else "constant")


class _PadModule(nn.Module):
    def __init__(self, flat: list[int], mode: str) -> None:
        super().__init__()
        self.flat, self.mode = flat, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.flat, mode=self.mode)


class _GlobalAvgPoolKeep(GlobalAvgPool):
    """``nn.AdaptiveAvgPool(1)``: the global mean, keeping size-1 spatial axes."""

    supports = Supports(masks=True, full_layout=True, features="global_pool")

    def output_shape(self, input_shape: Shapes) -> Shapes:
        shape = single(self, input_shape)
        return (shape[0], *([1] * (len(shape) - 1)))

    def kernel_rule(self, k: Kernel) -> Kernel:
        nsp = k.spatial_ndim
        out = GlobalAvgPool.kernel_rule(self, k)

        def keep(t: torch.Tensor | None, lead: int) -> torch.Tensor | None:
            return None if t is None else t.reshape(*t.shape[:lead], *([1] * nsp))

        return out.replace(nngp=keep(out.nngp, 2), ntk=keep(out.ntk, 2), cov1=keep(out.cov1, 1), cov2=keep(out.cov2, 1),
                           shape=self.output_shape(k.shape))

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        return nn.AdaptiveAvgPool1d(1) if len(single(self, input_shape)) == 2 else nn.AdaptiveAvgPool2d(1)


def _ints(value: Any, dims: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * dims


def _unsupported(where: str, why: str = "") -> UnsupportedLayerError:
    return UnsupportedLayerError(f"from_module: {where} is not supported{': ' + why if why else ''}; {_ADVICE}")


class _Converter:
    def __init__(self, W_std: Any, b_std: Any, parameterization: str) -> None:
        self.W_std, self.b_std, self.parameterization = W_std, b_std, parameterization

    def bias(self, module: nn.Module) -> Any:
        return self.b_std if getattr(module, "bias", None) is not None else None

    def __call__(self, m: nn.Module, name: str) -> Layer:
        where = f"{name or 'the model'} ({type(m).__name__})"
        if isinstance(m, nn.Sequential) and type(m) in (nn.Sequential, tnn.MLP):
            return serial(*[self(c, f"{name}.{n}" if name else n) for n, c in m.named_children()]) if len(m) else Identity()
        if isinstance(m, tnn.Linear):
            return _dense_like(m.out_features, m.W_std, m.b_std, m.parameterization)
        if isinstance(m, (tnn.Conv1d, tnn.Conv2d)):
            pad = m.padding
            if isinstance(pad, str):
                return Conv(m.out_channels, m.kernel_size, m.stride, pad.upper(), m.W_std, m.b_std, m.parameterization)
            return serial(_ZeroPad(tuple((p, p) for p in pad)),
                          Conv(m.out_channels, m.kernel_size, m.stride, "VALID", m.W_std, m.b_std, m.parameterization))
        if isinstance(m, tnn.Erf):
            return Erf()
        if isinstance(m, nn.Linear):
            return _dense_like(m.out_features, self.W_std, self.bias(m), self.parameterization)
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            return self.conv(m, where)
        if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
            return self.conv_transpose(m, where)
        if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d)):
            dims = 1 if isinstance(m, nn.AvgPool1d) else 2
            if m.ceil_mode or (not m.count_include_pad and any(_ints(m.padding, dims))) or getattr(m, "divisor_override", None):
                raise _unsupported(where, "only ceil_mode=False with padded zeros counted in the mean")
            pads = _ints(m.padding, dims)
            pool = AvgPool(_ints(m.kernel_size, dims), _ints(m.stride or m.kernel_size, dims), "VALID")
            return serial(_ZeroPad(tuple((p, p) for p in pads)), pool) if any(pads) else pool
        if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            if any(s != 1 for s in _ints(m.output_size, 1 if isinstance(m, nn.AdaptiveAvgPool1d) else 2)):
                raise _unsupported(where, "only output_size 1 (global average pooling)")
            return _GlobalAvgPoolKeep()
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise _unsupported(where, "only Flatten(start_dim=1, end_dim=-1)")
            return Flatten()
        if isinstance(m, nn.LayerNorm):
            return LayerNorm(axis=tuple(range(-len(m.normalized_shape), 0)), eps=m.eps)
        if isinstance(m, nn.Dropout):
            return Dropout(m.p, mode="test")
        if isinstance(m, nn.Identity):
            return Identity()
        if isinstance(m, nn.ReLU):
            return Relu()
        if isinstance(m, nn.LeakyReLU):
            return LeakyRelu(m.negative_slope)
        if isinstance(m, nn.GELU):
            if m.approximate == "none":
                return Gelu()
            return Elementwise(lambda x: F.gelu(x, approximate="tanh"))
        if type(m) in _QUADRATURE:
            return Elementwise(m)
        if not list(m.children()) and type(m).forward is not nn.Module.forward:
            if type(m).__module__.startswith("torch.nn"):
                raise _unsupported(where)
        return self.traced(m, name, where)

    def conv(self, m: nn.Conv1d | nn.Conv2d, where: str) -> Layer:
        dims = 1 if isinstance(m, nn.Conv1d) else 2
        if m.groups != 1 or any(d != 1 for d in _ints(m.dilation, dims)):
            raise _unsupported(where, "only groups=1 and dilation=1")
        kw = {"W_std": self.W_std, "b_std": self.bias(m), "parameterization": self.parameterization}
        if isinstance(m.padding, str):
            if m.padding_mode not in ("zeros", "circular"):
                raise _unsupported(where, f"padding_mode={m.padding_mode!r}")
            pad = m.padding.upper() if m.padding == "valid" or m.padding_mode == "zeros" else "CIRCULAR"
            return Conv(m.out_channels, m.kernel_size, m.stride, pad, **kw)
        pads = _ints(m.padding, dims)
        if m.padding_mode not in ("zeros", "circular"):
            raise _unsupported(where, f"padding_mode={m.padding_mode!r}")
        conv = Conv(m.out_channels, m.kernel_size, m.stride, "VALID", **kw)
        if not any(pads):
            return conv
        return serial(_ZeroPad(tuple((p, p) for p in pads), circular=m.padding_mode == "circular"), conv)

    def conv_transpose(self, m: nn.ConvTranspose1d | nn.ConvTranspose2d, where: str) -> Layer:
        dims = 1 if isinstance(m, nn.ConvTranspose1d) else 2
        if m.groups != 1 or any(d != 1 for d in _ints(m.dilation, dims)) or m.padding_mode != "zeros":
            raise _unsupported(where, "only groups=1, dilation=1 and zero padding")
        k, p, q = _ints(m.kernel_size, dims), _ints(m.padding, dims), _ints(m.output_padding, dims)
        pads = tuple((kk - 1 - pp, kk - 1 - pp + qq) for kk, pp, qq in zip(k, p, q))
        return ConvTranspose(m.out_channels, k, _ints(m.stride, dims), pads, self.W_std, self.bias(m), self.parameterization)

    def traced(self, m: nn.Module, name: str, where: str) -> Layer:
        try:
            graph = torch.fx.symbolic_trace(m).graph
        except Exception as err:  # noqa: BLE001 - any tracing failure means "not convertible"
            raise _unsupported(where, f"torch.fx cannot trace its forward ({type(err).__name__}: {err})") from None
        return _GraphSpec(graph, m, self, name)


def _dense_like(out: int, W_std: Any, b_std: Any, parameterization: str) -> Layer:
    return Dense(out, W_std, b_std, parameterization)


class _GraphSpec(Layer):
    """The spec of a traced forward: one step per node, interpreted on kernels and shapes."""

    def __init__(self, graph: Any, module: nn.Module, convert: _Converter, name: str) -> None:
        self.steps: list[tuple[str, Any, list[str]]] = []  # (node name, Layer or "add"/"cat", input names)
        self.output: str = ""
        modules = dict(module.named_modules())
        for node in graph.nodes:
            where = f"{(name + '.') if name else ''}{node.target if node.op == 'call_module' else node.name} in {type(module).__name__}.forward"
            if node.op == "placeholder":
                if self.steps:
                    raise _unsupported(where, "forward takes one tensor only")
                self.steps.append((node.name, "input", []))
            elif node.op == "output":
                self.output = node.args[0].name
            elif node.op == "call_module":
                self.steps.append((node.name, convert(modules[node.target], f"{name}.{node.target}" if name else node.target),
                                   [_arg(node.args[0], where)]))
            else:
                self.steps.append(self._function(node, where))

    @staticmethod
    def _function(node: Any, where: str) -> tuple[str, Any, list[str]]:
        target, args = node.target, node.args
        if target in (operator.add, torch.add, "add") and len(args) == 2 and not node.kwargs:
            return node.name, FanInSum(), [_arg(a, where) for a in args]
        if target is torch.cat and node.kwargs.get("dim", args[1] if len(args) > 1 else 0) == 1:
            return node.name, FanInConcat(), [_arg(a, where) for a in args[0]]
        if target in (torch.flatten, "flatten") and tuple(args[1:]) in ((1,), (1, -1)) and not node.kwargs:
            return node.name, Flatten(), [_arg(args[0], where)]
        if target in _FUNCTIONS and len(args) == 1 and not node.kwargs:
            return node.name, _FUNCTIONS[target](), [_arg(args[0], where)]
        raise _unsupported(f"{where}: the operation {getattr(target, '__name__', target)!r}")

    def __repr__(self) -> str:
        return f"from_module graph({', '.join(repr(s[1]) for s in self.steps[1:])})"

    def _shapes(self, input_shape: Shapes) -> dict[str, Shapes]:
        shapes: dict[str, Shapes] = {}
        for node, layer, args in self.steps:
            if layer == "input":
                shapes[node] = input_shape
            else:
                shapes[node] = layer.output_shape(_inputs(shapes, layer, args))
        return shapes

    def output_shape(self, input_shape: Shapes) -> Shapes:
        return self._shapes(input_shape)[self.output]

    def _needs(self, input_shape: Shapes, out_full: Any) -> tuple[dict[str, Shapes], dict[str, bool]]:
        """Shapes and whether each node's output must be in the full layout (a backward pass)."""
        shapes = self._shapes(input_shape)
        need = {node: False for node, _, _ in self.steps}
        need[self.output] = any_full(out_full)
        for node, layer, args in reversed(self.steps):
            if layer == "input":
                continue
            flags = layer.needs_full(_inputs(shapes, layer, args), need[node])
            for a, f in zip(args, flags if isinstance(flags, list) else [flags]):
                need[a] = need[a] or any_full(f)
        return shapes, need

    def needs_full(self, input_shape: Shapes, out_full: Any) -> Any:
        return self._needs(input_shape, out_full)[1][self.steps[0][0]]

    def _kernel(self, k: Any, out_full: Any) -> Any:
        shapes, need = self._needs(k.shape, out_full)
        env: dict[str, Kernel] = {}
        for node, layer, args in self.steps:
            if layer == "input":
                env[node] = k
                continue
            ins = [env[a] for a in args]
            if not any_full(layer.needs_full(_inputs(shapes, layer, args), need[node])):
                ins = [_spatial.to_diagonal(x) for x in ins]
            env[node] = layer._kernel(ins if isinstance(layer, (FanInSum, FanInConcat)) else ins[0], need[node])
        return env[self.output]

    def kernel_rule(self, k: Any) -> Any:
        return self._kernel(k, False)

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        shapes = self._shapes(input_shape)
        return _GraphModule(
            [(node, layer if layer == "input" else layer.make_module(_inputs(shapes, layer, args), generator, dtype, device),
              args, isinstance(layer, (FanInSum, FanInConcat)))
             for node, layer, args in self.steps],
            self.output,
        )


def _arg(a: Any, where: str) -> str:
    if not isinstance(a, torch.fx.Node):
        raise _unsupported(where, f"a constant argument {a!r}")
    return a.name


def _inputs(shapes: dict[str, Shapes], layer: Layer, args: list[str]) -> Shapes:
    return [shapes[a] for a in args] if isinstance(layer, (FanInSum, FanInConcat)) else shapes[args[0]]


class _GraphModule(nn.Module):
    """Runs the traced steps on the finite modules (``merge``: the step takes a list of inputs)."""

    def __init__(self, steps: list[tuple[str, Any, list[str], bool]], output: str) -> None:
        super().__init__()
        self.steps_ = [(node, args, merge) for node, _, args, merge in steps]
        self.inputs = {node for node, mod, _, _ in steps if mod == "input"}
        self.mods = nn.ModuleDict({node: mod for node, mod, _, _ in steps if mod != "input"})
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, Any] = {}
        for node, args, merge in self.steps_:
            if node in self.inputs:
                env[node] = x
                continue
            ins = [env[a] for a in args]
            env[node] = self.mods[node](ins if merge else ins[0])
        return env[self.output]


def from_module(model: nn.Module, *, W_std: Any = 1.0, b_std: Any = 0.0, parameterization: str = "ntk") -> Layer:
    """The :mod:`torchntk.layers` spec of a ``torch.nn`` model (its infinite-width limit).

    Supported: ``nn.Sequential`` (nested), ``nn.Linear``, ``nn.Conv1d``/``nn.Conv2d``
    (``groups=1``, ``dilation=1``; padding ``"valid"``/``"same"``/ints, zeros or circular),
    ``nn.ConvTranspose1d``/``2d``, ``nn.AvgPool1d``/``2d`` (padded zeros counted),
    ``nn.AdaptiveAvgPool1d``/``2d`` to size 1, ``nn.Flatten()``, ``nn.LayerNorm`` over trailing
    axes that include the channels (its affine parameters are taken at their initial values
    1 and 0 and not counted in the NTK), ``nn.Dropout`` (the identity of the evaluated network),
    ``nn.Identity``, the activations ``ReLU``, ``LeakyReLU``, ``GELU`` (closed forms) and
    ``Tanh``, ``Sigmoid``, ``SiLU``, ``ELU``, ``Softplus``, ``Mish``... (quadrature), and
    torchntk's own :mod:`torchntk.nn` layers (with their own scales). Other modules are traced
    with ``torch.fx``: their submodules convert as above, and ``+`` (``FanInSum``),
    ``torch.cat(..., dim=1)``, ``torch.flatten(x, 1)`` and ``F.relu``/``torch.tanh``-like
    calls are understood.

    Args:
        model: the ``nn.Module`` (its weights are not read).
        W_std, b_std: the scales of every ``nn.Linear``/``nn.Conv*`` layer, as in
            CONVENTIONS section 1 (``b_std`` for the layers that have a bias; a 0-dim tensor
            keeps the kernel differentiable in it).
        parameterization: ``"ntk"`` (default) or ``"standard"`` (the NTK of a model
            initialized with ``W ~ N(0, W_std^2 / fan_in)``, ``b ~ N(0, b_std^2)``, which grows
            with the widths read from the modules).

    Raises:
        UnsupportedLayerError: naming the first module or operation without a rule (BatchNorm,
            MaxPool, attention written by hand...), with a pointer to
            :func:`~torchntk.layers.monte_carlo_kernel`.
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"from_module: `model` must be a torch.nn.Module, got {type(model).__name__}")
    _, _, parameterization = check_affine_args("from_module", W_std, b_std, parameterization)
    return _Converter(W_std, b_std, parameterization)(model, "")

