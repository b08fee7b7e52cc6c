"""Combinators of the spec: ``serial``, ``parallel``, ``FanOut``, ``FanInSum``, ``FanInProd``,
``FanInConcat`` and ``Identity``.

Branches: ``FanOut(n)`` turns one activation into ``n`` copies (a list), ``parallel(*layers)``
applies one layer per branch, and a ``FanIn*`` layer merges them. The kernel rules assume the
branches are *uncorrelated* (their cross-covariance vanishes), which holds at infinite width
when every branch but at most one passes through its own randomly initialized layer with
zero-mean weights, as in a residual block ``x + f(x)``:

- ``FanInSum``:    ``Sigma = sum_b Sigma_b``, ``Theta = sum_b Theta_b``;
- ``FanInProd``:   ``Sigma = prod_b Sigma_b``, ``Theta = sum_b Theta_b prod_{c != b} Sigma_c``
  (the output is not Gaussian any more);
- ``FanInConcat``: along the channel axis (axis 1), ``Sigma = sum_b (C_b / C) Sigma_b`` (the
  kernels are per-unit averages, weighted by each branch's width ``C_b``).

Example (a residual block):
    >>> from torchntk import layers as L
    >>> block = L.serial(L.FanOut(2), L.parallel(L.Identity(), L.serial(L.Relu(), L.Dense(256))), L.FanInSum())
    >>> spec = L.serial(L.Dense(256), block, L.Relu(), L.Dense(1))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..._checks import check_int
from ...errors import InvalidArgumentError, SpecError
from .. import _side, _spatial
from .protocol import Kernels, Layer, Shapes, any_full, check_layers, serial, shape_of, single
from .supports import Supports
from .kernel import Kernel

__all__ = ["serial", "repeat", "parallel", "FanOut", "FanInSum", "FanInProd", "FanInConcat", "Identity"]


def repeat(layer: Layer, n: int) -> Layer:
    """``layer`` applied ``n`` times in sequence: ``serial(layer, ..., layer)`` (``n = 0``: the
    identity). The copies are distinct layers of the finite network (their own weights), as
    neural-tangents' ``repeat``.

    Example:
        >>> from torchntk import layers as L
        >>> block = L.serial(L.Dense(256), L.Relu())
        >>> spec = L.serial(L.repeat(block, 3), L.Dense(1))
    """
    (layer,) = check_layers((layer,), "repeat")
    n = check_int("n", n, minimum=0, who="repeat")
    return serial(*([layer] * n)) if n else Identity()


class _ParallelModule(nn.ModuleList, _side.SideModule):
    def forward(self, xs: list[torch.Tensor], mask: Any = None, pattern: Any = None) -> list[torch.Tensor]:
        masks = mask if isinstance(mask, list) else [mask] * len(self)
        return [_side.call(m, x, mk, pattern) for m, x, mk in zip(self, xs, masks)]


class Parallel(Layer):
    """One layer per branch (built by :func:`parallel`)."""

    supports = Supports(masks=True, features="parallel")

    def __init__(self, *layers: Layer) -> None:
        self.layers = check_layers(layers, "parallel")
        if not self.layers:
            raise InvalidArgumentError("parallel() needs at least one layer")

    def __repr__(self) -> str:
        return f"parallel({', '.join(map(repr, self.layers))})"

    def _inputs(self, input_shape: Shapes) -> list[Shapes]:
        if not isinstance(input_shape, list) or len(input_shape) != len(self.layers):
            got = f"{len(input_shape)} branches" if isinstance(input_shape, list) else "a single input"
            raise SpecError(f"parallel of {len(self.layers)} layers needs {len(self.layers)} branches (FanOut), got {got}")
        return input_shape

    def output_shape(self, input_shape: Shapes) -> Shapes:
        return [layer.output_shape(s) for layer, s in zip(self.layers, self._inputs(input_shape))]

    def needs_full(self, input_shape: Shapes, out_full: Any) -> Any:
        flags = out_full if isinstance(out_full, list) else [out_full] * len(self.layers)
        return [layer.needs_full(s, f) for layer, s, f in zip(self.layers, self._inputs(input_shape), flags)]

    def _kernel(self, k: Kernels, out_full: Any) -> Kernels:
        self._inputs(shape_of(k))
        flags = out_full if isinstance(out_full, list) else [out_full] * len(self.layers)
        return [layer._kernel(x, f) for layer, x, f in zip(self.layers, k, flags)]

    def kernel_rule(self, k: Kernels) -> Kernels:
        return self._kernel(k, False)

    def mask_out(self, mask: Any, input_shape: Shapes) -> Any:
        shapes = self._inputs(input_shape)
        if mask is None:
            return None
        masks = mask if isinstance(mask, list) else [mask] * len(self.layers)
        return [layer.mask_out(m, s) for layer, m, s in zip(self.layers, masks, shapes)]

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        return _ParallelModule(
            [layer.make_module(s, generator, dtype, device) for layer, s in zip(self.layers, self._inputs(input_shape))]
        )


def parallel(*layers: Layer) -> Parallel:
    """Apply ``layers[b]`` to branch ``b`` of a ``FanOut`` (one layer per branch)."""
    return Parallel(*layers)


class _FanOutModule(nn.Module):
    def __init__(self, num: int) -> None:
        super().__init__()
        self.num = num

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x] * self.num


class FanOut(Layer):
    """Copy the activation into ``num`` branches (a list), to be merged by a ``FanIn*`` layer."""

    supports = Supports(masks=True, features="fan_out")

    def __init__(self, num: int) -> None:
        self.num = check_int("num", num, minimum=1, who="FanOut")

    def __repr__(self) -> str:
        return f"FanOut({self.num})"

    def output_shape(self, input_shape: Shapes) -> Shapes:
        return [single(self, input_shape)] * self.num

    def needs_full(self, input_shape: Shapes, out_full: Any) -> Any:
        return any_full(out_full)

    def kernel_rule(self, k: Kernels) -> Kernels:
        single(self, shape_of(k))
        return [k] * self.num

    def mask_out(self, mask: Any, input_shape: Shapes) -> Any:
        return None if mask is None else [mask] * self.num

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        return _FanOutModule(self.num)


class _FanIn(Layer):
    """Common part of the FanIn layers: a list of branches in, one tensor out."""

    def _branches(self, input_shape: Shapes) -> list[tuple[int, ...]]:
        if not isinstance(input_shape, list):
            raise SpecError(f"{self!r} needs several branches (after FanOut/parallel), got a single input")
        for s in input_shape:
            if isinstance(s, list):
                raise SpecError(f"{self!r}: nested branches; merge the inner ones first")
        return input_shape

    def needs_full(self, input_shape: Shapes, out_full: Any) -> Any:
        return [out_full] * len(self._branches(input_shape))

    def mask_out(self, mask: Any, input_shape: Shapes) -> Any:
        """A position of the merged output is padding when it is padding in any branch."""
        self.output_shape(input_shape)
        masks = [m for m in (mask if isinstance(mask, list) else [mask]) if m is not None]
        if not masks:
            return None
        out = masks[0]
        for m in masks[1:]:
            out = out | m
        return out

    @staticmethod
    def _same_layout(ks: list[Kernel]) -> list[Kernel]:
        if len({k.full_spatial for k in ks}) > 1:
            ks = [_spatial.to_diagonal(k) for k in ks]
        return ks

    def _check_equal(self, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        if len(set(shapes)) != 1:
            raise SpecError(f"{self!r}: the branches have different shapes {shapes}; they must be equal")
        return shapes[0]


class _SumModule(nn.Module):
    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return sum(xs[1:], xs[0])


class FanInSum(_FanIn):
    """Sum of the branches: ``Sigma = sum_b Sigma_b``, ``Theta = sum_b Theta_b`` (equal shapes)."""

    supports = Supports(masks=True, features="fan_in_sum")

    def output_shape(self, input_shape: Shapes) -> Shapes:
        return self._check_equal(self._branches(input_shape))

    def kernel_rule(self, k: Kernels) -> Kernel:
        self.output_shape(shape_of(k))
        ks = self._same_layout(k)
        ntk = None if any(x.ntk is None for x in ks) else sum(x.ntk for x in ks)
        return ks[0].replace(
            nngp=sum(x.nngp for x in ks),
            ntk=ntk,
            cov1=sum(x.cov1 for x in ks),
            cov2=None if ks[0].cov2 is None else sum(x.cov2 for x in ks),
            is_gaussian=all(x.is_gaussian for x in ks),
            is_input=all(x.is_input for x in ks),
        )

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        self.output_shape(input_shape)
        return _SumModule()


class _ProdModule(nn.Module):
    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out


def _prod(ts: list[torch.Tensor]) -> torch.Tensor:
    out = ts[0]
    for t in ts[1:]:
        out = out * t
    return out


class FanInProd(_FanIn):
    """Elementwise product of the branches: ``Sigma = prod_b Sigma_b``,
    ``Theta = sum_b Theta_b prod_{c != b} Sigma_c`` (equal shapes; the result is not Gaussian)."""

    supports = Supports(masks=True)

    def output_shape(self, input_shape: Shapes) -> Shapes:
        return self._check_equal(self._branches(input_shape))

    def kernel_rule(self, k: Kernels) -> Kernel:
        self.output_shape(shape_of(k))
        ks = self._same_layout(k)
        ntk = None
        if all(x.ntk is not None for x in ks):
            ntk = sum(
                _prod([x.ntk if c == b else x.nngp for c, x in enumerate(ks)]) for b in range(len(ks))
            )
        return ks[0].replace(
            nngp=_prod([x.nngp for x in ks]),
            ntk=ntk,
            cov1=_prod([x.cov1 for x in ks]),
            cov2=None if ks[0].cov2 is None else _prod([x.cov2 for x in ks]),
            is_gaussian=False,
            is_input=False,
        )

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        self.output_shape(input_shape)
        return _ProdModule()


class _ConcatModule(nn.Module):
    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, dim=1)


class FanInConcat(_FanIn):
    """Concatenate the branches along the channel (feature) axis 1:
    ``Sigma = sum_b (C_b / sum_c C_c) Sigma_b`` (the other axes must agree)."""

    supports = Supports(masks=True, features="fan_in_concat")

    def __init__(self, axis: int = 1) -> None:
        if axis != 1:
            raise InvalidArgumentError(
                f"FanInConcat: only the channel/feature axis (axis=1, channels first) is supported, got axis={axis!r}"
            )
        self.axis = axis

    def __repr__(self) -> str:
        return "FanInConcat(axis=1)"

    def output_shape(self, input_shape: Shapes) -> Shapes:
        shapes = self._branches(input_shape)
        rest = {s[1:] for s in shapes}
        if len(rest) != 1:
            raise SpecError(f"{self!r}: the branches' non-channel axes differ: {shapes}")
        return (sum(s[0] for s in shapes), *shapes[0][1:])

    def kernel_rule(self, k: Kernels) -> Kernel:
        out = self.output_shape(shape_of(k))
        ks = self._same_layout(k)
        w = [x.shape[0] / out[0] for x in ks]

        def mix(ts: list[torch.Tensor]) -> torch.Tensor:
            return sum((wi * t for wi, t in zip(w[1:], ts[1:])), w[0] * ts[0])

        ntk = None if any(x.ntk is None for x in ks) else mix([x.ntk for x in ks])
        # Each channel is Gaussian with its own branch's covariance: the concatenation is one
        # Gaussian field only when the branches' kernels agree. Otherwise the branches' kernels
        # ride along (``parts``): a nonlinearity of the mixture is sum_b w_b phi(Sigma_b), not
        # phi(sum_b w_b Sigma_b).
        gaussian = all(x.is_gaussian for x in ks)
        same = gaussian and _same_kernels(ks)
        return ks[0].replace(
            nngp=mix([x.nngp for x in ks]),
            ntk=ntk,
            cov1=mix([x.cov1 for x in ks]),
            cov2=None if ks[0].cov2 is None else mix([x.cov2 for x in ks]),
            shape=out,
            is_gaussian=same,
            is_input=all(x.is_input for x in ks),
            parts=tuple(zip(w, ks)) if gaussian and not same else None,
        )

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        self.output_shape(input_shape)
        return _ConcatModule()


def _same_kernels(ks: list[Kernel]) -> bool:
    """Whether the branches' NNGP and NTK agree (to rounding): then their concatenation is Gaussian."""
    first = ks[0]

    def close(a: Any, b: Any) -> bool:
        return (a is None and b is None) or (
            a is not None and b is not None and torch.allclose(a, b, rtol=1e-12, atol=0.0))

    return all(close(k.nngp, first.nngp) and close(k.ntk, first.ntk) for k in ks[1:])


class Identity(Layer):
    """The identity: kernel and activations unchanged."""

    supports = Supports(masks=True, features="identity")

    def output_shape(self, input_shape: Shapes) -> Shapes:
        return input_shape

    def kernel_rule(self, k: Kernels) -> Kernels:
        return k

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        return nn.Identity()
