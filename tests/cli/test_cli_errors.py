"""Every user mistake on the command line is one line on stderr and exit code 2: argparse's own
errors, a refused ``.pt``, multi-line library errors (store mismatches); ``--help`` is clean text."""

from __future__ import annotations

import re

import pytest
import torch

from torchntk.cli import COMMANDS, build_parser, main


@pytest.mark.parametrize("argv, match", [
    (["kernel", "--bogus"], "unrecognized arguments: --bogus"),
    (["kernel", "--mode", "half"], "argument --mode: invalid choice: 'half'"),
    (["spectrum", "--top", "ten"], "argument --top: invalid int value: 'ten'"),
    (["predict", "--diag-reg"], "argument --diag-reg: expected one argument"),
    (["fly"], "invalid choice: 'fly'"),
    ([], "a command is required"),
])
def test_argparse_errors_are_one_line(argv, match, one_line_error):
    assert main(argv) == 2
    err = one_line_error()
    assert match in err and "usage:" not in err


def test_help_still_exits_0(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["kernel", "--help"])
    assert exc.value.code == 0
    assert "usage: torchntk kernel" in capsys.readouterr().out


class _Thing:
    """A Python object a weights-only load refuses."""


@pytest.mark.parametrize("which", ["data", "kernel"])
def test_a_pt_file_with_python_objects_is_refused_in_one_line(data, one_line_error, which):
    d = data
    bad = d / "bad.pt"
    payload = {"x": torch.zeros(12, 3), "meta": _Thing()} if which == "data" else {"ntk": torch.eye(12), "meta": _Thing()}
    torch.save(payload, bad)
    if which == "data":
        argv = ["kernel", "--data", str(bad), "--analytic", "--out", str(d / "k.npz")]
    else:
        argv = ["spectrum", "--kernel", str(bad), "--out", str(d / "s.json")]
    assert main(argv) == 2
    err = one_line_error()
    assert "_Thing" in err and "never unpickles" in err and "weights_only" not in err


def test_store_mismatch_is_one_line(data, capsys, one_line_error):
    pytest.importorskip("zarr")
    d = data
    base = ["kernel", "--data", str(d / "train.npz"), "--analytic", "--tile", "4", "--no-progress",
            "--out", str(d / "k.zarr")]
    assert main(base + ["--depth", "2"]) == 0
    capsys.readouterr()
    assert main(base + ["--depth", "3"]) == 2          # other settings, same store: refused
    err = one_line_error()
    assert "cannot resume the kernel store" in err and "identity changed" in err


def test_one_line_joins_a_list_message():
    from torchntk.cli import one_line

    text = "cannot resume it: it was computed from something else:\n  - the inputs changed\n  - the tile changed\nUse another path."
    assert one_line(text) == ("cannot resume it: it was computed from something else: the inputs changed; "
                              "the tile changed; Use another path.")


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_has_no_docstring_markup(command):
    parser, subs = build_parser()
    text = (parser if command is None else subs[command]).format_help()
    for markup in ("``", ":mod:", ":func:", ":class:", ":meth:", ":attr:"):
        assert markup not in text, (command, markup)
    assert not re.search(r"`~", text)
