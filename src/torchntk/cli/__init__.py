"""The ``torchntk`` command: ``demo``, ``kernel``, ``predict`` and ``spectrum``.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args)``. Every
option can also come from a TOML file (``--config file.toml``: the option names as keys, at top
level or under a table named after the subcommand); flags given on the command line win.
User mistakes (a usage error argparse finds, an unknown config key, a model file that fails to
import, data of mismatched lengths, a kernel file computed on other inputs, an existing output
without ``--force``...) print one line ``torchntk: error: ...`` on stderr and exit with code 2.
The worked page is ``docs/cli.md``.

Example::

    torchntk demo --quick --out results
    torchntk kernel --data digits --analytic --out digits.npz
    torchntk predict --kernel digits.npz --data digits --t 0,10,inf --out digits-pred.npz
    torchntk kernel --data train.npz --test test.npz --analytic --out kernel.npz
    torchntk predict --kernel kernel.npz --data train.npz --t 0,10,inf --out pred.npz
    torchntk spectrum --kernel kernel.npz --plot spectrum.png
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import demo, kernel, predict, spectrum
from .._version import __version__
from ..errors import TorchNTKError
from ._common import CLIError, config_defaults

COMMANDS = {"demo": demo, "kernel": kernel, "predict": predict, "spectrum": spectrum}

__all__ = ["main", "build_parser", "CLIError"]


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors raise :class:`CLIError` (one line, exit 2)
    instead of printing the usage block; sub-parsers inherit the class."""

    def error(self, message: str):  # type: ignore[override]
        raise CLIError(f"{message} (see `{self.prog} --help`)")


def one_line(message: str) -> str:
    """``message`` on one line: its lines stripped (and of a leading list dash) and joined by
    ``"; "`` (by a space after a line ending in a colon)."""
    out = ""
    for line in str(message).splitlines():
        line = line.strip().removeprefix("- ").strip()
        if line:
            out = line if not out else out + (" " if out.endswith(":") else "; ") + line
    return out


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and one sub-parser per command."""
    parser = _Parser(
        prog="torchntk",
        description="Neural Tangent Kernels for PyTorch: the finite-vs-infinite-width demo, "
                    "kernels, predictions and spectra from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"torchntk {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs = {}
    for name, module in COMMANDS.items():
        p = module.add_parser(sub)
        p.add_argument("--config", metavar="FILE.toml", help="read options from a TOML file (flags win)")
        subs[name] = p
    return parser, subs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subs = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            raise CLIError(f"a command is required: {', '.join(COMMANDS)} (see `torchntk --help`)")
        if getattr(args, "config", None):
            sp = subs[args.command]
            sp.set_defaults(**config_defaults(args.config, sp, args.command))
            args = parser.parse_args(argv)
        return int(COMMANDS[args.command].run(args) or 0)
    except TorchNTKError as err:  # CLIError and the library's own errors: user mistakes, one line
        print(f"torchntk: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("torchntk: interrupted; rerun the same command to continue where it stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
