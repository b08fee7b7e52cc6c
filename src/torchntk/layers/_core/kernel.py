"""The record carried through the infinite-width recursion: :class:`Kernel`.

Layouts of the kernel tensors (``S0, S1`` are spatial sizes, e.g. ``H, W``):

==================  ============================  ==========================  ====================
layout              ``nngp`` / ``ntk``            ``cov1`` (``cov2``: N2)      when
==================  ============================  ==========================  ====================
flat                ``(N1, N2)``                  ``(N1,)``                   after Dense/Flatten
diagonal spatial    ``(N1, N2, S0, S1)``          ``(N1, S0, S1)``            per-pixel pairs only
full spatial        ``(N1, N2, S0, S0', S1, S1')``  ``(N1, S0, S0', S1, S1')``  pooling needs them
==================  ============================  ==========================  ====================

In the full layout every spatial axis is followed by its partner (the pixel of the second input),
``nngp[i, j, h, h', w, w'] = Sigma(x1_i at (h, w), x2_j at (h', w'))``. The diagonal layout keeps
only ``h = h', w = w'``. ``cov1[i]`` is the kernel of ``x1_i`` with itself in the same layout.
"""

from __future__ import annotations

import contextvars
import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from ...errors import NonFiniteError

__all__ = ["Kernel"]


