"""The layer protocol of the architecture spec, and the kernel driver (private).

Every layer (and every composition of layers) is a *spec* that knows three things:

- ``output_shape(input_shape)``: the per-sample shape after it (``(width,)`` or
  ``(channels, *spatial)``; a list of shapes between ``FanOut`` and a ``FanIn*``);
- ``kernel_rule(k) -> Kernel``: the infinite-width recursion, one :class:`Kernel` to the next;
- ``make_module(input_shape, generator, dtype, device) -> nn.Module``: the finite network.

The public entry points ``spec.kernel(x1, x2)`` and ``spec.module(input_shape)`` are defined
once here. Before computing, one backward pass over the spec (``needs_full``) decides where
the full spatial covariance (every pair of pixels) is needed: only upstream of a pooling layer.
Everywhere else the per-pixel (diagonal) layout is enough, which costs ``N^2 D`` instead of
``N^2 D^2`` for ``D`` pixels.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import torch
from torch import nn

from ..._checks import check_ints, renamed
from ..._memory import DEFAULT_MEMORY, memory_budget
from ..._progress import check_progress
from ...errors import InvalidArgumentError, ShapeError, SpecError, UnsupportedLayerError
from .. import _side, _spatial
from .gram import _check_inputs, input_kernel
from .kernel import LOCATING, Kernel, check_layer_output, finite_kernel
from .supports import Supports
from .planner import _block_size
from .threads import _blocked

Shape = tuple[int, ...]
Shapes = Union[Shape, list]
Kernels = Union[Kernel, list]


def any_full(flag: Any) -> bool:
    """Whether any branch of a (possibly nested) list of layout flags needs the full layout."""
    if isinstance(flag, (list, tuple)):
        return any(any_full(f) for f in flag)
    return bool(flag)


def shape_of(k: Kernels) -> Shapes:
    """The per-sample shape(s) carried by a kernel or a list of kernels."""
    if isinstance(k, list):
        return [shape_of(x) for x in k]
    return k.shape


def as_shape(input_shape: Any, name: str = "input_shape") -> Shape:
    """Normalize a per-sample input shape (an int or a sequence of positive ints)."""
    shape = check_ints(name, input_shape)
    if not 1 <= len(shape) <= 3 or any(s < 1 for s in shape):
        raise ShapeError(
            f"`{name}` must be the per-sample shape (features,), (C, L) or (C, H, W) without the "
            f"batch axis, with positive sizes; got {shape}"
        )
    return shape


def single(layer: "Layer", input_shape: Shapes) -> Shape:
    """Check that a single-input layer receives one tensor (not the branches of a FanOut)."""
    if isinstance(input_shape, list):
        raise SpecError(
            f"{layer!r} receives {len(input_shape)} branches; combine them first with "
            "FanInSum/FanInProd/FanInConcat or apply it per branch with parallel(...)"
        )
    return input_shape


class Layer:
    """Base class of every layer and combinator of :mod:`torchntk.layers`.

    Subclasses implement :meth:`output_shape`, :meth:`kernel_rule` and :meth:`make_module`;
    pooling-like layers override :meth:`needs_full`. Layers are immutable descriptions: the
    same instance may appear at several places of a spec.

    Compose with :func:`~torchntk.layers.serial` or ``a >> b``.
    """

    # -- the protocol ---------------------------------------------------------------------

    def output_shape(self, input_shape: Shapes) -> Shapes:
        """Per-sample output shape for a per-sample input shape; raises SpecError if invalid."""
        raise UnsupportedLayerError(f"{type(self).__name__} defines no output_shape")

    def kernel_rule(self, k: Kernels) -> Kernels:
        """The infinite-width recursion step: the kernel after this layer."""
        raise UnsupportedLayerError(
            f"{type(self).__name__} has no infinite-width kernel rule; "
            "torchntk.layers.monte_carlo_kernel estimates the kernels of any module"
        )

    def make_module(
        self, input_shape: Shapes, generator: torch.Generator | None, dtype: torch.dtype | None, device: Any
    ) -> nn.Module:
        """The finite-width module of this layer for a per-sample input shape."""
        raise UnsupportedLayerError(f"{type(self).__name__} defines no finite module (make_module)")

    def needs_full(self, input_shape: Shapes, out_full: Any) -> Any:
        """Whether the input kernel must hold every pixel pair, given whether the output must.

        Local layers (dense, conv, nonlinearities) pass the requirement through; pooling
        layers need the full layout; Flatten needs only the diagonal.
        """
        return out_full

    def mask_out(self, mask: Any, input_shape: Shapes) -> Any:
        """The padding mask after this layer, from the mask ``(N, *spatial)`` before it.

        ``None`` (no padding) stays ``None``. The default keeps the mask when the spatial shape
        is unchanged; a layer that changes it overrides this (or masks are refused).
        """
        if mask is None:
            return None
        out = self.output_shape(input_shape)
        if not isinstance(out, list) and not isinstance(input_shape, list) and out[1:] == tuple(input_shape[1:]):
            return mask
        raise SpecError(
            f"{self!r} changes the spatial shape {input_shape} -> {out} and does not support padding masks"
        )

    def _kernel(self, k: Kernels, out_full: Any) -> Kernels:
        """Apply the rule knowing the layout the rest of the spec needs (combinators use it).

        Leaf layers also carry the padding masks on to the output (:meth:`mask_out`).
        """
        out = self.kernel_rule(k)
        if not isinstance(out, Kernel):
            return out
        ins = k if isinstance(k, list) else [k]
        if all(x.mask1 is None and x.mask2 is None for x in ins):
            return out

        def masks(field: str) -> Any:
            return [getattr(x, field) for x in k] if isinstance(k, list) else getattr(k, field)

        shape = shape_of(k)
        return out.replace(mask1=self.mask_out(masks("mask1"), shape), mask2=self.mask_out(masks("mask2"), shape))

    # -- public API -----------------------------------------------------------------------

    def __rshift__(self, other: "Layer") -> "Layer":
        return serial(self, other)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def module(
        self,
        input_shape: int | tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> nn.Module:
        """The finite network of this spec, freshly initialized (CONVENTIONS section 1).

        Args:
            input_shape: per-sample shape without the batch axis: ``(features,)``, ``(C, L)``
                or ``(C, H, W)`` (an int means ``(features,)``).
            generator: ``torch.Generator`` for a reproducible draw.
            dtype, device: of the parameters (torch's defaults when ``None``).

        Example:
            >>> from torchntk import layers
            >>> net = layers.serial(layers.Dense(256, b_std=0.1), layers.Relu(), layers.Dense(1)).module(3)
            >>> net(torch.randn(5, 3)).shape
            torch.Size([5, 1])
        """
        shape = as_shape(input_shape)
        out = self.output_shape(shape)
        if isinstance(out, list):
            raise SpecError(f"the spec ends with {len(out)} branches; add a FanInSum/FanInProd/FanInConcat")
        return self.make_module(shape, generator, dtype, device)

    def kernel(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        block_size: int | None = None,
        memory: int | float | str | None = DEFAULT_MEMORY,
        diagonal_spatial: bool = True,
        mask: Any = None,
        pattern: Any = None,
        progress: bool | None = None,
        batch_size: int | None = None,
    ) -> Kernel:
        """Infinite-width NNGP and NTK of this spec between ``x1`` and ``x2`` (default ``x1``).

        Args:
            x1: inputs ``(N1, n0)``, ``(N1, C, L)`` or ``(N1, C, H, W)`` (channels first).
            x2: inputs ``(N2, *same per-sample shape)``, or ``None`` for ``x1`` itself (then the
                symmetric kernel is computed once per pair of blocks).
            dtype: of the computation and the result (float64 by default); the device is the
                inputs'.
            block_size: rows/columns per block. By default a block whose kernel tensors hold
                about 2^15 entries (2^16 in the full spatial layout; 181 rows for flat
                inputs; at least 4; the environment variable ``TORCHNTK_CACHE_BYTES``,
                default 256 KiB, scales them), within ``memory``: they stay in the processor's cache
                through the passes each layer makes, each pass runs on one or two threads,
                and the blocks are shared among
                ``torch.get_num_threads()`` worker threads (when no input requires grad). On a
                GPU the blocks are as large as ``memory`` allows (one block up to a few
                thousand flat rows at the default budget).
            memory: approximate budget of the tensors of one block, in bytes or as ``"1GiB"``,
                ``"500MB"`` (units of :mod:`torchntk._memory`; default 2 GiB).
            diagonal_spatial: for a spec whose output is still spatial, return the per-pixel
                kernel ``(N1, N2, *spatial)`` (default) or, if False, every pixel pair
                ``(N1, N2, S0, S0', S1, S1')``.
            mask: padding masks ``(m1, m2)``, boolean ``(N1, *spatial)`` / ``(N2, *spatial)``,
                True where a position is padding (``m2`` must be ``None`` when ``x2`` is; one
                tensor is accepted then; ``None`` for a batch without padding). The inputs'
                masked positions are set to 0, and the layers that mix positions (attention,
                pooling, Flatten, LayerNorm over spatial axes...) leave them out, so a padded
                and masked batch has the kernel of the unpadded one.
            pattern: graph patterns ``(p1, p2)`` of node-feature inputs ``(N, C, V)``: dense
                floating ``(N, V, V)`` (``p[n, i, j]``: an arc from node i to node j) or sparse
                integer ``(N, E, 2)`` edge lists of (tail, head); same pairing rules as ``mask``.
            progress: a progress bar over the blocks on stderr: ``None`` (default) shows it when
                the call runs longer than 2 s on a terminal, ``True`` always, ``False`` never.
            batch_size: deprecated name of ``block_size``.

        Returns:
            :class:`Kernel` with ``nngp`` and ``ntk`` (``(N1, N2)`` for a flat output),
            ``cov1`` (``(N1,)``) and ``cov2`` (``None`` when ``x2`` is ``None``). The kernel of a
            network with O outputs is ``ntk (x) I_O``.

        Example:
            >>> from torchntk import layers
            >>> spec = layers.serial(layers.Dense(512, b_std=0.1), layers.Relu(), layers.Dense(1))
            >>> k = spec.kernel(torch.randn(4, 3))
            >>> k.ntk.shape
            torch.Size([4, 4])
        """
        x1 = _check_inputs("x1", x1)
        check_progress(progress)
        same = x2 is None
        if not same:
            x2 = _check_inputs("x2", x2)
            if x2.shape[1:] != x1.shape[1:]:
                raise ShapeError(
                    f"`x2` per-sample shape {tuple(x2.shape[1:])} differs from `x1`'s {tuple(x1.shape[1:])}"
                )
            if x2.device != x1.device:
                raise InvalidArgumentError(f"`x1` is on {x1.device} but `x2` is on {x2.device}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise InvalidArgumentError(f"`dtype` must be a floating torch.dtype, got {dtype!r}")
        in_shape: Shape = tuple(x1.shape[1:])
        out_shape = self.output_shape(in_shape)
        if isinstance(out_shape, list):
            raise SpecError(f"the spec ends with {len(out_shape)} branches; add a FanInSum/FanInProd/FanInConcat")
        out_full = (not diagonal_spatial) and len(out_shape) > 1
        full_in = any_full(self.needs_full(in_shape, out_full)) and len(in_shape) > 1
        m1, m2 = _side.side_pair("mask", mask, x1, x2, _side.check_mask)
        p1, p2 = _side.side_pair("pattern", pattern, x1, x2, _side.check_pattern)
        x1 = _side.zero_masked(x1.to(dtype), m1)
        x2 = None if same else _side.zero_masked(x2.to(dtype), m2)
        if p1 is not None and p1.is_floating_point():
            p1 = p1.to(dtype)
        if p2 is not None and p2.is_floating_point():
            p2 = p2.to(dtype)

        block_size = renamed("block_size", block_size, "batch_size", batch_size)
        b = _block_size(in_shape, full_in, dtype, block_size, memory_budget(memory), x1.device)
        n1 = x1.shape[0]
        n2 = n1 if same else x2.shape[0]
        xb, mb, pb = (x1, m1, p1) if same else (x2, m2, p2)

        def part(t: torch.Tensor | None, rows: slice) -> torch.Tensor | None:
            return None if t is None else t[rows]

        def run(r1: slice, r2: slice | None) -> Kernel:
            """The kernel of rows ``r1`` of x1 with rows ``r2`` of x2 (``None``: r1 with itself)."""
            k = input_kernel(x1[r1], None if r2 is None else xb[r2], full=full_in)
            k = k.replace(
                mask1=part(m1, r1), mask2=None if r2 is None else part(mb, r2),
                pattern1=part(p1, r1), pattern2=None if r2 is None else part(pb, r2),
            )
            k = self._kernel(k, out_full)
            if isinstance(k, list):  # pragma: no cover - excluded by output_shape above
                raise SpecError("the spec ends with several branches")
            return k if out_full else _spatial.to_diagonal(k)

        def locate(i: int, j: int) -> Kernel:
            return run(slice(i, i + 1), None if same and i == j else slice(j, j + 1))

        everything = slice(None)
        if n1 <= b and n2 <= b:
            return finite_kernel(run(everything, None if same else everything), self, locate)
        grad = torch.is_grad_enabled() and (x1.requires_grad or xb.requires_grad)
        # One thread on an accelerator: its blocks are large and queue on one stream anyway.
        out = _blocked(run, n1, n2, same, b, grad or x1.device.type != "cpu", progress)
        return finite_kernel(out.replace(
            mask1=self.mask_out(m1, in_shape), mask2=None if same else self.mask_out(m2, in_shape),
            pattern1=p1, pattern2=p2,
        ), self, locate)

    # convenience -------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Kernel:
        """Alias of :meth:`kernel`."""
        return self.kernel(*args, **kwargs)


# -- composition in sequence (``serial``, ``a >> b``) -----------------------------------------

def check_layers(layers: Sequence[Any], who: str) -> tuple[Layer, ...]:
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise InvalidArgumentError(
                f"{who}: argument {i} must be a torchntk.layers layer, got {type(layer).__name__}"
            )
    return tuple(layers)


def _downconvert(k: Kernels) -> Kernels:
    if isinstance(k, list):
        return [_downconvert(x) for x in k]
    return _spatial.to_diagonal(k)


class Serial(Layer):
    """Layers applied one after the other (built by :func:`serial` or ``a >> b``)."""

    supports = Supports(masks=True, features="serial")

    def __init__(self, *layers: Layer) -> None:
        flat: list[Layer] = []
        for layer in check_layers(layers, "serial"):
            flat.extend(layer.layers if isinstance(layer, Serial) else [layer])
        self.layers = tuple(flat)

    def __repr__(self) -> str:
        return f"serial({', '.join(map(repr, self.layers))})"

    def _shapes(self, input_shape: Shapes) -> list[Shapes]:
        shapes = [input_shape]
        for layer in self.layers:
            shapes.append(layer.output_shape(shapes[-1]))
        return shapes

    def output_shape(self, input_shape: Shapes) -> Shapes:
        return self._shapes(input_shape)[-1]

    def _flags(self, shapes: list[Shapes], out_full: Any) -> list[Any]:
        """``flags[i]``: whether the output of layer ``i`` must be in the full layout."""
        flags: list[Any] = [None] * len(self.layers)
        need = out_full
        for i in range(len(self.layers) - 1, -1, -1):
            flags[i] = need
            need = self.layers[i].needs_full(shapes[i], need)
        return flags

    def needs_full(self, input_shape: Shapes, out_full: Any) -> Any:
        shapes = self._shapes(input_shape)
        need = out_full
        for i in range(len(self.layers) - 1, -1, -1):
            need = self.layers[i].needs_full(shapes[i], need)
        return need

    def _kernel(self, k: Kernels, out_full: Any) -> Kernels:
        shapes = self._shapes(shape_of(k))
        flags = self._flags(shapes, out_full)
        for i, layer in enumerate(self.layers):
            if not any_full(layer.needs_full(shapes[i], flags[i])):
                k = _downconvert(k)
            k = layer._kernel(k, flags[i])
            if LOCATING.get():  # only while a non-finite kernel is traced back (finite_kernel)
                check_layer_output(k, i, layer)
        return k

    def kernel_rule(self, k: Kernels) -> Kernels:
        return self._kernel(k, False)

    def mask_out(self, mask: Any, input_shape: Shapes) -> Any:
        shapes = self._shapes(input_shape)
        for layer, shape in zip(self.layers, shapes):
            mask = layer.mask_out(mask, shape)
        return mask

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        shapes = self._shapes(input_shape)
        return _SerialModule(
            [layer.make_module(s, generator, dtype, device) for layer, s in zip(self.layers, shapes)],
            list(zip(self.layers, shapes)),
        )


class _SerialModule(nn.Sequential, _side.SideModule):
    """``nn.Sequential`` that passes the side inputs on: ``forward(x, mask=None, pattern=None)``.

    The mask follows the spatial shape through the layers (``layer.mask_out``); the pattern is
    passed unchanged. Modules that are not :class:`~torchntk.layers._side.SideModule` get ``x`` only.
    """

    def __init__(self, modules: list[nn.Module], steps: list[tuple[Layer, Shapes]]) -> None:
        super().__init__(*modules)
        self._steps = steps

    def forward(self, x: Any, mask: Any = None, pattern: Any = None) -> Any:
        if mask is None and pattern is None:
            for module in self:
                x = module(x)
            return x
        for module, (layer, shape) in zip(self, self._steps):
            x = _side.call(module, x, mask, pattern)
            mask = layer.mask_out(mask, shape)
        return x


def serial(*layers: Layer) -> Serial:
    """Compose layers in sequence: the spec of ``layers[-1](...(layers[0](x)))``.

    Example:
        >>> from torchntk import layers as L
        >>> spec = L.serial(L.Dense(512, b_std=0.1), L.Relu(), L.Dense(1, b_std=0.1))
        >>> spec.kernel(torch.randn(3, 2)).ntk.shape
        torch.Size([3, 3])
    """
    return Serial(*layers)
