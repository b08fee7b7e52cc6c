"""The README's quick start runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start_code() -> str:
    text = README.read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's Quick start has no ```python block"
    return "\n".join(blocks)


def test_quick_start_runs(capsys):
    exec(compile(quick_start_code(), str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "True" in out  # the quick start prints that its kernel is PSD
