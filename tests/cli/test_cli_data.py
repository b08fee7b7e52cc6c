"""Built-in datasets: ``--data digits|mnist1d|circle`` with a documented split, so ``torchntk kernel``
and ``torchntk predict`` run with no data file written by hand."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch

from torchntk.cli import main
from torchntk.cli._common import builtin_spec

_SMALL = ["--n-train", "60", "--n-test", "40"]


def _digits_split(n_train: int, n_test: int, seed: int):
    """The documented digits split, written out: a permutation by default_rng([seed, 4]), pixels
    / 16 centred on the training mean, rows scaled to norm 8, one-hot targets."""
    from sklearn.datasets import load_digits

    X, labels = load_digits(return_X_y=True)
    perm = np.random.default_rng([seed, 4]).permutation(len(X))
    tr, te = perm[:n_train], perm[n_train:n_train + n_test]
    X = X / 16.0
    X = X - X[tr].mean(0)
    X = 8.0 * X / np.linalg.norm(X, axis=1, keepdims=True)
    return X[tr], labels[tr], X[te], labels[te]


def test_digits_kernel_and_predict_from_a_fresh_folder(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)                 # no data file anywhere: the defaults write here
    assert main(["kernel", "--data", "digits", *_SMALL, "--analytic", "--depth", "2"]) == 0
    assert main(["predict", "--kernel", "kernel.npz", "--data", "digits", *_SMALL, "--t", "0,inf"]) == 0
    out = capsys.readouterr().out
    k, p = np.load(tmp_path / "kernel.npz"), np.load(tmp_path / "predictions.npz")
    x, labels, xt, labels_t = _digits_split(60, 40, 0)
    spec = builtin_spec(512, 2, "relu", 1.0, 0.1, 1)
    # the same float64 layer recursion on the same inputs
    np.testing.assert_allclose(k["ntk"], spec.kernel(torch.from_numpy(x)).ntk.numpy(), rtol=1e-12)
    # t = inf is kernel regression on one-hot targets: K_test,train K^-1 Y (closed form); the
    # kernel's condition number is below 1e4 here, so the solve loses at most ~1e-12
    Y = np.eye(10)[labels]
    expected = k["ntk_test_train"] @ np.linalg.solve(k["ntk"], Y)
    np.testing.assert_allclose(p["f_test"][-1], expected, atol=1e-9)
    accuracy = (expected.argmax(1) == labels_t).mean()
    assert accuracy > 0.6                       # 10 classes: chance is 0.1
    assert f"(accuracy {accuracy:.4f})" in out


def test_mnist1d_is_generated_by_make_dataset_and_leaves_global_rng_alone(data):
    mnist1d = pytest.importorskip("mnist1d.data")
    d = data
    np.random.seed(123)
    random.seed(123)
    before = np.random.get_state()[1].copy(), random.getstate()
    assert main(["kernel", "--data", "mnist1d", "--n-train", "30", "--n-test", "15", "--data-seed", "3",
                 "--analytic", "--depth", "2", "--out", str(d / "k.npz")]) == 0
    np.testing.assert_array_equal(np.random.get_state()[1], before[0])
    assert random.getstate() == before[1]
    # the documented recipe: the package's defaults, num_samples rounded up to 50, seed 3, one split
    args = mnist1d.get_dataset_args()
    args.num_samples, args.train_split, args.seed = 50, 1.0, 3
    ref = mnist1d.make_dataset(args)["x"]
    spec = builtin_spec(512, 2, "relu", 1.0, 0.1, 1)
    k = np.load(d / "k.npz")
    x, xt = torch.from_numpy(ref[:30]), torch.from_numpy(ref[30:45])
    np.testing.assert_allclose(k["ntk"], spec.kernel(x).ntk.numpy(), rtol=1e-12)
    np.testing.assert_allclose(k["ntk_test_train"], spec.kernel(xt, x).ntk.numpy(), rtol=1e-12)


def test_circle_points_and_targets(data):
    from torchntk.cli._datasets import builtin_split

    s = builtin_split("circle", 16, 48, 0)
    for x in (s.x, s.x_test):
        np.testing.assert_allclose(x.norm(dim=1).numpy(), 1.0, rtol=1e-15)      # on the unit circle
    for x, y in ((s.x, s.y), (s.x_test, s.y_test)):
        g = torch.atan2(x[:, 1], x[:, 0])
        np.testing.assert_allclose(y[:, 0].numpy(), (torch.sin(2 * g) + 0.5 * torch.cos(g)).numpy(), atol=1e-14)
    gaps = torch.diff(torch.atan2(s.x_test[:, 1], s.x_test[:, 0]))
    np.testing.assert_allclose(gaps.numpy(), 2 * np.pi / 48, rtol=1e-9)          # test angles evenly spaced
    assert torch.all(torch.diff(torch.atan2(s.x[:, 1], s.x[:, 0])) > 0)           # training angles sorted


def test_circle_round_trip_interpolates(data):
    d = data
    assert main(["kernel", "--data", "circle", "--analytic", "--out", str(d / "k.npz")]) == 0
    assert main(["predict", "--kernel", str(d / "k.npz"), "--data", "circle", "--t", "inf",
                 "--out", str(d / "p.npz")]) == 0
    from torchntk.cli._datasets import builtin_split

    y = builtin_split("circle", 16, 48, 0).y.numpy()
    np.testing.assert_allclose(np.load(d / "p.npz")["f_train"][-1], y, atol=1e-8)    # t = inf interpolates


@pytest.mark.parametrize("case", ["split_on_file", "test_with_builtin", "too_many", "negative", "no_mnist1d",
                                  "no_data"])
def test_data_mistakes_are_one_line(data, one_line_error, monkeypatch, case):
    d = data
    out = ["--analytic", "--out", str(d / "k.npz")]
    if case == "split_on_file":
        argv, match = ["kernel", "--data", str(d / "train.npz"), "--n-train", "5", *out], "--n-train choose the split"
    elif case == "test_with_builtin":
        argv, match = ["kernel", "--data", "circle", "--test", str(d / "test.npz"), *out], "brings its own test split"
    elif case == "too_many":
        argv, match = ["kernel", "--data", "digits", "--n-train", "1500", "--n-test", "500", *out], "1797 examples"
    elif case == "negative":
        argv, match = ["kernel", "--data", "circle", "--n-test", "-1", *out], "--n-test >= 0"
    elif case == "no_mnist1d":
        monkeypatch.setitem(sys.modules, "mnist1d.data", None)     # as if the package were absent
        argv, match = ["kernel", "--data", "mnist1d", *out], "pip install mnist1d"
    else:
        argv, match = ["kernel", "--analytic", "--out", str(d / "k.npz")], "digits, mnist1d, circle"
    assert main(argv) == 2
    assert match in one_line_error()
    assert not (d / "k.npz").exists()
