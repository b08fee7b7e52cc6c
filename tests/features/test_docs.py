"""The snippet of docs/features.md runs and gives the shapes it claims."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "features.md"


def test_docs_snippet_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    scope: dict = {}
    exec(compile("\n".join(blocks), str(DOC), "exec"), scope)  # noqa: S102
    assert tuple(scope["f"].nngp.shape) == (300, 513) and tuple(scope["f"].ntk.shape) == (300, 1025)
    assert tuple(scope["cross"].shape) == (50, 300)
    assert tuple(scope["y_hat"].shape) == (3, 50, 2)
    assert tuple(scope["f_test"].shape) == (3, 50, 2)
    assert 0 < scope["error"].ntk < 0.5 and scope["m_for_2_percent"] >= 2
