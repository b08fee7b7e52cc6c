"""The dependency floors in pyproject.toml cover the APIs the code uses.

Each entry names an API torchntk calls and the first release that has it; the declared floor
must not be older (a floor below it lets pip install a version on which torchntk breaks). The
suite itself was run once with these floors installed (see CHANGELOG).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

#: package -> (first version with what torchntk uses, what that is)
NEEDED = {
    "scikit-learn": ((1, 6), "sklearn.utils.validation.validate_data, __sklearn_tags__"),
    "scipy": ((1, 12), "scipy.sparse.linalg.cg(rtol=...)"),
    "zarr": ((3, 0), "Group.create_array(compressors=...), zarr.codecs"),
}


def _floors() -> dict[str, tuple[int, ...]]:
    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra, items in meta["optional-dependencies"].items():
        if extra != "bench":  # the peer's pins live in their own environment
            reqs += items
    floors: dict[str, tuple[int, ...]] = {}
    for req in reqs:
        m = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9.]+)", req)
        if m:
            version = tuple(int(p) for p in m.group(2).split(".") if p.isdigit())
            floors[m.group(1).lower()] = min(version, floors.get(m.group(1).lower(), version))
    return floors


@pytest.mark.parametrize("package", sorted(NEEDED))
def test_declared_floor_has_what_the_code_uses(package):
    floors = _floors()
    needed, what = NEEDED[package]
    assert package in floors, f"{package} has no floor in pyproject.toml"
    assert floors[package] >= needed, f"{package}>={floors[package]} but torchntk uses {what} ({needed})"
