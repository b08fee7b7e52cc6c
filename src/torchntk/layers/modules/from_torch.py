"""``from_module``: the architecture spec of a plain ``torch.nn`` model.

The infinite-width kernels do not depend on the drawn weights, only on the architecture and on
the weight and bias scales, so the spec is read from the module tree: widths, kernel sizes,
strides and paddings from the modules, ``W_std``/``b_std``/``parameterization`` from the
arguments (torchntk's own :mod:`torchntk.nn` layers carry theirs; by default every bias
follows PyTorch's initialization of the model). ``nn.Sequential`` (nested) is walked; any other
container is traced with ``torch.fx`` (:mod:`._fx`), which sees residual additions (``x + f(x)``:
a :class:`~torchntk.layers.FanInSum`, once the branches are shown uncorrelated), concatenations
along the channels and functional calls. Every converted module checks the input shape the
torch module would accept. Anything without an infinite-width rule raises an error that names
it.

Example:
    >>> from torch import nn
    >>> from torchntk import layers as L
    >>> model = nn.Sequential(nn.Linear(3, 512), nn.ReLU(), nn.Linear(512, 1))
    >>> spec = L.from_module(model, W_std=1.0, b_std=0.1)
    >>> spec.kernel(torch.randn(4, 3)).ntk.shape
    torch.Size([4, 4])
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ... import nn as tnn
from ...errors import InvalidArgumentError, ShapeError, SpecError, TorchNTKWarning
from .. import _spatial
from .._core.combinators import Identity, serial
from .._core.kernel import Kernel
from .._core.protocol import Layer, Shapes, single
from ..activations import Elementwise, Erf, Gelu, LeakyRelu, Relu
from ..conv.convolution import Conv
from ..conv.transpose import ConvTranspose
from ..dense.fully_connected import Dense, check_affine_args
from .._core.supports import Supports
from ..normalization.normalizers import Dropout, LayerNorm
from ..pooling.pools import AvgPool, Flatten, GlobalAvgPool
from ._fx import GraphSpec
from ._fx_rules import Checked, ModelSerial, Scale, unsupported

__all__ = ["from_module"]

#: Stateless elementwise activation modules, whose kernel comes by quadrature.
_QUADRATURE = (
    nn.Tanh, nn.Sigmoid, nn.SiLU, nn.ELU, nn.CELU, nn.SELU, nn.Softplus, nn.Mish, nn.Hardtanh, nn.ReLU6,
    nn.Softsign, nn.Tanhshrink, nn.Hardswish, nn.Hardsigmoid, nn.LogSigmoid,
)
#: ``b_std="torch"``: a layer's bias scale is that of PyTorch's default initialization.
TORCH = "torch"


class _ZeroPad(Layer):
    """Explicit padding of the spatial axes by ``pads[a] = (before, after)`` zeros (or wrapped)."""

    linear_map = True

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


class _Expect:
    """A check of the per-sample input shape (channels first) that a torch module runs on
    (a class, not a closure: specs stay picklable).

    ``ranks``: the allowed numbers of axes; ``channels``: the size of axis 0; ``trailing``: the
    last axes (LayerNorm); ``last_axis``: the module acts on the last axis (``nn.Linear``).
    """

    def __init__(self, where: str, m: nn.Module, ranks: tuple[int, ...], channels: int | None = None,
                 trailing: tuple[int, ...] | None = None, last_axis: bool = False) -> None:
        self.where, self.module, self.ranks, self.channels = where, repr(m), ranks, channels
        self.trailing, self.last_axis = trailing, last_axis

    def __call__(self, shape: Shapes) -> None:
        if isinstance(shape, list):  # several branches: the layer's own error says so
            return
        shape, where, m, channels = tuple(shape), self.where, self.module, self.channels
        if self.last_axis and len(shape) > 1:
            if shape[-1] != channels:
                raise ShapeError(
                    f"from_module: {where}: {m} maps the last axis of its input, of size {channels}; its per-sample "
                    f"input here has shape {shape}"
                )
            raise unsupported(
                f"{where}: {m} on a per-sample input of shape {shape}",
                "it maps the last axis (the positions) while torchntk's Dense maps the channels (axis 1); put "
                "nn.Flatten() before it, or map the channels at every position with a 1x1 nn.Conv1d/nn.Conv2d",
            )
        if len(shape) not in self.ranks:
            names = {1: "(features,)", 2: "(C, L)", 3: "(C, H, W)"}
            raise ShapeError(
                f"from_module: {where}: {m} runs on per-sample inputs {' or '.join(names[r] for r in self.ranks)}, "
                f"got {shape}"
            )
        if channels is not None and shape[0] != channels:
            raise ShapeError(
                f"from_module: {where}: {m} expects {channels} input channels/features, got {shape[0]} "
                f"(per-sample input shape {shape})"
            )
        trailing = self.trailing
        if trailing is not None and shape[len(shape) - len(trailing):] != trailing:
            raise ShapeError(f"from_module: {where}: {m} normalizes trailing axes {trailing}, got input shape {shape}")


class _Converter:
    """Module -> spec, with the scales of the arguments (``b_std="torch"`` resolved per layer)."""

    def __init__(self, W_std: Any, b_std: Any, parameterization: str) -> None:
        self.W_std, self.b_std, self.parameterization = W_std, b_std, parameterization
        self.seen: dict[int, str] = {}  # parameters already converted (by id): their layer
        self.affine: list[str] = []  # normalization layers whose affine parameters require grad

    def bias(self, module: nn.Module) -> Any:
        if getattr(module, "bias", None) is None:
            return None
        if isinstance(self.b_std, str):  # "torch": the std of U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            fan_in = nn.init._calculate_fan_in_and_fan_out(module.weight)[0]
            return (3.0 * fan_in) ** -0.5
        return self.b_std

    def __call__(self, m: nn.Module, name: str) -> Layer:
        where = f"{'layer ' + repr(name) if name else 'the model'} ({type(m).__name__})"
        if isinstance(m, nn.Sequential) and type(m) in (nn.Sequential, tnn.MLP):
            # ``_modules``, not ``named_children()``: the latter skips a module met twice (a reused nn.ReLU)
            children = [self(c, f"{name}.{n}" if name else n) for n, c in m._modules.items() if c is not None]
            return ModelSerial(children or [Identity()])
        for p in m.parameters(recurse=False):  # a module used twice, or a parameter shared by two
            if id(p) in self.seen:
                raise unsupported(
                    where, f"its parameters are also used by {self.seen[id(p)]} (tied weights), and the infinite-width "
                    "rules hold for independent weights in every layer",
                )
        self.seen.update((id(p), f"layer {name!r}" if name else "the model") for p in m.parameters(recurse=False))
        layer, check = self.leaf(m, name, where)
        if layer is None:
            return self.traced(m, name, where)
        return Checked(layer, where, check)

    def leaf(self, m: nn.Module, name: str, where: str) -> tuple[Layer | None, Any]:
        """The layer of a module with a rule and the check of its input shape (None: trace it)."""
        if isinstance(m, (tnn.Linear, nn.Linear)):
            ours = isinstance(m, tnn.Linear)
            W_std, b_std, par = (m.W_std, m.b_std, m.parameterization) if ours else (self.W_std, self.bias(m), self.parameterization)
            return _dense_like(m.out_features, W_std, b_std, par), _Expect(where, m, (1,), m.in_features, last_axis=True)
        if isinstance(m, (tnn.Conv1d, tnn.Conv2d)):
            pad = m.padding
            check = _Expect(where, m, (2 if isinstance(m, tnn.Conv1d) else 3,), m.in_channels)
            if isinstance(pad, str):
                return Conv(m.out_channels, m.kernel_size, m.stride, pad.upper(), m.W_std, m.b_std, m.parameterization), check
            return serial(_ZeroPad(tuple((p, p) for p in pad)),
                          Conv(m.out_channels, m.kernel_size, m.stride, "VALID", m.W_std, m.b_std, m.parameterization)), check
        if isinstance(m, tnn.Erf):
            return Erf(), None
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            return self.conv(m, where), _Expect(where, m, (2 if isinstance(m, nn.Conv1d) else 3,), m.in_channels)
        if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
            return self.conv_transpose(m, where), _Expect(where, m, (2 if isinstance(m, nn.ConvTranspose1d) else 3,), m.in_channels)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            ranks = (1, 2) if isinstance(m, nn.BatchNorm1d) else (3,)
            return self.batch_norm(m, name, where), _Expect(where, m, ranks, m.num_features)
        if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d)):
            dims = 1 if isinstance(m, nn.AvgPool1d) else 2
            if m.ceil_mode or (not m.count_include_pad and any(_ints(m.padding, dims))) or getattr(m, "divisor_override", None):
                raise unsupported(where, "only ceil_mode=False with padded zeros counted in the mean")
            pads = _ints(m.padding, dims)
            pool = AvgPool(_ints(m.kernel_size, dims), _ints(m.stride or m.kernel_size, dims), "VALID")
            return (serial(_ZeroPad(tuple((p, p) for p in pads)), pool) if any(pads) else pool), _Expect(where, m, (dims + 1,))
        if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            dims = 1 if isinstance(m, nn.AdaptiveAvgPool1d) else 2
            if any(s != 1 for s in _ints(m.output_size, dims)):
                raise unsupported(where, "only output_size 1 (global average pooling)")
            return _GlobalAvgPoolKeep(), _Expect(where, m, (dims + 1,))
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)):
            raise unsupported(where, "the maximum of correlated Gaussians has no closed-form kernel")
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise unsupported(where, "only Flatten(start_dim=1, end_dim=-1)")
            return Flatten(), None
        if isinstance(m, nn.LayerNorm):
            trailing = tuple(m.normalized_shape)
            if any(p.requires_grad for p in m.parameters()):
                self.affine.append(repr(name) if name else "the model")
            return LayerNorm(axis=tuple(range(-len(trailing), 0)), eps=m.eps), _Expect(where, m, (1, 2, 3), trailing=trailing)
        if isinstance(m, nn.Dropout):
            return Dropout(m.p, mode="test"), None
        if isinstance(m, nn.Identity):
            return Identity(), None
        if isinstance(m, nn.ReLU):
            return Relu(), None
        if isinstance(m, nn.LeakyReLU):
            return LeakyRelu(m.negative_slope), None
        if isinstance(m, nn.GELU):
            return (Gelu() if m.approximate == "none" else Elementwise(lambda x: F.gelu(x, approximate="tanh"))), None
        if type(m) in _QUADRATURE:
            return Elementwise(m), None
        if not list(m.children()) and type(m).forward is not nn.Module.forward:
            if type(m).__module__.startswith("torch.nn"):
                raise unsupported(where)
        return None, None

    def batch_norm(self, m: nn.BatchNorm1d | nn.BatchNorm2d, name: str, where: str) -> Layer:
        """Eval-mode BatchNorm, ``y = gamma (x - mean) / sqrt(var + eps) + beta``: the map ``s x + t``.

        One scale ``s`` for every channel and no shift (``t = 0``, as at initialization): the
        exact rule is :class:`~._fx.Scale` (``Sigma' = s^2 Sigma``, ``Theta' = s^2 Theta``).
        """
        if m.training or m.running_var is None or m.running_mean is None:
            raise unsupported(
                where, "in training mode (or without running statistics) it normalizes with the statistics of the "
                "batch, which mixes the examples; call model.eval() to convert it as the affine map of its running "
                "statistics",
            )
        with torch.no_grad():
            var, mean = m.running_var.double(), m.running_mean.double()
            gamma = torch.ones_like(var) if m.weight is None else m.weight.double()
            beta = torch.zeros_like(var) if m.bias is None else m.bias.double()
            scale = gamma / torch.sqrt(var + m.eps)
            shift = beta - scale * mean
        # The statistics are float32 buffers: scales within a few float32 roundings are one number.
        tol = 1e-6 * float(scale.abs().max().clamp_min(1e-30))
        lo, hi = float(scale.min()), float(scale.max())
        if hi - lo > tol:
            raise unsupported(
                where, f"its per-channel scale weight / sqrt(running_var + eps) differs across channels (from {lo:.6g} "
                f"to {hi:.6g}), and the infinite-width rules carry one kernel for all channels",
            )
        if float(shift.abs().max()) > tol:
            raise unsupported(
                where, f"its per-channel shift bias - weight * running_mean / sqrt(running_var + eps) is not zero "
                f"(largest {float(shift.abs().max()):.6g}): a shifted pre-activation has no zero-mean Gaussian limit",
            )
        if m.affine and (m.weight.requires_grad or m.bias.requires_grad):
            self.affine.append(repr(name) if name else "the model")
        return Scale(float(scale.mean()))

    def conv(self, m: nn.Conv1d | nn.Conv2d, where: str) -> Layer:
        dims = 1 if isinstance(m, nn.Conv1d) else 2
        if m.groups != 1 or any(d != 1 for d in _ints(m.dilation, dims)):
            raise unsupported(where, "only groups=1 and dilation=1")
        kw = {"W_std": self.W_std, "b_std": self.bias(m), "parameterization": self.parameterization}
        if isinstance(m.padding, str):
            if m.padding_mode not in ("zeros", "circular"):
                raise unsupported(where, f"padding_mode={m.padding_mode!r}")
            pad = m.padding.upper() if m.padding == "valid" or m.padding_mode == "zeros" else "CIRCULAR"
            return Conv(m.out_channels, m.kernel_size, m.stride, pad, **kw)
        pads = _ints(m.padding, dims)
        if m.padding_mode not in ("zeros", "circular"):
            raise unsupported(where, f"padding_mode={m.padding_mode!r}")
        conv = Conv(m.out_channels, m.kernel_size, m.stride, "VALID", **kw)
        if not any(pads):
            return conv
        return serial(_ZeroPad(tuple((p, p) for p in pads), circular=m.padding_mode == "circular"), conv)

    def conv_transpose(self, m: nn.ConvTranspose1d | nn.ConvTranspose2d, where: str) -> Layer:
        dims = 1 if isinstance(m, nn.ConvTranspose1d) else 2
        if m.groups != 1 or any(d != 1 for d in _ints(m.dilation, dims)) or m.padding_mode != "zeros":
            raise unsupported(where, "only groups=1, dilation=1 and zero padding")
        k, p, q = _ints(m.kernel_size, dims), _ints(m.padding, dims), _ints(m.output_padding, dims)
        pads = tuple((kk - 1 - pp, kk - 1 - pp + qq) for kk, pp, qq in zip(k, p, q))
        return ConvTranspose(m.out_channels, k, _ints(m.stride, dims), pads, self.W_std, self.bias(m), self.parameterization)

    def traced(self, m: nn.Module, name: str, where: str) -> Layer:
        try:
            graph = torch.fx.symbolic_trace(m).graph
        except Exception as err:  # noqa: BLE001 - any tracing failure means "not convertible"
            raise unsupported(where, f"torch.fx cannot trace its forward ({type(err).__name__}: {err})") from None
        return GraphSpec(graph, m, self, name)


def _dense_like(out: int, W_std: Any, b_std: Any, parameterization: str) -> Layer:
    return Dense(out, W_std, b_std, parameterization)


def _first_leaf(m: nn.Module) -> nn.Module:
    while isinstance(m, nn.Sequential) and len(m):
        m = next(iter(m._modules.values()))
    return m


def from_module(model: nn.Module, *, W_std: Any = 1.0, b_std: Any = TORCH, parameterization: str = "ntk") -> Layer:
    """The :mod:`torchntk.layers` spec of a ``torch.nn`` model (its infinite-width limit).

    Supported: ``nn.Sequential`` (nested; a stateless module such as ``nn.ReLU()`` may appear
    several times, a module with parameters only once), ``nn.Linear`` (on flat inputs),
    ``nn.Conv1d``/``nn.Conv2d`` (``groups=1``, ``dilation=1``; padding ``"valid"``/``"same"``/
    ints, zeros or circular), ``nn.ConvTranspose1d``/``2d``, ``nn.AvgPool1d``/``2d`` (padded
    zeros counted), ``nn.AdaptiveAvgPool1d``/``2d`` to size 1, ``nn.Flatten()``, eval-mode
    ``nn.BatchNorm1d``/``2d`` (see below), ``nn.LayerNorm`` over trailing axes that include the
    channels (its affine parameters are taken at their initial values 1 and 0 and not counted
    in the NTK: a warning says so when they require grad), ``nn.Dropout`` (the identity of the evaluated network), ``nn.Identity``, the
    activations ``ReLU``, ``LeakyReLU``, ``GELU`` (closed forms) and ``Tanh``, ``Sigmoid``,
    ``SiLU``, ``ELU``, ``Softplus``, ``Mish``... (quadrature), and torchntk's own
    :mod:`torchntk.nn` layers (with their own scales). Other modules are traced with
    ``torch.fx``: their submodules convert as above, and these calls are understood: ``a + b``,
    ``a - b``, ``torch.add``, ``h + h`` (``2 h``), ``c * h`` and ``h / c`` for a number ``c``,
    ``torch.cat(..., dim=1)``, ``torch.flatten(h, 1)``, and elementwise functions and methods
    (``F.relu(h)``, ``F.relu(h, inplace=True)``, ``h.relu()``, ``torch.tanh``, ``F.gelu``,
    ``F.silu``, ``F.leaky_relu(h, 0.2)``, ``F.elu``, ``F.softplus``...; in-place calls are
    followed). A sum's rule (``Sigma = sum_b Sigma_b``) needs uncorrelated branches: ones that
    share no input or weight layer's output, at least one of them ending with its own
    Linear/Conv layer (a residual ``x + f(x)``); any other sum is refused, naming the node.

    Eval-mode BatchNorm is the affine map ``y = s x + t`` with ``s = weight / sqrt(running_var
    + eps)`` and ``t = bias - s running_mean`` (fixed statistics). With one ``s`` for all
    channels and ``t = 0`` (a fresh model: ``s = 1 / sqrt(1 + eps)``), its rule is exact:
    ``Sigma' = s^2 Sigma``, ``Theta' = s^2 Theta`` (in the NTK parameterization, the same as
    ``W_std``, ``b_std`` of the layer before it multiplied by ``s``). Other statistics are
    refused. Its affine parameters enter as these fixed values and are not counted in the NTK
    (a warning says so when they require grad: leave them out of ``empirical_ntk(params=...)``
    to compare).

    Args:
        model: the ``nn.Module`` (its weights are not read; BatchNorm's statistics are).
        W_std: the weight scale of every ``nn.Linear``/``nn.Conv*`` layer (CONVENTIONS
            section 1; a 0-dim tensor keeps the kernel differentiable in it). PyTorch's default
            initialization (uniform, variance ``1 / (3 fan_in)``) is ``W_std = 1 / sqrt(3)`` for
            ``Linear``/``Conv``.
        b_std: the bias scale of the layers that have a bias. The default ``"torch"`` follows the
            model: ``b_std = 1 / sqrt(3 fan_in)`` per layer, the standard deviation of
            PyTorch's default bias initialization ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (the
            same bias distribution in both parameterizations; ``fan_in`` as PyTorch counts it).
            A number (or a 0-dim tensor) sets every layer's; ``0``/``None`` drops the biases.
        parameterization: ``"ntk"`` (default) or ``"standard"`` (the NTK of a model
            initialized with ``W ~ N(0, W_std^2 / fan_in)``, ``b ~ N(0, b_std^2)``, which grows
            with the widths read from the modules; with ``W_std=3**-0.5`` it is the NTK of the
            model as PyTorch initializes it).

    Returns:
        The spec; its repr shows the scales chosen for every layer.

    Raises:
        UnsupportedLayerError: naming the first module or operation without a rule (train-mode
            BatchNorm, MaxPool, a reused Linear, a correlated sum, attention written by
            hand...), with a pointer to :func:`~torchntk.layers.monte_carlo_kernel`.
        ShapeError: a layer whose input the previous layers cannot give (here for a model
            whose first layer is a ``Linear``, else at ``spec.kernel``), naming it.
        SpecError: at ``spec.kernel``, a nonlinearity of a non-Gaussian sum (a post-activation
            residual block), with the block rewritten in its pre-activation form.
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"from_module: `model` must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(b_std, str):
        if b_std.lower() != TORCH:
            raise InvalidArgumentError(f"from_module: `b_std` must be a number, a 0-dim tensor, None or 'torch', got {b_std!r}")
        _, _, parameterization = check_affine_args("from_module", W_std, None, parameterization)
        b_std = TORCH
    else:
        _, _, parameterization = check_affine_args("from_module", W_std, b_std, parameterization)
    convert = _Converter(W_std, b_std, parameterization)
    spec = convert(model, "")
    if convert.affine:
        warnings.warn(
            f"from_module: the NTK does not count the affine parameters (weight, bias) of the normalization layers "
            f"{', '.join(convert.affine)} (BatchNorm: their values, LayerNorm: 1 and 0, enter as fixed); to compare "
            "with empirical_ntk of the model, leave them out (params=...) or freeze them (requires_grad_(False))",
            TorchNTKWarning, stacklevel=2,
        )
    first = _first_leaf(model)
    if isinstance(first, (nn.Linear, tnn.Linear)):  # the input shape is known: check every layer now
        spec.output_shape((first.in_features,))
    bias = "'torch' (1/sqrt(3 fan_in) for each layer with a bias)" if b_std == TORCH else repr(b_std)
    return ModelSerial([spec], header=f"from_module(W_std={W_std!r}, b_std={bias}, parameterization={parameterization!r}) = ")
