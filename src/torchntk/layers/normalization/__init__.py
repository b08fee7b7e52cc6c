"""Normalization and noise: :class:`LayerNorm` and :class:`Dropout`."""

from .normalizers import Dropout, LayerNorm

__all__ = ["LayerNorm", "Dropout"]
