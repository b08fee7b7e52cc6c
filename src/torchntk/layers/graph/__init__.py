"""Graph layers: :class:`Aggregate`, message passing over graph patterns."""

from .aggregate import Aggregate

__all__ = ["Aggregate"]
