"""``torchntk demo``: the five studies on built-in data, with figures, metrics and a report."""

from __future__ import annotations

import argparse
import json

import torch

from ..errors import InvalidArgumentError
from ..lab import STUDIES, LabConfig, run_demo
from ._common import CLIError, check_writable


def _value(value) -> str:
    """A check's value in full, numbers to 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(value, default=str)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="run the finite-vs-infinite-width studies and write the report",
        description="Hold finite networks against the infinite-width theory: kernel convergence, "
                    "lazy training, agreement with kernel predictions, eigenmodes, generalization. "
                    "Writes metrics.json, figures/*.png and report.html into --out. A rerun skips "
                    "studies already finished with the same settings.",
    )
    p.add_argument("--quick", action="store_true", help="the one-minute variant (smaller widths and data)")
    p.add_argument("--out", default="torchntk-results", help="results folder (default: torchntk-results)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same numbers")
    p.add_argument("--studies", type=str, default=None,
                   help="comma-separated subset of " + ",".join(STUDIES))
    p.add_argument("--force", action="store_true", help="recompute studies even if finished results exist")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> int:
    out = check_writable(args.out, folder=True)
    overrides = {"seed": args.seed}
    if args.studies:
        names = tuple(s.strip() for s in args.studies.split(",") if s.strip())
        bad = [n for n in names if n not in STUDIES]
        if bad:
            raise CLIError(f"unknown study {bad[0]!r} in --studies; expected some of {', '.join(STUDIES)}")
        overrides["studies"] = names
    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        cfg = LabConfig.preset(quick=args.quick, **overrides)
    except InvalidArgumentError as err:
        raise CLIError(str(err)) from None
    print(f"torchntk demo ({'quick' if args.quick else 'full'}, seed {args.seed}) -> {out}")
    results = run_demo(out, cfg, progress=not args.no_progress, force=args.force)
    for check in results["checks"]:
        mark = "PASS" if check["passed"] else "FAIL"
        print(f"  {mark}  {check['check']}: {_value(check['value'])}")
    print(f"metrics: {out / 'metrics.json'}\nreport:  {out / 'report.html'}")
    return 0
