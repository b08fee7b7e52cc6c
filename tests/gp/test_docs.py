"""The runnable snippets of docs/gp.md run, in order, and give what they claim."""

from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "gp.md"


def test_docs_snippets_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 3
    scope: dict = {}
    exec(compile("\n".join(blocks), str(DOC), "exec"), scope)  # noqa: S102
    assert scope["w"].grad is not None and scope["alpha"].grad is not None
    assert scope["lml"].ndim == 0 and bool(torch.isfinite(scope["lml"]))
    res = scope["res"]
    best = max(res.by_depth.values())
    assert res.depth in (2, 3, 4) and abs(res.log_marginal_likelihood - best) <= 1e-9 * abs(best)
    assert tuple(scope["post"].mean.shape) == (5, 1) and tuple(scope["post"].covariance.shape) == (5, 5)
