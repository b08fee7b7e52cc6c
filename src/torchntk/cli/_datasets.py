"""Built-in datasets of the command line, and the one place that turns ``--data``/``--test`` into
tensors (private).

``--data NAME`` names a built-in dataset instead of a file (a data file always has an extension:
``.npz``, ``.pt`` or ``.npy``). Each brings its own train/test split, drawn by ``--data-seed``
(default 0), of ``--n-train`` / ``--n-test`` examples (defaults below); inputs are float64,
targets float64 ``(N, O)``:

- ``digits``: scikit-learn's 8 x 8 digits (1797 images, shipped with scikit-learn), as in the
  lab's generalization study: a random permutation by the seed, the first ``n_train`` examples to
  train and the next ``n_test`` to test, pixels / 16 centred on the training mean and each row
  scaled to norm ``sqrt(64)``; one-hot targets ``(N, 10)``. Defaults 500 / 500.
- ``mnist1d``: the ``mnist1d`` package's ``make_dataset`` (generated, nothing is downloaded; an
  optional dependency: ``pip install mnist1d``, part of the ``lab`` extra) with its default
  arguments except ``num_samples`` (``n_train + n_test`` rounded up to a multiple of 10, as the
  examples come class by class) and ``seed`` (the data seed): 40-sample signals standardized by the
  package, the first ``n_train`` of its shuffled examples to train and the next ``n_test`` to
  test; one-hot targets ``(N, 10)``. Defaults 500 / 500.
- ``circle``: points ``(cos g, sin g)`` on the unit circle of the lab's studies (Jacot et al.'s
  Figure 1): training angles uniform in ``[-pi, pi]`` drawn by the seed (sorted), test angles
  evenly spaced, target ``sin(2 g) + cos(g) / 2`` ``(N, 1)``. Defaults 16 / 48.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from ._common import CLIError, load_data

#: The built-in datasets and their default (n_train, n_test).
DATASETS = {"digits": (500, 500), "mnist1d": (500, 500), "circle": (16, 48)}
_DIGITS_SIZE = 1797


@dataclass
class Inputs:
    """What ``--data`` (and ``--test``) gave: train ``x`` ``(N, ...)``, ``y`` ``(N, O)`` or None,
    test ``x_test`` ``(M, ...)`` / ``y_test`` or None, all float64; ``builtin``: the dataset name."""

    x: torch.Tensor
    y: torch.Tensor | None
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    builtin: str | None = None
    #: How the train and test inputs were given, for messages.
    label: str = "--data"
    test_label: str = "--test"


def add_split_arguments(p, *, as_given: bool = False) -> None:
    """``--n-train``, ``--n-test``, ``--data-seed`` on parser ``p`` (``as_given``: a command that
    reads a kernel, whose split must be the one the kernel was computed on)."""
    same = " (as given to `torchntk kernel`)" if as_given else ""
    p.add_argument("--n-train", dest="n_train", type=int, default=None,
                   help=f"built-in dataset: training examples{same} (digits, mnist1d: 500; circle: 16)")
    p.add_argument("--n-test", dest="n_test", type=int, default=None,
                   help=f"built-in dataset: test examples{same} (digits, mnist1d: 500; circle: 48; 0: none)")
    p.add_argument("--data-seed", dest="data_seed", type=int, default=None,
                   help=f"built-in dataset: seed of the train/test split{same} (default 0)")


def is_builtin(data: str | None) -> bool:
    """Whether ``--data`` names a built-in dataset (a name without a file extension)."""
    return data in DATASETS


def load_inputs(data: str | None, test: str | None = None, *, n_train: int | None = None,
                n_test: int | None = None, data_seed: int | None = None, need_y: bool = False,
                test_flag: str = "--test") -> Inputs:
    """The inputs of ``--data`` (a file or a built-in name) and of ``test`` (a file, named by
    ``test_flag`` in messages); ``need_y``: targets are required (of the test file too)."""
    if not data:
        raise CLIError("--data is required: a built-in dataset (" + ", ".join(DATASETS) +
                       ") or a .npz/.pt file with array 'x' (and 'y'), or a .npy")
    split_flags = [f for f, v in (("--n-train", n_train), ("--n-test", n_test), ("--data-seed", data_seed))
                   if v is not None]
    if is_builtin(data):
        if test:
            raise CLIError(f"the built-in dataset {data!r} brings its own test split: drop {test_flag} "
                           "(--n-test sets its size, 0 for none)")
        default_train, default_test = DATASETS[data]
        n_train = default_train if n_train is None else n_train
        n_test = default_test if n_test is None else n_test
        data_seed = 0 if data_seed is None else data_seed
        got = builtin_split(data, n_train, n_test, data_seed)
        got.label = f"--data {data!r} (--n-train {n_train}, --n-test {n_test}, --data-seed {data_seed})"
        got.test_label = f"the test split of {got.label}"
        return got
    if split_flags:
        raise CLIError(f"{', '.join(split_flags)} choose the split of a built-in dataset "
                       f"({', '.join(DATASETS)}); --data {data!r} is a file (drop them)")
    x, y = load_data(data, need_y=need_y)
    xt = yt = None
    if test:
        xt, yt = load_data(test, need_y=need_y)
        if xt.shape[1:] != x.shape[1:]:
            raise CLIError(f"{test_flag} inputs have per-example shape {tuple(xt.shape[1:])}, "
                           f"--data has {tuple(x.shape[1:])}")
    return Inputs(x, y, xt, yt, label=f"--data {data!r}", test_label=f"{test_flag} {test!r}")


def builtin_split(name: str, n_train: int, n_test: int, seed: int) -> Inputs:
    """The train/test split of the built-in dataset ``name`` (module doc)."""
    if n_train < 1 or n_test < 0:
        raise CLIError(f"--n-train must be >= 1 and --n-test >= 0, got {n_train} and {n_test}")
    if name == "digits":
        if n_train + n_test > _DIGITS_SIZE:
            raise CLIError(f"digits has {_DIGITS_SIZE} examples: --n-train + --n-test must not exceed "
                           f"it, got {n_train} + {n_test}")
        from ..lab.generalization import load

        try:
            d = load(SimpleNamespace(seed=seed, digits_train=n_train, digits_test=n_test))
        except ImportError:
            raise CLIError("--data digits needs scikit-learn: pip install 'torchntk[lab]'") from None
    elif name == "mnist1d":
        d = _mnist1d(n_train, n_test, seed)
    else:
        from ..lab.sweep import data as circle

        d = circle(SimpleNamespace(seed=seed, n_train=n_train, n_test=n_test))
    t = {k: torch.as_tensor(np.ascontiguousarray(d[k]), dtype=torch.float64)
         for k in ("x_train", "y_train", "x_test", "y_test")}
    test = n_test > 0
    return Inputs(t["x_train"], t["y_train"], t["x_test"] if test else None, t["y_test"] if test else None, name)


def _mnist1d(n_train: int, n_test: int, seed: int) -> dict[str, np.ndarray]:
    """MNIST-1D from ``mnist1d.data.make_dataset`` (module doc); the global ``random`` and
    ``numpy.random`` states, which it reseeds, are restored."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise CLIError("--data mnist1d needs the mnist1d package: pip install mnist1d "
                       "(or pip install 'torchntk[lab]')") from None
    args = get_dataset_args()
    args.num_samples = -(-(n_train + n_test) // 10) * 10
    args.train_split = 1.0            # every example in 'x': the split is taken below
    args.seed = seed
    states = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
    x, labels = d["x"], d["y"]
    onehot = np.eye(10)[labels]
    tr, te = slice(0, n_train), slice(n_train, n_train + n_test)
    return {"x_train": x[tr], "y_train": onehot[tr], "x_test": x[te], "y_test": onehot[te]}