@dataclass
class Kernel:
    """Infinite-width NNGP and NTK of a pair of input batches, with what the recursion carries.

    Attributes:
        nngp: ``Sigma(x1_i, x2_j)``, shape ``(N1, N2, *pair_axes)`` (see the module docstring).
        ntk: ``Theta(x1_i, x2_j)``, same shape, or ``None`` where a layer has no NTK rule.
        cov1: ``Sigma(x1_i, x1_i)`` (the variances ``q11``), shape ``(N1, *self_axes)``.
        cov2: ``Sigma(x2_j, x2_j)`` (``q22``), shape ``(N2, *self_axes)``; ``None`` when ``x2``
            is ``x1`` (then ``cov1`` plays both roles and ``nngp`` is square and symmetric).
        shape: per-sample shape of the finite network's activations at this point,
            ``(width,)`` or ``(channels, *spatial)``: the widths are needed to build the finite
            module and for the standard-parameterization NTK (it scales with fan-in).
        diagonal_spatial: ``True`` for the per-pixel layout, ``False`` for the full one
            (meaningless for flat kernels, kept ``True``).
        is_gaussian: whether the pre-activations are Gaussian (true after Dense/Conv; an
            elementwise nonlinearity requires it).
        is_input: whether no layer has been applied yet.
        mask1, mask2: padding masks of the two batches at this point, boolean
            ``(N1, *spatial)`` / ``(N2, *spatial)``, True where a position is padding; ``None``
            for no padding (``mask2`` is also ``None`` when ``x2`` is ``x1``: ``mask1`` then
            plays both roles). Layers that change the spatial shape change them
            (:meth:`~torchntk.layers.Layer.mask_out`).
        pattern1, pattern2: graph patterns of the two batches, dense ``(N, V, V)`` floating
            weights or sparse ``(N, E, 2)`` integer edge lists (CONVENTIONS section 6); ``None``
            when not given (``pattern2`` also when ``x2`` is ``x1``). Passed unchanged through
            every layer.
        parts: after ``FanInConcat`` of branches with different Gaussian kernels, the branches'
            own kernels with their channel fractions, ``((w_b, kernel_b), ...)``: each channel is
            Gaussian with its branch's covariance, so an elementwise nonlinearity right after is
            ``sum_b w_b phi(kernel_b)``. ``None`` otherwise; :meth:`replace` drops it unless given,
            so it never outlives the layer after the concatenation.

    Example:
        >>> from torchntk import layers
        >>> k = layers.serial(layers.Dense(512), layers.Relu(), layers.Dense(1)).kernel(torch.randn(3, 4))
        >>> k.nngp.shape, k.ntk.dtype
        (torch.Size([3, 3]), torch.float64)
    """

    nngp: torch.Tensor
    ntk: torch.Tensor | None
    cov1: torch.Tensor
    cov2: torch.Tensor | None
    shape: tuple[int, ...]
    diagonal_spatial: bool = True
    is_gaussian: bool = False
    is_input: bool = False
    mask1: torch.Tensor | None = None
    mask2: torch.Tensor | None = None
    pattern1: torch.Tensor | None = None
    pattern2: torch.Tensor | None = None
    parts: tuple | None = None

    @property
    def spatial_ndim(self) -> int:
        """Number of spatial axes of the activations (0 for flat ones)."""
        return len(self.shape) - 1

    @property
    def same_inputs(self) -> bool:
        """Whether the kernel is of ``x1`` with itself (``cov2`` is then ``None``)."""
        return self.cov2 is None

    @property
    def full_spatial(self) -> bool:
        """Whether the kernel tensors hold every pair of pixels (the full spatial layout)."""
        return self.spatial_ndim > 0 and not self.diagonal_spatial

    @property
    def q22(self) -> torch.Tensor:
        """The variances of the second batch: ``cov2``, or ``cov1`` when ``x2`` is ``x1``."""
        return self.cov1 if self.cov2 is None else self.cov2

    @property
    def masks(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(mask of x1, mask of x2)``: ``mask2``, or ``mask1`` when ``x2`` is ``x1``."""
        return self.mask1, (self.mask1 if self.same_inputs else self.mask2)

    @property
    def patterns(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(pattern of x1, pattern of x2)``: ``pattern2``, or ``pattern1`` when ``x2`` is ``x1``."""
        return self.pattern1, (self.pattern1 if self.same_inputs else self.pattern2)

    def replace(self, **changes: object) -> "Kernel":
        """A copy with some fields changed (``dataclasses.replace``); ``parts`` is dropped unless
        it is among the changes (it describes this layer's output only)."""
        changes.setdefault("parts", None)
        return dataclasses.replace(self, **changes)

    def to(self, *args: object, **kwargs: object) -> "Kernel":
        """Move/cast every kernel tensor, as ``torch.Tensor.to``; masks and patterns only move
        to the new device (their dtypes are kept)."""
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(*args, **kwargs)

        nngp = mv(self.nngp)

        def dev(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(nngp.device)

        return self.replace(
            nngp=nngp, ntk=mv(self.ntk), cov1=mv(self.cov1), cov2=mv(self.cov2),
            mask1=dev(self.mask1), mask2=dev(self.mask2), pattern1=dev(self.pattern1), pattern2=dev(self.pattern2),
        )

    def __repr__(self) -> str:
        layout = "flat" if self.spatial_ndim == 0 else ("diagonal" if self.diagonal_spatial else "full")
        return (
            f"Kernel(nngp={tuple(self.nngp.shape)}, ntk={None if self.ntk is None else tuple(self.ntk.shape)}, "
            f"shape={self.shape}, layout={layout!r}, is_gaussian={self.is_gaussian}, "
            f"dtype={self.nngp.dtype}, device={self.nngp.device})"
        )


#: Set while the driver recomputes one pair of inputs to find the layer that made a kernel
#: non-finite (:func:`finite_kernel`); ``serial`` then checks every layer's output.
LOCATING: contextvars.ContextVar[bool] = contextvars.ContextVar("torchntk_locating", default=False)


def _first_bad(k: Kernel) -> tuple[str, torch.Tensor] | None:
    for name in ("nngp", "ntk"):
        t = getattr(k, name)
        if t is not None:
            bad = ~torch.isfinite(t.detach())
            if bool(bad.any()):
                return name, bad
    return None


def check_layer_output(k: object, index: int, layer: object) -> None:
    """While :data:`LOCATING`: ``NonFiniteError`` naming layer ``index`` of a serial if its output
    kernel ``k`` (a Kernel or a list of branch Kernels) is not finite."""
    for part in k if isinstance(k, list) else [k]:
        found = _first_bad(part)
        if found is not None:
            raise NonFiniteError(
                f"spec.kernel: layer {index} of the serial spec, {layer!r}, gave non-finite (NaN or "
                f"Inf) values in `{found[0]}` for finite inputs: its rule overflowed or left its domain "
                "(the inputs' scale or a hyperparameter at an edge)"
            )


def finite_kernel(k: Kernel, spec: object, locate: Callable[[int, int], object] | None = None) -> Kernel:
    """``k`` if its ``nngp`` and ``ntk`` are finite; else ``NonFiniteError``. One pass over each
    tensor. On failure ``locate(i, j)`` recomputes the first non-finite pair of inputs with
    :data:`LOCATING` set, so that the layer that made it is named; otherwise the error names the
    entry and the spec."""
    found = _first_bad(k)
    if found is None:
        return k
    name, bad = found
    first = tuple(int(i) for i in bad.nonzero()[0][:2])
    if locate is not None:
        token = LOCATING.set(True)
        try:
            locate(*first)
        finally:
            LOCATING.reset(token)
    text = repr(spec)
    raise NonFiniteError(
        f"spec.kernel gave {int(bad.sum())} non-finite (NaN or Inf) value(s) in `{name}` for "
        f"finite inputs (first at the pair of inputs {first}): a layer's rule overflowed or "
        f"left its domain (inputs' scale or a hyperparameter at an edge) in "
        f"{text if len(text) <= 300 else text[:297] + '...'}"
    )
