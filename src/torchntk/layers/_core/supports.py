"""What each layer type declares it supports, as data (private).

Every public layer class states, in its own class body, ``supports = Supports(...)``: whether it
honours padding masks and graph patterns, whether its kernel rule needs the full spatial
layout (every pixel pair) of its input, and the name of its random-feature rule in
:mod:`torchntk.features` (None: it has none, and ``FeatureMap`` refuses it).

:func:`supports_of` reads the declaration of the layer's **exact** class, never a parent's:
a subclass whose kernel differs from its parent's (a new rule, a new geometry) must declare
for itself, and until it does it has no feature rule and refuses masks in the property suite.
The one deliberate exception is the elementwise family: a subclass of
:class:`~torchntk.layers.ElementwiseLayer` that declares nothing gets the family's generic
declaration, whose feature rule draws on the layer's own ``fn`` (the feature compiler also
checks that ``fn`` is defined by the class that defines the kernel ``rule``, or below it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Supports", "NOTHING", "supports_of"]


@dataclass(frozen=True)
class Supports:
    """A layer type's declaration.

    Attributes:
        masks: padding masks ``(N, *spatial)`` are honoured (False: a mask reaching the layer
            is refused with a ``SpecError``, except where the instance acts per position,
            such as a 1x1 convolution with stride 1).
        patterns: graph patterns are read by the layer (False: the layer's kernel does not
            depend on them; they pass through it to the layers that read them).
        full_layout: the kernel rule may need every pixel pair of its input (pooling,
            attention, graph aggregation...; some instances only, e.g. a ``DotGeneral`` that
            contracts spatial axes), rather than only the per-pixel diagonal.
        features: the name of the random-feature rule in ``torchntk.features`` (None: none).
    """

    masks: bool = False
    patterns: bool = False
    full_layout: bool = False
    features: str | None = None


#: The declaration of a class that declares nothing: no masks, no feature rule.
NOTHING = Supports()


def supports_of(layer: Any) -> Supports:
    """The declaration of ``layer``'s exact class (or of a layer class itself)."""
    cls = layer if isinstance(layer, type) else type(layer)
    own = cls.__dict__.get("supports")
    if isinstance(own, Supports):
        return own
    from ..activations._elementwise import ElementwiseLayer  # the family's generic declaration

    if issubclass(cls, ElementwiseLayer):
        return ElementwiseLayer.__dict__["supports"]
    return NOTHING
