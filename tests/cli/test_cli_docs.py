"""docs/cli.md runs as written: its commands, in order, in one empty folder.

``python title="FILE"`` blocks are written to FILE, other ``python`` blocks are executed, and in
``console`` blocks each ``$ torchntk ...`` line is run through ``torchntk.cli.main``. A command
whose shown output has a ``torchntk: error:`` line must exit 2, any other 0; the ``wrote ...``
and ``torchntk: error: ...`` lines shown must be printed as shown. Tables of numbers are not
compared (their last digits depend on the CPU's rounding), nor the text of the converted spec
after ``infinite-width limit of the model (...):``, which is ``from_module``'s own ``repr``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from torchntk.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
_CHECKED = ("wrote ", "torchntk: error: ")
_SPEC_LINE = "infinite-width limit of the model (torchntk.layers.from_module): "


def _blocks(text: str):
    return re.findall(r"```(console|python)([^\n]*)\n(.*?)```", text, flags=re.S)


def _commands(body: str):
    """``(argv, shown output lines)`` of each ``$ torchntk ...`` line of a console block."""
    out: list = []
    for line in body.splitlines():
        if line.startswith("$ "):
            words = shlex.split(line[2:])
            assert words[0] == "torchntk", line
            out.append((words[1:], []))
        else:
            out[-1][1].append(line)
    return out


def test_the_cli_page_runs_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn")      # digits
    pytest.importorskip("zarr")         # the tiled store section
    monkeypatch.chdir(tmp_path)
    blocks = _blocks(DOC.read_text())
    assert sum(kind == "console" for kind, _, _ in blocks) >= 8
    for kind, attrs, body in blocks:
        title = re.search(r'title="([^"]+)"', attrs)
        if kind == "python" and title:
            (tmp_path / title.group(1)).write_text(body)
        elif kind == "python":
            exec(compile(body, str(DOC), "exec"), {"__name__": "__cli_doc__"})
        else:
            for argv, shown in _commands(body):
                code = main(argv)
                cap = capsys.readouterr()
                printed = (cap.out + cap.err).splitlines()
                want = 2 if any(s.startswith("torchntk: error: ") for s in shown) else 0
                assert code == want, (argv, cap.out, cap.err)
                for line in shown:
                    if line.startswith(_CHECKED):
                        assert line in printed, (argv, line, printed)
                    elif line.startswith(_SPEC_LINE):
                        assert any(p.startswith(_SPEC_LINE) for p in printed), (argv, printed)
