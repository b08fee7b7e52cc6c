"""``torchntk predict``: outputs of MSE training predicted from saved kernels (closed form).

``f_t - y = exp(-t Theta / N) (f_0 - y)`` on the training points (gradient flow; with
``--learning-rate eta``, ``(I - eta Theta / N)^t`` with ``t`` in steps) and the matching formula
on held-out points when the kernel file has ``ntk_test_train``; ``t = inf`` is kernel regression.
A features file of ``torchntk kernel --features M`` (``phi_ntk`` [, ``phi_ntk_test``]) is trained
in feature space instead (:func:`torchntk.features.mse`, cost ``N M^2``); so is ``--features M``
without a kernel file: the random features of the built-in network's NTK (``--depth``,
``--activation``, ``--w-std``, ``--b-std``, drawn by ``--seed``) are computed from the data in
batches and streamed, so no ``N x N`` kernel or ``N x M`` matrix is ever held.
``f_0 = 0`` (the mean over initializations). Uses :func:`torchntk.dynamics.mse`. ``--data`` is a
built-in dataset (its test split scores the test predictions) or a file; a kernel file computed
on other inputs than those given is refused (its recorded fingerprint differs), one without a
fingerprint is used with a warning.

Output by the extension of ``--out``: ``.npz`` or ``.pt`` (arrays ``t`` (T,), ``f_train`` (T, N, O),
``train_cost`` (T,) [, ``f_test`` (T, M, O)]), ``.json`` (RFC 8259: the summary and predictions, with
``t = inf`` and any other infinite value written as the string ``"inf"``/``"-inf"`` and NaN as
``null``) or ``.csv`` (one row per prediction: ``t,split,example,output,prediction``); any other
extension is refused.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._kernel_checks import check_kernel
from ..errors import TorchNTKError
from ._common import CLIError, builtin_spec, check_new, json_safe, load_kernels, parse_times, plain
from ._datasets import Inputs, add_split_arguments, load_inputs
from ._fingerprint import check_inputs, warn


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="predict training outputs over time from saved kernels",
                       description=plain(__doc__.split("\n\n")[1]))
    p.add_argument("--kernel", help="kernel file from `torchntk kernel`: .npz, .pt or .zarr")
    p.add_argument("--data", help="training data with targets 'y' (the kernel's N rows): a built-in dataset "
                                   "(digits, mnist1d, circle: its test split scores the test predictions) or a file")
    p.add_argument("--test-data", dest="test_data", default=None,
                   help="held-out data file with 'y' to score the test predictions (optional)")
    add_split_arguments(p, as_given=True)
    p.add_argument("--t", default="0,1,10,100,1000,inf", help="comma-separated times, 'inf' allowed")
    p.add_argument("--learning-rate", dest="learning_rate", type=float, default=None,
                   help="gradient descent with this step (t counts steps); default: gradient flow")
    p.add_argument("--diag-reg", dest="diag_reg", type=float, default=0.0,
                   help="ridge: Theta + diag_reg * mean(diag Theta) * I (default 0)")
    p.add_argument("--out", default="predictions.npz",
                   help="output by extension: .npz/.pt (t, f_train, train_cost, f_test), .json or .csv "
                        "(default predictions.npz); an existing file is refused unless --force")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.add_argument("--features", type=int, default=None, metavar="M",
                   help="instead of --kernel: train on M random features of the built-in network's NTK, "
                        "computed from --data/--test-data (torchntk.features)")
    p.add_argument("--depth", type=int, default=3, help="with --features: Dense layers of the built-in network (default 3)")
    p.add_argument("--activation", default="relu", help="with --features: relu, erf, gelu, abs, tanh (default relu)")
    p.add_argument("--w-std", dest="w_std", type=float, default=1.0, help="with --features: W_std (default 1)")
    p.add_argument("--b-std", dest="b_std", type=float, default=0.1, help="with --features: b_std (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="with --features: seed of the random features (default 0)")
    return p


class _FeatureKernel:
    """Feature rows ``Phi`` (a matrix or streamed ``FeatureRows``) standing for the kernel
    ``Phi Phi^T`` (shape of the kernel it stands for)."""

    def __init__(self, phi: Any, n_cols: int) -> None:
        self.phi, self.shape = phi, (len(phi), n_cols)


def _from_features(arrays: dict, y: torch.Tensor, args: argparse.Namespace) -> dict:
    """Kernel stand-ins from a features file: training in feature space (torchntk.features)."""
    phi = torch.as_tensor(arrays["phi_ntk"], dtype=torch.float64)
    out = {"ntk": _FeatureKernel(phi, phi.shape[0])}
    if "phi_ntk_test" in arrays:
        out["ntk_test_train"] = _FeatureKernel(torch.as_tensor(arrays["phi_ntk_test"], dtype=torch.float64),
                                               phi.shape[0])
    return out


def _feature_rows(args: argparse.Namespace) -> tuple[dict, torch.Tensor]:
    """``--features M``: the streamed NTK feature rows of the train (and test) inputs, and ``y``."""
    from ..features import FeatureMap

    if args.kernel:
        raise CLIError("--features computes the features from --data: drop --kernel (or --features)")
    if args.features < 2:
        raise CLIError(f"--features must be an int >= 2, got {args.features}")
    got = _inputs(args)
    x = got.x
    spec = builtin_spec(512, args.depth, str(args.activation).lower(), args.w_std, args.b_std, 1)
    try:
        fm = FeatureMap(spec, args.features, seed=args.seed)
        out = {"ntk": _FeatureKernel(fm.rows(x), x.shape[0])}
        if got.x_test is not None:
            out["ntk_test_train"] = _FeatureKernel(fm.rows(got.x_test), x.shape[0])
    except TorchNTKError as err:
        raise CLIError(str(err)) from None
    return out, got


def _inputs(args: argparse.Namespace) -> Inputs:
    return load_inputs(args.data, args.test_data, n_train=args.n_train, n_test=args.n_test,
                       data_seed=args.data_seed, need_y=True, test_flag="--test-data")


def run(args: argparse.Namespace) -> int:
    from ..dynamics import mse

    if args.features is not None:
        if not args.data:
            raise CLIError("--data is required")
        kernels, got = _feature_rows(args)
    else:
        if not args.kernel or not args.data:
            raise CLIError("--kernel and --data are required (or --features M and --data)")
        kernels = load_kernels(args.kernel)
        got = _inputs(args)
    record = kernels.inputs if args.features is None else False     # False: computed here, nothing to check
    y = got.y
    if "phi_ntk" in kernels and "ntk" not in kernels:  # a features file of `torchntk kernel --features`
        kernels = _from_features(kernels, y, args)
    if "ntk" not in kernels:
        if "ntk_test_train" in kernels:
            raise CLIError(f"kernel file {args.kernel!r} holds only a test/train kernel; "
                           "predictions need the (N, N) training kernel 'ntk'")
        raise CLIError(f"kernel file {args.kernel!r} has no array 'ntk'")
    K = kernels["ntk"]
    if K.shape[0] != y.shape[0]:
        raise CLIError(f"the kernel has {K.shape[0]} training rows but {args.data!r} has {y.shape[0]} targets")
    Kt = kernels.get("ntk_test_train")
    if Kt is not None and Kt.shape[1] != K.shape[0]:
        raise CLIError(f"ntk_test_train has {Kt.shape[1]} columns but the training kernel has {K.shape[0]} rows")
    y_test = got.y_test if Kt is not None or not got.builtin else None   # a train-only kernel of a dataset
    if y_test is not None:
        if Kt is None:
            raise CLIError("--test-data given but the kernel file has no 'ntk_test_train' (run `torchntk kernel --test`)")
        if y_test.shape[0] != Kt.shape[0]:
            raise CLIError(f"ntk_test_train has {Kt.shape[0]} rows but {got.test_label} has {y_test.shape[0]} targets")
    out = Path(args.out)
    if out.suffix.lower() not in _WRITERS:
        raise CLIError(f"--out must end in {', '.join(_WRITERS)}, got {str(out)!r}")
    t = parse_times(args.t)
    if args.learning_rate is not None:
        finite = t[torch.isfinite(t)]
        if not torch.equal(finite, finite.round()):
            raise CLIError("with --learning-rate, --t counts steps: use whole numbers (or inf)")
    check_new(out, args.force)
    unchecked = None
    if record is not False:
        unchecked = check_inputs(args.kernel, record, got.x, got.x_test if y_test is not None else None,
                                 data=got.label, test=got.test_label)
    if not isinstance(K, _FeatureKernel):
        try:   # the library's kernel validation (shape, finite, symmetric, PSD minors), named by the file
            check_kernel("ntk", K)
        except TorchNTKError as err:
            raise CLIError(f"kernel file {args.kernel!r}: {err}") from None
    if isinstance(K, _FeatureKernel):
        from ..features import mse as feature_mse

        pred = feature_mse(K.phi, y, learning_rate=args.learning_rate, diag_reg=args.diag_reg)
        f_train, f_test = pred(t, None if Kt is None else Kt.phi)
    else:
        pred = mse(K, y, learning_rate=args.learning_rate, diag_reg=args.diag_reg)
        f_train, f_test = pred(t, Kt)
    cost = 0.5 * ((f_train - y) ** 2).sum((-2, -1)) / y.shape[0]
    summary = {"t": t.tolist(), "train_cost": cost.tolist()}
    print(f"{'t':>10}  {'train cost':>12}" + ("  test MSE" if y_test is not None else ""))
    test_mse = None
    if y_test is not None:
        test_mse = ((f_test - y_test) ** 2).mean((-2, -1))
        summary["test_mse"] = test_mse.tolist()
        if y_test.shape[1] > 1:
            acc = (f_test.argmax(-1) == y_test.argmax(-1)).double().mean(-1)
            summary["test_accuracy"] = acc.tolist()
    for i, ti in enumerate(t.tolist()):
        line = f"{ti:>10g}  {float(cost[i]):>12.6g}"
        if test_mse is not None:
            line += f"  {float(test_mse[i]):.6g}"
            if "test_accuracy" in summary:
                line += f"  (accuracy {summary['test_accuracy'][i]:.4f})"
        print(line)
    arrays = {"t": t, "f_train": f_train, "train_cost": cost}
    if f_test is not None:
        arrays["f_test"] = f_test
    _WRITERS[out.suffix.lower()](out, arrays, summary)
    print(f"wrote {out}")
    warn(unchecked)
    return 0


def _write_npz(out: Path, arrays: dict[str, torch.Tensor], summary: dict) -> None:
    with open(out, "wb") as fh:   # a file object: numpy would append ".npz" to another name
        np.savez(fh, **{k: v.numpy() for k, v in arrays.items()})


def _write_pt(out: Path, arrays: dict[str, torch.Tensor], summary: dict) -> None:
    torch.save(arrays, out)


def _write_json(out: Path, arrays: dict[str, torch.Tensor], summary: dict) -> None:
    doc = {**summary, "f_train": arrays["f_train"].tolist(),
           "f_test": arrays["f_test"].tolist() if "f_test" in arrays else None}
    out.write_text(json.dumps(json_safe(doc), allow_nan=False) + "\n")


def _write_csv(out: Path, arrays: dict[str, torch.Tensor], summary: dict) -> None:
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["t", "split", "example", "output", "prediction"])
        for split in ("train", "test"):
            f = arrays.get(f"f_{split}")
            if f is None:
                continue
            for k, tk in enumerate(arrays["t"].tolist()):
                for i, row in enumerate(f[k].tolist()):
                    writer.writerows([repr(tk), split, i, o, repr(v)] for o, v in enumerate(row))


_WRITERS = {".npz": _write_npz, ".pt": _write_pt, ".json": _write_json, ".csv": _write_csv}
