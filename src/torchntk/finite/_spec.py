"""Reading an MLP spec for the finite-width recursions (private).

An MLP spec is ``serial(Dense, phi, Dense, phi, ..., Dense)``: Dense layers in NTK
parameterization alternating with elementwise activations of :mod:`torchntk.layers`. The
hidden widths ``n_1 .. n_{L-1}`` are the ``out_dim`` of the hidden Dense layers, or the
``width`` the caller gives (one int for all, or one per hidden layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .. import layers
from .._checks import value_of
from ..errors import InvalidArgumentError, SpecError


@dataclass(frozen=True)
class MLPLayout:
    """The network the recursions see.

    Attributes:
        cw, cb: per Dense layer (``L`` of them), ``W_std^2`` and ``b_std^2`` (0 without bias);
            in the notation of Roberts, Yaida & Hanin these are ``C_W`` and ``C_b`` (and, for the
            NTK of the NTK parameterization, the learning-rate factors ``lambda_W = C_W``,
            ``lambda_b = C_b``).
        activations: the ``L - 1`` elementwise layers between them.
        widths: the ``L - 1`` hidden widths.
        outputs: width of the readout.
    """

    cw: tuple[float, ...]
    cb: tuple[float, ...]
    activations: tuple[layers.ElementwiseLayer, ...]
    widths: tuple[int, ...]
    outputs: int

    @property
    def depth(self) -> int:
        return len(self.cw)


def _flatten(spec: layers.Layer) -> list[layers.Layer]:
    if isinstance(spec, (layers.Dense, layers.ElementwiseLayer)):
        return [spec]
    parts = getattr(spec, "layers", None)
    if type(spec).__name__ != "Serial" or parts is None:
        raise SpecError(
            f"finite-width corrections need an MLP spec: serial(Dense, activation, ..., Dense); got {spec!r}"
        )
    out: list[layers.Layer] = []
    for part in parts:
        out += _flatten(part)
    return out


def read_mlp(spec: layers.Layer, width: int | Sequence[int] | None = None) -> MLPLayout:
    """The :class:`MLPLayout` of ``spec`` (hidden widths from ``width`` when given).

    Raises:
        SpecError: ``spec`` is not Dense layers (NTK parameterization) alternating with
            elementwise activations, starting and ending with a Dense layer.
        InvalidArgumentError: ``width`` is not a positive int or a sequence of ``L - 1`` of them.
    """
    if not isinstance(spec, layers.Layer):
        raise InvalidArgumentError(f"`spec` must be a torchntk.layers spec, got {type(spec).__name__}")
    parts = _flatten(spec)
    dense = parts[0::2]
    acts = parts[1::2]
    if len(parts) % 2 == 0 or not all(isinstance(d, layers.Dense) for d in dense) or not all(
        isinstance(a, layers.ElementwiseLayer) for a in acts
    ):
        raise SpecError(
            "finite-width corrections need Dense layers alternating with elementwise activations, "
            f"first and last a Dense layer; got {spec!r}"
        )
    for d in dense:
        if d.parameterization != "ntk":
            raise SpecError(f"finite-width corrections are for the NTK parameterization; got {d!r}")
    for a in acts:
        if not a.has_ntk:
            raise SpecError(f"{a!r} has no derivative for the NTK; finite-width corrections need one")
    hidden = len(dense) - 1
    if width is None:
        widths = tuple(d.out_dim for d in dense[:-1])
    elif isinstance(width, int) and not isinstance(width, bool):
        widths = (width,) * hidden
    elif isinstance(width, Sequence) and all(isinstance(w, int) and not isinstance(w, bool) for w in width):
        widths = tuple(width)
        if len(widths) != hidden:
            raise InvalidArgumentError(f"`width` must give {hidden} hidden widths, got {len(widths)}")
    else:
        raise InvalidArgumentError(f"`width` must be an int, a sequence of ints or None, got {width!r}")
    if any(w < 1 for w in widths):
        raise InvalidArgumentError(f"`width` must be positive, got {width!r}")
    cw = tuple(float(value_of(d.W_std)) ** 2 for d in dense)
    cb = tuple(0.0 if value_of(d.b_std) is None else float(value_of(d.b_std)) ** 2 for d in dense)
    return MLPLayout(cw, cb, tuple(acts), widths, dense[-1].out_dim)
