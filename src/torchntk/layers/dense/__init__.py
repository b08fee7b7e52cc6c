"""Fully connected layers: :class:`Dense` (with the affine rule shared by the convolutions) and
:func:`mlp`, the fully connected ReLU spec."""

from .fully_connected import Dense
from .networks import mlp

__all__ = ["Dense", "mlp"]
