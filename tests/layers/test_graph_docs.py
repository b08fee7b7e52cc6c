"""The code blocks of docs/graphs.md run and give the shapes they claim."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "graphs.md"


def test_code_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 2
    scope: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), scope)  # noqa: S102 - the project's own docs
    assert tuple(scope["theta"].shape) == (6, 6)
    assert tuple(scope["out"].shape) == (8, 1)
