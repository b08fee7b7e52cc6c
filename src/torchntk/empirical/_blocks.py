"""Tiling the kernel over blocks of examples under a block size or memory budget (private).

The kernel ``Theta(x1, x2)`` is computed tile by tile: rows ``x1[I]`` against columns
``x2[J]``. Each tile needs the features of its row block and of its column block (per-example
Jacobians, or activations and cotangents), so the peak memory is about

    output + 2 * b * (feature bytes per example) + b^2 * (temporary bytes per example pair)

for blocks of ``b`` examples. Given a ``memory`` budget the planner takes the largest ``b`` that
fits; given ``block_size`` it uses that. For a symmetric kernel (``x2=None``) only the tiles with
``J >= I`` are computed; the others are their mirror images, and the diagonal tiles are
symmetrized, so the result is exactly symmetric.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from .._progress import progress_bar
from .._tiles import TilePlan
from ..errors import InvalidArgumentError
from ._modes import Accumulator, finalize, mirror, out_shape, transpose

class Backend(Protocol):
    """What the tiling needs from an implementation."""

    out_dim: int

    def features(self, x: torch.Tensor) -> object: ...

    def contract(self, f1: object, f2: object, mode: str, acc: Accumulator) -> None: ...

    def take(self, f: object, rows: slice) -> object: ...


#: Blocks of fewer examples than this (when there are more) recompute the features of the
#: column blocks so often that the call slows by a large factor: the planner warns.
EFFICIENT_BLOCK = 64


def block_bytes(b: int, fixed_bytes: float, per_example: float, per_pair: float) -> float:
    """The planner's peak-memory estimate for blocks of ``b`` examples (see the module doc)."""
    return fixed_bytes + 2 * b * per_example + b * b * per_pair


def plan_block(
    n: int,
    block_size: int | None,
    budget: int,
    fixed_bytes: float,
    per_example: float,
    per_pair: float,
) -> int:
    """Block size ``b <= n`` with ``fixed + 2 b per_example + b^2 per_pair <= budget``."""
    if block_size is not None:
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise InvalidArgumentError(f"`block_size` must be a positive int, got {block_size!r}")
        return min(block_size, n)
    free = max(budget - fixed_bytes, 0.0)
    # largest b with block_bytes(b) <= budget: per_pair b^2 + 2 per_example b <= free
    if per_pair > 0:
        b = (-per_example + math.sqrt(per_example**2 + per_pair * free)) / per_pair
    else:
        b = free / max(2 * per_example, 1.0)
    return int(max(1, min(n, math.floor(b))))


def compute_tiled(
    backend: Backend,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    mode: str,
    per_layer: bool,
    block: int,
    dtype: torch.dtype | None,
    progress: bool | None = False,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Assemble ``Theta(x1, x2)`` (``x2=None``: symmetric ``Theta(x1, x1)``) from tiles.

    When one block holds all examples the features are computed once and sliced per tile;
    otherwise the features of each column block are recomputed for every row block (the memory
    bound wins over the time).
    """
    symmetric = x2 is None
    xs = x1 if symmetric else x2
    n1, n2, o = x1.shape[0], xs.shape[0], backend.out_dim
    bar = progress_bar(count_tiles(n1, n2, block, symmetric), "empirical_ntk", progress, unit="tile")
    out: dict[str, torch.Tensor] = {}
    cached = block >= max(n1, n2)
    plan = TilePlan(n1, n2, block, symmetric)
    f_all1 = backend.features(x1) if cached else None
    f_all2 = f_all1 if (symmetric or not cached) else backend.features(xs)

    def put(name: str, part: torch.Tensor, r: slice, c: slice, mirror: bool) -> None:
        if name not in out:
            out[name] = torch.empty(out_shape(n1, n2, o, mode), dtype=part.dtype, device=part.device)
        out[name][r, c] = part
        if mirror:
            out[name][c, r] = transpose(part, mode)

    row, f1 = None, None
    for bi, bj in plan.tiles():  # row-major: the features of a row block are computed once
        r, c = plan.rows(bi), plan.cols(bj)
        if bi != row:
            f1 = None  # free the previous row block first
            f1, row = (backend.take(f_all1, r) if cached else backend.features(x1[r])), bi
        on_diagonal = symmetric and bj == bi
        if on_diagonal:
            f2 = f1
        else:
            f2 = backend.take(f_all2, c) if cached else backend.features(xs[c])
        acc = Accumulator(per_layer, dtype, symmetric=on_diagonal)
        backend.contract(f1, f2, mode, acc)
        for name, t in acc.parts.items():
            t = finalize(mirror(t, mode) if on_diagonal else t, mode, o)
            put(name, t, r, c, symmetric and bj != bi)
        del f2, acc
        bar.update()
    bar.close()
    return out if per_layer else out[""]


def count_tiles(n1: int, n2: int, block: int, symmetric: bool) -> int:
    """Tiles computed for an ``n1 x n2`` kernel in blocks of ``block`` (upper ones if symmetric)."""
    return TilePlan(n1, n2, block, symmetric).n_tiles
