"""Pooling: windowed (:class:`AvgPool`, :class:`SumPool`), global (:class:`GlobalAvgPool`,
:class:`GlobalSumPool`) and :class:`Flatten`."""

from .pools import AvgPool, Flatten, GlobalAvgPool, GlobalSumPool, SumPool

__all__ = ["AvgPool", "SumPool", "GlobalAvgPool", "GlobalSumPool", "Flatten"]
