"""The code blocks of docs/finite.md run, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_finite_docs_code_runs(capsys):
    text = (DOCS / "finite.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "finite.md", "exec"), namespace)  # noqa: S102
    assert namespace["dtheta"].shape == (2, 4, 4)
    assert namespace["c"].ntk_variance.shape == (4,)
