"""Memory budgets: one unit table and one default for every entry point (private).

A budget is a number of bytes (``int`` or ``float``) or a string ``"<number><unit>"`` such as
``"2GiB"``, ``"512 MB"``, ``"1e9"`` or ``"1.5Gi"``. Units, in any case:

============================  ==========================  =========================
unit                          meaning                     example
============================  ==========================  =========================
(none), ``B``                 bytes                       ``"1e9"`` = 10^9 bytes
``K M G T`` and ``KB MB GB TB``  SI, powers of 1000      ``"2G"`` = ``"2GB"`` = 2 * 10^9
``Ki Mi Gi Ti`` and ``KiB MiB GiB TiB``  IEC, powers of 1024  ``"2GiB"`` = 2 * 2^30
============================  ==========================  =========================

A bare letter is SI, as in Dask's ``parse_bytes`` and Kubernetes quantities; write ``"GiB"``
(or ``"Gi"``) for powers of two. The default budget, :data:`DEFAULT_MEMORY`, is 2 GiB.
"""

from __future__ import annotations

import math
import re

from .errors import InvalidArgumentError

#: Budget used when an entry point is given neither ``memory`` nor ``block_size``: 2 GiB.
DEFAULT_MEMORY = 2 * 2**30

_PREFIX = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)(i?)(b?)\s*")
_USAGE = "bytes or a size such as '2GiB', '512MB' or '1e9'"


def memory_budget(memory: int | float | str | None, name: str = "memory") -> int:
    """Bytes in the budget ``memory``, or :data:`DEFAULT_MEMORY` when it is ``None``."""
    return DEFAULT_MEMORY if memory is None else parse_memory(memory, name)


def parse_memory(memory: int | float | str, name: str = "memory") -> int:
    """Bytes in the budget ``memory`` (see the module doc for the units).

    Example::

        >>> parse_memory("2GiB"), parse_memory("2GB"), parse_memory("2G"), parse_memory(1e9)
        (2147483648, 2000000000, 2000000000, 1000000000)
    """
    if isinstance(memory, bool) or memory is None:
        raise InvalidArgumentError(f"`{name}` must be {_USAGE}, got {memory!r}")
    if isinstance(memory, (int, float)):
        value = float(memory)
    elif isinstance(memory, str):
        match = _SIZE.fullmatch(memory.lower())
        if match is None or (match.group(3) and not match.group(2)):
            raise InvalidArgumentError(f"`{name}` must be {_USAGE}, got {memory!r}")
        number, prefix, binary, _ = match.groups()
        value = float(number) * (1024 if binary else 1000) ** _PREFIX[prefix]
    else:
        raise InvalidArgumentError(f"`{name}` must be {_USAGE}, got {type(memory).__name__}")
    if not math.isfinite(value) or value < 1:
        raise InvalidArgumentError(f"`{name}` must be a positive size of at least one byte, got {memory!r}")
    return int(value)


def format_memory(nbytes: int | float) -> str:
    """A byte count in the largest IEC unit below it, rounded up to two decimals, e.g.
    ``"1.5GiB"`` (:func:`parse_memory` reads it back as at least ``nbytes``)."""
    value, unit = float(nbytes), "B"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{math.ceil(value * 100) / 100:g}{unit}" if unit != "B" else f"{math.ceil(value)}B"
