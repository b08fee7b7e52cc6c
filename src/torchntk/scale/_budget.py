"""Memory budgets: parse ``"2GiB"`` and plan a tile size that fits one (private).

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
import re

from ..errors import InvalidArgumentError

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
    "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_memory(memory: str | int | float) -> int:
    """Number of bytes in a budget such as ``"2GiB"``, ``"512 MB"``, ``1e9`` or ``2**30``.

    Example::

        >>> parse_memory("2GiB")
        2147483648
    """
    if isinstance(memory, bool):
        raise InvalidArgumentError(f"`memory` must be a size like '2GiB', got {memory!r}")
    if isinstance(memory, (int, float)):
        value = float(memory)
    elif isinstance(memory, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", memory)
        if match is None or match.group(2).lower() not in _UNITS:
            raise InvalidArgumentError(
                f"`memory` must be a size like '2GiB', '500MB' or a number of bytes, got {memory!r}"
            )
        value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    else:
        raise InvalidArgumentError(
            f"`memory` must be a size like '2GiB' or a number of bytes, got {type(memory).__name__}"
        )
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgumentError(f"`memory` must be a positive size, got {memory!r}")
    return int(value)


def plan_tile(
    n1: int,
    n2: int,
    *,
    memory: str | int | float = "2GiB",
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
    budget = parse_memory(memory)
    per_entry = entry_bytes * (n_arrays * copies + work_arrays)
    t = int(math.isqrt(max(budget // per_entry, 1)))
    if t >= multiple:
        t -= t % multiple
    t = max(t, 1)
    return min(t, max(n1, n2))
