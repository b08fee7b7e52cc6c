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
(or ``"Gi"``) for powers of two.

Two defaults:

* ``memory=None`` (an entry point given neither ``memory`` nor ``block_size``) is
  :func:`default_memory`: a quarter of the memory available now (RAM, or the free memory of
  the GPU for CUDA inputs), rounded down to a power of two and clamped to
  [:data:`MIN_DEFAULT`, :data:`MAX_DEFAULT`] = [512 MiB, 16 GiB];
* :data:`DEFAULT_MEMORY`, 2 GiB, is the fixed default of the entry points whose blocks must not
  depend on the machine (``spec.kernel``, ``scale.tiled_kernel``, stores, the CLI): they pass it
  as their default value and document it as 2 GiB.

**Cache-sized blocks.** The analytic kernels (``spec.kernel``) cut their work into blocks of about
:func:`cache_entries` kernel entries, and the elementwise rules into row slices of that size, so
that a block's temporaries stay in a processor cache. The size is a constant,
:data:`DEFAULT_CACHE_BYTES` (256 KiB: 2^15 float64 entries), never read from the processor, so the
blocks (and so the rounding) are the same on every CPU. The environment variable
``TORCHNTK_CACHE_BYTES`` (a size in the units above, e.g. ``"16KiB"``) replaces it: smaller blocks
for tests of the blocked code paths, or a tuning for a processor with another cache. The tiles of
``empirical_ntk`` and ``scale`` are sized by the memory budget alone.
"""

from __future__ import annotations

import math
import os
import re

import torch

from .errors import InvalidArgumentError

#: The fixed budget of the entry points whose tiling must not depend on the machine: 2 GiB.
DEFAULT_MEMORY = 2 * 2**30
#: Bounds of :func:`default_memory`: 512 MiB and 16 GiB.
MIN_DEFAULT, MAX_DEFAULT = 2**29, 16 * 2**30
#: The share of the available memory that :func:`default_memory` takes.
DEFAULT_FRACTION = 0.25


def available_memory(device: torch.device | str | None = None) -> int | None:
    """Bytes of memory available now: free GPU memory for a CUDA ``device``; otherwise the
    RAM available to this process (``MemAvailable`` of ``/proc/meminfo``, lowered to the
    cgroup v2 limit left when there is one, else the free pages). ``None`` if unknown."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except (RuntimeError, AssertionError):
            return None
    found: list[int] = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            found.append(max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            return None
    return min(found)


def default_memory(device: torch.device | str | None = None) -> int:
    """The budget of ``memory=None``: :data:`DEFAULT_FRACTION` of :func:`available_memory`,
    rounded down to a power of two (so small changes of the free memory do not change the
    blocks), within [:data:`MIN_DEFAULT`, :data:`MAX_DEFAULT`]; :data:`DEFAULT_MEMORY` when
    the available memory is unknown."""
    avail = available_memory(device)
    if avail is None:
        return DEFAULT_MEMORY
    share = DEFAULT_FRACTION * avail
    rounded = 2 ** int(math.floor(math.log2(share))) if share >= 1 else 1
    return int(min(max(rounded, MIN_DEFAULT), MAX_DEFAULT))

#: Bytes a cache-sized block is planned for unless ``TORCHNTK_CACHE_BYTES`` says otherwise.
DEFAULT_CACHE_BYTES = 1 << 18
CACHE_ENV = "TORCHNTK_CACHE_BYTES"

_PREFIX = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)(i?)(b?)\s*")
_USAGE = "bytes or a size such as '2GiB', '512MB' or '1e9'"


def format_memory(n: float, round_up: bool = False) -> str:
    """``n`` bytes as a budget string of :func:`parse_memory` in binary units, 3 significant
    digits (``"1.5GiB"``); ``round_up=True`` rounds up to a whole number of the unit, so the
    string is a budget of at least ``n`` bytes."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{math.ceil(n / size)}{unit}" if round_up else f"{n / size:.3g}{unit}"
    return f"{math.ceil(n)}B"


def memory_budget(
    memory: int | float | str | None, name: str = "memory", device: torch.device | str | None = None
) -> int:
    """Bytes in the budget ``memory``, or :func:`default_memory` (of ``device``) when it is ``None``."""
    return default_memory(device) if memory is None else parse_memory(memory, name)


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


def cache_entries() -> int:
    """Entries of 8 bytes per cache-sized block: ``TORCHNTK_CACHE_BYTES / 8`` (read at each call;
    default :data:`DEFAULT_CACHE_BYTES` / 8 = 2^15), at least 16."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    size = parse_memory(raw, CACHE_ENV) if raw else DEFAULT_CACHE_BYTES
    return max(16, size // 8)

