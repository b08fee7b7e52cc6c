"""Tile plans: which blocks of a kernel matrix are computed (private floor).

A kernel ``K`` of shape ``(N1, N2, *trailing)`` is cut into square tiles of ``tile`` rows and
columns: tile ``(bi, bj)`` holds ``K[bi*t:(bi+1)*t, bj*t:(bj+1)*t]`` (the last row/column of
tiles may be smaller). In the **symmetric** case (``x2`` is ``x1``) only the tiles with
``bi <= bj`` are computed; each lower tile is the mirror of an upper one, in the layout of
the caller (``scale.tiles.mirror`` for stored tiles, ``empirical._modes.transpose`` for the
empirical modes, ``layers._spatial.transpose_pairs`` for the spatial layouts).

The one enumeration of tiles, shared by ``empirical_ntk``'s blocks, ``spec.kernel``'s blocks and
``scale.tiled_kernel``'s tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidArgumentError

__all__ = ["TilePlan"]


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
