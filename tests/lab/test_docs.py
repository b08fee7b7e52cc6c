"""The tutorial's code blocks run, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_tutorial_code_runs(capsys):
    text = (DOCS / "tutorial.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 7
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "tutorial.md", "exec"), namespace)  # noqa: S102
    assert namespace["tracker"].history["drift"][-1] < 0.2
    assert float(namespace["comp"][-1, 0]) < float(namespace["comp"][0, 0])
