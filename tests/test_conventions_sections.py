"""Every "CONVENTIONS section N" cited in the code and the docs is a section of docs/conventions.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_cited_conventions_sections_exist():
    text = (ROOT / "docs" / "conventions.md").read_text()
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", text, flags=re.M)}
    cited: dict[int, list[str]] = {}
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "docs").glob("*.md")]:
        for n in re.findall(r"CONVENTIONS\s+section\s+(\d+)", path.read_text()):
            cited.setdefault(int(n), []).append(str(path.relative_to(ROOT)))
    assert 6 in cited  # masks and graph patterns are cited from the layers
    missing = {n: where for n, where in cited.items() if n not in sections}
    assert not missing, f"sections cited but absent from docs/conventions.md: {missing}"
