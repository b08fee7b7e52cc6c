"""Convolutions: :class:`Conv` (with the window geometry shared by pooling),
:class:`ConvTranspose` and :class:`ConvLocal` (unshared weights)."""

from .convolution import Conv
from .local import ConvLocal
from .transpose import ConvTranspose

__all__ = ["Conv", "ConvTranspose", "ConvLocal"]
