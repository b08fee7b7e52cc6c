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

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from ..errors import InvalidArgumentError


T = TypeVar("T", torch.Tensor, np.ndarray)


@dataclass(frozen=True)
class TilePlan:
    """The tiling of an ``(n1, n2)`` kernel into ``tile x tile`` blocks.

    Attributes:
        n1, n2: number of rows (inputs x1) and columns (inputs x2).
        tile: tile edge in entries (rows and columns).
        symmetric: only upper-triangle tiles (``bi <= bj``) are computed.
    """

    n1: int
    n2: int
    tile: int
    symmetric: bool = False

    def __post_init__(self) -> None:
        if self.tile < 1:
            raise InvalidArgumentError(f"`tile` must be a positive integer, got {self.tile}")
        if self.symmetric and self.n1 != self.n2:
            raise InvalidArgumentError("a symmetric tile plan needs n1 == n2")

    @property
    def grid(self) -> tuple[int, int]:
        """Number of tile rows and tile columns."""
        return (-(-self.n1 // self.tile), -(-self.n2 // self.tile))

    def rows(self, bi: int) -> slice:
        """Row slice of tile row ``bi``."""
        return slice(bi * self.tile, min((bi + 1) * self.tile, self.n1))

    def cols(self, bj: int) -> slice:
        """Column slice of tile column ``bj``."""
        return slice(bj * self.tile, min((bj + 1) * self.tile, self.n2))

    def tiles(self) -> list[tuple[int, int]]:
        """The tiles to compute, row-major; upper triangle only when symmetric."""
        gi, gj = self.grid
        return [(bi, bj) for bi in range(gi) for bj in range(gj) if not self.symmetric or bi <= bj]

    @property
    def n_tiles(self) -> int:
        """Number of tiles to compute."""
        gi, gj = self.grid
        return gi * (gi + 1) // 2 if self.symmetric else gi * gj

    def stored_tile(self, bi: int, bj: int) -> tuple[int, int, bool]:
        """``(si, sj, mirrored)``: the computed tile that holds tile ``(bi, bj)``."""
        if self.symmetric and bi > bj:
            return bj, bi, True
        return bi, bj, False


def mirror(block: T) -> T:
    """The tile ``K[J, I]`` from ``K[I, J]`` of a symmetric kernel (tensor or ndarray; a view)."""
    out = block.swapaxes(0, 1)
    if out.ndim == 4:
        out = out.swapaxes(2, 3)
    return out
