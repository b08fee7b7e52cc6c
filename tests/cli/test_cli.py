"""The `torchntk` command: kernel/predict/spectrum round trips, TOML configs, one-line errors (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import torchntk
from torchntk.cli import main
from torchntk.cli._common import builtin_spec


def test_kernel_predict_spectrum_round_trip(data, capsys):
    d = data
    assert main(["kernel", "--data", str(d / "train.npz"), "--test", str(d / "test.npz"), "--analytic",
                 "--depth", "3", "--out", str(d / "k.npz")]) == 0
    k = np.load(d / "k.npz")
    x = torch.from_numpy(np.load(d / "train.npz")["x"])
    xt = torch.from_numpy(np.load(d / "test.npz")["x"])
    spec = builtin_spec(512, 3, "relu", 1.0, 0.1, 1)
    np.testing.assert_allclose(k["ntk"], spec.kernel(x).ntk.numpy(), rtol=1e-12)
    np.testing.assert_allclose(k["ntk_test_train"], spec.kernel(xt, x).ntk.numpy(), rtol=1e-12)
    assert main(["predict", "--kernel", str(d / "k.npz"), "--data", str(d / "train.npz"), "--test-data",
                 str(d / "test.npz"), "--t", "0,5,inf", "--out", str(d / "p.npz")]) == 0
    p = np.load(d / "p.npz")
    y = np.load(d / "train.npz")["y"]
    np.testing.assert_allclose(p["f_train"][-1, :, 0], y, atol=1e-8)          # t = inf interpolates
    np.testing.assert_allclose(p["f_test"][-1, :, 0], k["ntk_test_train"] @ np.linalg.solve(k["ntk"], y), atol=1e-8)
    assert np.abs(p["f_train"][0]).max() < 1e-12 and np.all(np.diff(p["train_cost"]) <= 1e-15)
    assert main(["spectrum", "--kernel", str(d / "k.npz"), "--top", "3", "--out", str(d / "s.json")]) == 0
    s = json.loads((d / "s.json").read_text())
    np.testing.assert_allclose(s["eigenvalues"], np.linalg.eigvalsh(k["ntk"])[::-1], rtol=1e-10)
    np.testing.assert_allclose(s["max_stable_learning_rate"], 2 * 12 / s["lambda_max"])


def test_empirical_kernel_of_a_model_file_and_pt_output(data):
    d = data
    (d / "net.py").write_text("import torch\nfrom torchntk.nn import MLP\n"
                              "def make_model():\n    torch.manual_seed(0)\n    return MLP(3, [32], 2)\n")
    assert main(["kernel", "--data", str(d / "train.npz"), "--model", str(d / "net.py"), "--mode", "full",
                 "--out", str(d / "k.pt")]) == 0
    k = torch.load(d / "k.pt")["ntk"]
    import importlib.util

    spec = importlib.util.spec_from_file_location("net_for_test", d / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.make_model().double()
    x = torch.from_numpy(np.load(d / "train.npz")["x"])
    torch.testing.assert_close(k, torchntk.empirical_ntk(net, x, mode="full").double())


def test_config_file_and_flags(data, capsys):
    d = data
    (d / "c.toml").write_text(f'[kernel]\ndata = "{d / "train.npz"}"\nanalytic = true\ndepth = 2\nout = "{d / "k2.npz"}"\n')
    assert main(["kernel", "--config", str(d / "c.toml")]) == 0
    x = torch.from_numpy(np.load(d / "train.npz")["x"])
    np.testing.assert_allclose(np.load(d / "k2.npz")["ntk"], builtin_spec(8, 2, "relu", 1.0, 0.1, 1).kernel(x).ntk.numpy())
    assert main(["kernel", "--config", str(d / "c.toml"), "--depth", "4", "--force"]) == 0     # the flag wins
    np.testing.assert_allclose(np.load(d / "k2.npz")["ntk"], builtin_spec(8, 4, "relu", 1.0, 0.1, 1).kernel(x).ntk.numpy())


@pytest.mark.parametrize("case", ["config_key", "model_import", "lengths", "unwritable_demo",
                                  "unwritable_kernel", "kernel_rows", "missing_data", "bad_study"])
def test_user_errors_one_line_exit_2(data, one_line_error, case):
    d = data
    if case == "config_key":
        (d / "c.toml").write_text("quick = true\nwidht = 3\n")
        argv = ["demo", "--config", str(d / "c.toml")]
        match = "unknown config key 'widht'"
    elif case == "model_import":
        (d / "bad.py").write_text("import torch\nthis is not python\n")
        argv = ["kernel", "--data", str(d / "train.npz"), "--model", str(d / "bad.py"), "--out", str(d / "k.npz")]
        match = "cannot import model file"
    elif case == "lengths":
        np.savez(d / "bad.npz", x=np.zeros((5, 2)), y=np.zeros(4))
        argv = ["kernel", "--data", str(d / "bad.npz"), "--out", str(d / "k.npz")]
        match = "x has 5 rows but y has 4"
    elif case == "unwritable_demo":
        (d / "file").write_text("")
        argv = ["demo", "--quick", "--out", str(d / "file" / "results")]
        match = "not writable"
    elif case == "unwritable_kernel":
        (d / "file").write_text("")
        argv = ["kernel", "--data", str(d / "train.npz"), "--out", str(d / "file" / "k.npz")]
        match = "not writable"
    elif case == "kernel_rows":
        np.savez(d / "k.npz", ntk=np.eye(4))
        argv = ["predict", "--kernel", str(d / "k.npz"), "--data", str(d / "train.npz")]
        match = "4 training rows"
    elif case == "missing_data":
        argv = ["kernel", "--data", str(d / "nope.npz")]
        match = "does not exist"
    else:
        argv = ["demo", "--studies", "convergence,bogus", "--out", str(d / "r")]
        match = "unknown study 'bogus'"
    assert main(argv) == 2
    assert match in one_line_error()


def test_console_script_entry_point():
    from importlib.metadata import entry_points

    eps = [e for e in entry_points(group="console_scripts") if e.name == "torchntk"]
    assert eps and eps[0].value == "torchntk.cli:main"


def test_zarr_store_resume_and_predict(data, capsys):
    pytest.importorskip("zarr")
    d = data
    argv = ["kernel", "--data", str(d / "train.npz"), "--analytic", "--depth", "2", "--no-progress"]
    assert main(argv + ["--out", str(d / "k.zarr"), "--tile", "4"]) == 0
    assert main(argv + ["--out", str(d / "k.npz")]) == 0
    assert main(["kernel", "--resume", str(d / "k.zarr"), "--no-progress"]) == 0
    assert "0 tiles computed" in capsys.readouterr().out
    for name in ("k.zarr", "k.npz"):
        assert main(["predict", "--kernel", str(d / name), "--data", str(d / "train.npz"), "--t", "3",
                     "--out", str(d / f"p-{name}.npz")]) == 0
    np.testing.assert_allclose(np.load(d / "p-k.zarr.npz")["f_train"], np.load(d / "p-k.npz.npz")["f_train"], rtol=1e-7, atol=1e-9)
