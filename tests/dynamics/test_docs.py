"""The runnable snippets of docs/dynamics.md run, in order, and give the shapes they claim."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "dynamics.md"


def test_docs_snippets_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 6
    scope: dict = {}
    exec(compile("\n".join(blocks), str(DOC), "exec"), scope)  # noqa: S102
    assert tuple(scope["f_train"].shape) == (50, 20, 1)
    assert tuple(scope["g"].covariance.shape) == (3, 5, 5)
    assert tuple(scope["logits"].shape) == (3, 20, 3)
    assert float(scope["m"].cost_derivative(scope["t"]).max()) <= 0
