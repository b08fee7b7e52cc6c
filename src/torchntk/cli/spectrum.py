"""``torchntk spectrum``: eigenvalues of a saved kernel and what they say about training.

Prints the top eigenvalues ``lambda_k`` of the (N, N) training kernel, the decay rates
``lambda_k / N`` of the residual's eigenmodes, the condition number, the effective dimension
``(sum lambda)^2 / sum lambda^2`` and the largest stable gradient-descent step ``2 N / lambda_max``.
A kernel that is not square, finite and symmetric is refused (exit 2); one with an eigenvalue
below ``-1e-7 lambda_max`` (beyond float64 round-off) is reported as indefinite, with no condition
number or stable step, and a warning. With ``--data`` the kernel must have been computed on
those inputs (its fingerprint is checked). Saves the figures as JSON (RFC 8259: an infinite value
is written as the string ``"inf"``, NaN as ``null``) and, with ``--plot``, a log-scale figure in the format of its extension (``.png``,
``.jpg``/``.jpeg``, ``.pdf`` or ``.svg``) into an existing folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from .._kernel_checks import check_eigenvalues, check_kernel
from ..empirical import flatten_kernel
from ..errors import InvalidArgumentError, TorchNTKError
from ..lab.figures import figure, plt
from ._common import CLIError, check_new, json_safe, load_kernels, plain
from ._datasets import add_split_arguments, load_inputs
from ._fingerprint import check_inputs, warn

#: Figure formats of ``--plot``, by extension (matplotlib format names).
_PLOT_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".pdf": "pdf", ".svg": "svg"}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("spectrum", help="eigenvalues of a saved kernel, mode decay rates, max step",
                       description=plain(__doc__.split("\n\n")[1]))
    p.add_argument("--kernel", help="kernel file from `torchntk kernel`: .npz, .pt or .zarr")
    p.add_argument("--name", default="ntk", help="which array of the file (default ntk; e.g. nngp)")
    p.add_argument("--top", type=int, default=10, help="eigenvalues to print (default 10)")
    p.add_argument("--out", default="spectrum.json", help="JSON output (default spectrum.json); an existing "
                                                          "file is refused unless --force")
    p.add_argument("--plot", default=None, help="also draw the spectrum to this figure (.png, .jpg, .pdf or .svg)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out or --plot")
    p.add_argument("--data", default=None,
                   help="optional: the training inputs (a built-in dataset or a file); the kernel is refused "
                        "unless it was computed on them")
    add_split_arguments(p, as_given=True)
    return p


def run(args: argparse.Namespace) -> int:
    if not args.kernel:
        raise CLIError("--kernel is required")
    if args.top < 1:
        raise CLIError(f"--top must be a positive number of eigenvalues, got {args.top}")
    if Path(args.out).suffix.lower() != ".json":
        raise CLIError(f"--out must end in .json, got {args.out!r}")
    plot_format = None
    if args.plot:
        plot_format = _PLOT_FORMATS.get(Path(args.plot).suffix.lower())
        if plot_format is None:
            raise CLIError(f"--plot must end in {', '.join(_PLOT_FORMATS)}, got {args.plot!r}")
        check_new(args.plot, args.force, "--plot")
    out = check_new(args.out, args.force)
    kernels = load_kernels(args.kernel)
    unchecked = None
    if args.data:
        got = load_inputs(args.data, n_train=args.n_train, n_test=args.n_test, data_seed=args.data_seed)
        unchecked = check_inputs(args.kernel, kernels.inputs, got.x, None, data=got.label, test=None)
    elif any(v is not None for v in (args.n_train, args.n_test, args.data_seed)):
        raise CLIError("--n-train/--n-test/--data-seed choose the split of a built-in --data: add --data")
    if args.name not in kernels:
        raise CLIError(f"kernel file {args.kernel!r} has no array {args.name!r} (found: {', '.join(kernels)})")
    K = kernels[args.name]
    if K.ndim == 4 and K.shape[2] == K.shape[3]:     # full (N, N, O, O): sample-major flattening
        K = flatten_kernel(K)
    try:   # the library's kernel validation: square, finite, symmetric (PSD is reported below)
        K = check_kernel(args.name, K, psd=False)
    except TorchNTKError as err:
        raise CLIError(f"kernel file {args.kernel!r}: {err}") from None
    n = K.shape[0]
    lam_up = torch.linalg.eigvalsh(K)
    try:
        lam_psd = check_eigenvalues(args.name, lam_up, torch.float64)   # round-off negatives -> 0
        indefinite = None
    except InvalidArgumentError as err:
        lam_psd, indefinite = None, str(err)
    lam = lam_up.flip(0).numpy()
    pos = lam[lam > 0]
    summary = {
        "n": n,
        "eigenvalues": lam.tolist(),
        "lambda_max": float(lam[0]),
        "lambda_min": float(lam[-1]),
        "positive_semidefinite": indefinite is None,
        # of a PSD kernel (round-off negatives taken as 0); undefined (null) for an indefinite one
        "condition_number": None if lam_psd is None else (
            float(lam_psd[-1] / lam_psd[0]) if lam_psd[0] > 0 else float("inf")),
        "effective_dimension": float(pos.sum() ** 2 / (pos**2).sum()) if len(pos) else 0.0,
        "mode_rates_lambda_over_N": (lam[: args.top] / n).tolist(),
        # an indefinite kernel's gradient descent grows its negative modes at every step size
        "max_stable_learning_rate": None if lam_psd is None else float(2 * n / lam[0]),
    }
    if indefinite is None:
        print(f"N = {n}; lambda_max = {lam[0]:.6g}, lambda_min = {lam[-1]:.6g}, "
              f"condition number = {summary['condition_number']:.4g}")
        print(f"effective dimension = {summary['effective_dimension']:.4g}; "
              f"largest stable GD step 2N/lambda_max = {summary['max_stable_learning_rate']:.6g}")
    else:
        print(f"N = {n}; lambda_max = {lam[0]:.6g}, lambda_min = {lam[-1]:.6g}: INDEFINITE, not a "
              "valid kernel (no condition number; gradient descent diverges along the negative modes)")
        warn(f"kernel file {args.kernel!r}: {indefinite}")
    print(f"{'k':>4}  {'lambda_k':>12}  {'lambda_k/lambda_max':>20}  {'rate lambda_k/N':>16}")
    for k in range(min(args.top, n)):
        print(f"{k + 1:>4}  {lam[k]:>12.6g}  {lam[k] / lam[0]:>20.4g}  {lam[k] / n:>16.6g}")
    out.write_text(json.dumps(json_safe(summary), indent=1, allow_nan=False) + "\n")
    print(f"wrote {out}")
    if args.plot:
        fig, (ax,) = figure(1)
        ax.semilogy(np.arange(1, len(pos) + 1), pos, "o-", ms=3)
        ax.set_xlabel("index k")
        ax.set_ylabel(r"eigenvalue $\lambda_k$")
        ax.set_title(f"spectrum of {args.name} (N = {n})")
        fig.tight_layout()
        fig.savefig(Path(args.plot), format=plot_format)
        plt().close(fig)
        print(f"wrote {args.plot}")
    warn(unchecked)
    return 0
