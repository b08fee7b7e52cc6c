"""Fixed linear maps of positions and channels: :class:`Index`, :class:`Slice`,
:class:`ImageResize`, :class:`DotGeneral` (over the position maps of ``_spatial_map``)."""

from .maps import DotGeneral, ImageResize, Index, Slice

__all__ = ["Index", "Slice", "ImageResize", "DotGeneral"]
