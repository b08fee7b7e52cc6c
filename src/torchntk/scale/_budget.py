"""Plan a tile size that fits a memory budget (private; units in :mod:`torchntk._memory`).

The working set of a tile of ``t x t`` entries is modelled as::

    bytes(t) = t * t * entry_bytes * (n_arrays * copies + work_arrays)

where ``entry_bytes`` is the size of one kernel entry (8 for float64, times the trailing
output block ``O*O`` of a full empirical kernel), ``n_arrays`` the number of kernel arrays a
tile produces (2 for NNGP and NTK), ``copies`` the tile copies alive at once (the tile being
computed, the one being written, its encoded buffer) and ``work_arrays`` the temporaries of
the kernel function per entry (about 8 for the arc-cosine recursion).
"""

from __future__ import annotations

import math

from .._memory import DEFAULT_MEMORY, memory_budget



def plan_tile(
    n1: int,
    n2: int,
    *,
    memory: str | int | float | None = DEFAULT_MEMORY,
    entry_bytes: int = 8,
    n_arrays: int = 1,
    copies: int = 3,
    work_arrays: int = 8,
    multiple: int = 64,
) -> int:
    """Largest square tile size ``t`` whose working set fits in ``memory`` (see module doc).

    ``t`` is rounded down to a multiple of ``multiple`` (aligned tiles keep BLAS blocking
    identical between a tile and the whole matrix) and capped at ``max(n1, n2)``.

    Example::

        >>> plan_tile(20_000, 20_000, memory="2GiB", n_arrays=2)
        4352
    """
    budget = memory_budget(memory)
    per_entry = entry_bytes * (n_arrays * copies + work_arrays)
    t = int(math.isqrt(max(budget // per_entry, 1)))
    if t >= multiple:
        t -= t % multiple
    t = max(t, 1)
    return min(t, max(n1, n2))
