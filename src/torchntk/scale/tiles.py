"""Tile planning: which blocks of a kernel matrix are computed, and how they map back.

A kernel ``K`` of shape ``(N1, N2, *trailing)`` is cut into square tiles of ``tile`` rows and
columns: tile ``(bi, bj)`` holds ``K[bi*t:(bi+1)*t, bj*t:(bj+1)*t]`` (the last row/column of
tiles may be smaller). In the **symmetric** case (``x2`` is ``x1``) only the tiles with
``bi <= bj`` are computed; a lower tile is the mirror of an upper one::

    K[J, I] = mirror(K[I, J]),   mirror(T) = T.transpose(0, 1)            (N, N) or (N, N, O)
                                 mirror(T) = T.transpose(0, 1).transpose(2, 3)   (N, N, O, O)

Example::

    >>> plan = TilePlan(n1=10, n2=10, tile=4, symmetric=True)
    >>> plan.grid, len(plan.tiles())
    ((3, 3), 6)
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from .._tiles import TilePlan

__all__ = ["TilePlan", "mirror"]


T = TypeVar("T", torch.Tensor, np.ndarray)


def mirror(block: T) -> T:
    """The tile ``K[J, I]`` from ``K[I, J]`` of a symmetric kernel (tensor or ndarray; a view)."""
    out = block.swapaxes(0, 1)
    if out.ndim == 4:
        out = out.swapaxes(2, 3)
    return out
