"""The results folder: JSON metrics, arrays and figures, written atomically so runs resume.

Layout of ``out/``::

    metrics.json                 every study's metrics and the physics checks (rewritten at the end)
    studies/<name>.json          one finished study: fingerprint, metrics, figure names, seconds
    data/<name>.npz              its arrays (to redraw figures without recomputing)
    figures/<name>-*.png         its figures
    report.html                  the self-contained report

A study counts as finished when ``studies/<name>.json`` exists with the current fingerprint: that
file is written last, by an atomic rename, so an interrupted run leaves no half-finished study.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if np.isfinite(v) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON at ``path`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(_jsonable(data), fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)


class ResultsDir:
    """The demo's output folder (created if missing; must be writable)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            for sub in ("studies", "data", "figures"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise InvalidArgumentError(
                f"output folder {str(self.root)!r} is not writable ({err.strerror or err})"
            ) from None

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    def finished(self, name: str, fingerprint: dict) -> dict | None:
        """The stored record of study ``name`` if it finished with this ``fingerprint``, else None."""
        path = self.root / "studies" / f"{name}.json"
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if record.get("fingerprint") != json.loads(json.dumps(_jsonable(fingerprint))):
            return None
        if not (self.root / "data" / f"{name}.npz").exists():
            return None
        return record

    def save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Store ``arrays`` in ``data/<name>.npz`` (atomically)."""
        path = self.root / "data" / f"{name}.npz"
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        os.close(fd)
        np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)

    def load_arrays(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.root / "data" / f"{name}.npz") as data:
            return {k: data[k] for k in data.files}

    def save_record(self, name: str, record: dict) -> None:
        """Mark study ``name`` finished: ``studies/<name>.json`` (written last)."""
        write_json(self.root / "studies" / f"{name}.json", record)
