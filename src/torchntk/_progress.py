"""Progress bars for long calls (private): one rule for every floor.

``progress=None`` (the default of the calls that take it) shows a tqdm bar on stderr only when
the call runs longer than :data:`DELAY` seconds and stderr is a terminal; ``True`` shows it
always, ``False`` never.
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidArgumentError

#: Seconds a call runs before its bar appears (``progress=None``).
DELAY = 2.0


def check_progress(progress: object) -> bool | None:
    """``progress`` if it is True, False or None; InvalidArgumentError otherwise."""
    if progress is not None and not isinstance(progress, bool):
        raise InvalidArgumentError(f"`progress` must be True, False or None (automatic), got {progress!r}")
    return progress


def progress_bar(total: int, desc: str, progress: bool | None = None, unit: str = "block") -> Any:
    """A tqdm bar over ``total`` steps (call ``.update()`` per step and ``.close()`` at the end)."""
    from tqdm.auto import tqdm

    if check_progress(progress) is None:
        return tqdm(total=total, desc=desc, unit=unit, disable=None, delay=DELAY, leave=False, dynamic_ncols=True)
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, leave=False, dynamic_ncols=True)
