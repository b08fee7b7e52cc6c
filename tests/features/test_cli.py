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
