"""`torchntk kernel --analytic --features M` and `torchntk predict` on a features file."""

from __future__ import annotations

import numpy as np
import torch

from torchntk.cli import main
from torchntk.features import FeatureMap, mse


def test_kernel_features_then_predict(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(30, 4)), rng.normal(size=(8, 4))
    np.savez(tmp_path / "tr.npz", x=x, y=np.sin(x[:, :1]))
    np.savez(tmp_path / "te.npz", x=xt, y=np.sin(xt[:, :1]))
    assert main(["kernel", "--analytic", "--features", "64", "--data", str(tmp_path / "tr.npz"), "--test",
                 str(tmp_path / "te.npz"), "--out", str(tmp_path / "f.npz"), "--seed", "3"]) == 0
    with np.load(tmp_path / "f.npz") as f:
        phi, phi_t = f["phi_ntk"], f["phi_ntk_test"]
    from torchntk.cli._common import builtin_spec

    fm = FeatureMap(builtin_spec(512, 3, "relu", 1.0, 0.1, 1), 64, seed=3)
    np.testing.assert_allclose(phi, fm(torch.from_numpy(x)).ntk.numpy(), rtol=1e-12, atol=1e-12)
    assert main(["predict", "--kernel", str(tmp_path / "f.npz"), "--data", str(tmp_path / "tr.npz"), "--test-data",
                 str(tmp_path / "te.npz"), "--t", "2", "--out", str(tmp_path / "p.npz")]) == 0
    with np.load(tmp_path / "p.npz") as p:
        f_test = p["f_test"][0]  # (T = 1, M, O)
    expected = mse(torch.from_numpy(phi), torch.from_numpy(np.sin(x[:, :1])))(2.0, torch.from_numpy(phi_t))[1]
    np.testing.assert_allclose(f_test, expected.numpy(), rtol=1e-10, atol=1e-12)
    assert main(["kernel", "--features", "64", "--data", str(tmp_path / "tr.npz"), "--out",
                 str(tmp_path / "g.npz")]) == 2
    assert "--analytic" in capsys.readouterr().err


def test_predict_features_streams_the_builtin_network(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x, xt = rng.normal(size=(40, 3)), rng.normal(size=(9, 3))
    y, yt = np.stack([np.sin(x[:, 0]), x[:, 1]], 1), np.stack([np.sin(xt[:, 0]), xt[:, 1]], 1)
    np.savez(tmp_path / "tr.npz", x=x, y=y)
    np.savez(tmp_path / "te.npz", x=xt, y=yt)
    args = ["predict", "--features", "96", "--depth", "2", "--activation", "ERF", "--seed", "5", "--data",
            str(tmp_path / "tr.npz"), "--test-data", str(tmp_path / "te.npz"), "--t", "1,inf", "--diag-reg", "0.01"]
    assert main(args + ["--out", str(tmp_path / "p.npz")]) == 0
    with np.load(tmp_path / "p.npz") as p:
        f_train, f_test = p["f_train"], p["f_test"]
    # the same map and solver from Python: features of the built-in network (torchntk kernel's)
    from torchntk.cli._common import builtin_spec

    fm = FeatureMap(builtin_spec(512, 2, "erf", 1.0, 0.1, 1), 96, seed=5)
    ref = mse(fm(torch.from_numpy(x)).ntk, torch.from_numpy(y), diag_reg=0.01)(
        torch.tensor([1.0, float("inf")]), fm(torch.from_numpy(xt)).ntk)
    np.testing.assert_allclose(f_train, ref[0].numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(f_test, ref[1].numpy(), rtol=1e-9, atol=1e-11)
    capsys.readouterr()
    for bad, word in ((["--features", "1"], "--features"), (["--features", "8", "--kernel", "k.npz"], "--kernel"),
                      (["--features", "8", "--activation", "swish"], "activation")):
        assert main(["predict", "--data", str(tmp_path / "tr.npz"), "--out", str(tmp_path / "q.npz")] + bad) == 2
        err = capsys.readouterr().err.strip()
        assert word in err and len(err.splitlines()) == 1, err
