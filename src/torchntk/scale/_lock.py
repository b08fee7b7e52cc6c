"""The writer lock of a kernel store (private).

Creating or resuming a store at ``path`` takes an exclusive lock on the file ``<path>.lock``
beside it, which holds the owner's ``pid``, ``host`` and start time (JSON). A second writer gets
a :class:`~torchntk.errors.StoreError` naming the owner instead of racing the first one.

Mutual exclusion is an advisory ``flock`` on that file (POSIX): the kernel drops it when its
process dies, however it dies, so a lock file left behind by a killed writer is *stale* and the
next writer simply takes it over. The holder deletes the file when it releases the lock; a writer
that locked a file which was deleted or replaced meanwhile retries on the current one.

Where ``fcntl`` does not exist (Windows) the file is created exclusively instead, and a lock whose
owner was on this host and is no longer alive is treated as stale and removed.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..errors import StoreError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of the store at ``path``: ``<path>.lock``."""
    p = Path(path)
    return p.with_name(p.name + ".lock")


class StoreLock:
    """Exclusive writer lock of the store at ``path`` (a context manager).

    Example::

        >>> with StoreLock("k.zarr"):          # doctest: +SKIP
        ...     ...                              # create or resume the store
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.store_path = str(path)
        self.path = lock_path(path)
        self._fd: int | None = None

    def __enter__(self) -> "StoreLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or raise StoreError naming its live owner."""
        if fcntl is None:  # pragma: no cover - Windows
            self._acquire_exclusive_create()
            return
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise StoreError(
                    f"cannot lock the kernel store {self.store_path!r}: cannot open {str(self.path)!r} "
                    f"({err.strerror or err})"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                owner = _read_owner(fd)
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._busy(owner) from None
                raise StoreError(
                    f"cannot lock the kernel store {self.store_path!r}: the filesystem of "
                    f"{str(self.path)!r} refuses file locks ({err.strerror or err})"
                ) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder deleted this file after we opened it: retry
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, _owner_record())
            self._fd = fd
            return
        raise StoreError(f"cannot lock the kernel store {self.store_path!r}: its lock file keeps changing")

    def release(self) -> None:
        """Delete the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:  # pragma: no cover - removed by hand
            pass
        os.close(self._fd)
        self._fd = None

    def _busy(self, owner: dict[str, Any]) -> StoreError:
        who = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}" if owner else "another process"
        return StoreError(
            f"the kernel store {self.store_path!r} is being written by {who} (lock file "
            f"{str(self.path)!r}); wait for that run to finish, then resume or read the store"
        )

    def _acquire_exclusive_create(self) -> None:  # pragma: no cover - Windows
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = _read_file_owner(self.path)
                if owner.get("host") == socket.gethostname() and not _alive(owner.get("pid")):
                    self.path.unlink(missing_ok=True)  # stale: its owner died on this host
                    continue
                raise self._busy(owner) from None
            os.write(fd, _owner_record())
            self._fd = fd
            return
        raise StoreError(f"cannot lock the kernel store {self.store_path!r}: its lock file keeps changing")


def _owner_record() -> bytes:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return _parse(os.read(fd, 4096))
    except OSError:
        return {}


def _read_file_owner(path: Path) -> dict[str, Any]:
    try:
        return _parse(path.read_bytes())
    except OSError:
        return {}


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        owner = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _alive(pid: Any) -> bool:
    """Whether process ``pid`` exists on this host."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # pragma: no cover
        return False
    return True
