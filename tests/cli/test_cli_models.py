"""Model files on the command line: ``--analytic`` through ``torchntk.layers.from_module``, the
Python API's model checks (a train-mode model is refused with the same message)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchntk
from torchntk.cli import main
from torchntk.errors import ModelStateError
from torchntk.lab.reference import relu_kernels

_RELU_NET = ("import torch\nfrom torch import nn\n"
             "model = nn.Sequential(nn.Linear(3, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))\n")


def test_analytic_model_file_goes_through_from_module(data, capsys):
    d = data
    (d / "relu.py").write_text(_RELU_NET)
    assert main(["kernel", "--data", str(d / "train.npz"), "--test", str(d / "test.npz"), "--model",
                 str(d / "relu.py"), "--analytic", "--w-std", "1.5", "--b-std", "0.2", "--out", str(d / "k.npz")]) == 0
    assert "from_module" in capsys.readouterr().out        # the converted spec is printed
    k = np.load(d / "k.npz")
    x, xt = np.load(d / "train.npz")["x"], np.load(d / "test.npz")["x"]
    # the independent arc-cosine recursion of lab.reference (numpy, arccos) against the layers'
    # atan2 form: on the diagonal (cos t = 1) arccos turns a round-off of 1e-16 in cos t into
    # sqrt(2e-16) ~ 1.4e-8 in t, so the two agree to ~1e-8 relative there, to 1e-14 elsewhere
    sigma, theta = relu_kernels(x, depth=3, W_std=1.5, b_std=0.2)
    np.testing.assert_allclose(k["ntk"], theta, rtol=1e-7)
    np.testing.assert_allclose(k["nngp"], sigma, rtol=1e-7)
    _, theta_t = relu_kernels(xt, x, depth=3, W_std=1.5, b_std=0.2)
    np.testing.assert_allclose(k["ntk_test_train"], theta_t, rtol=1e-7)


def test_analytic_model_file_without_a_rule_is_one_line(data, one_line_error):
    d = data
    (d / "pool.py").write_text("from torch import nn\nmodel = nn.Sequential(nn.Linear(3, 8), nn.Softmax(dim=1), nn.Linear(8, 1))\n")
    assert main(["kernel", "--data", str(d / "train.npz"), "--model", str(d / "pool.py"), "--analytic",
                 "--out", str(d / "k.npz")]) == 2
    assert "Softmax" in one_line_error()
    assert not (d / "k.npz").exists()


def test_scales_without_analytic_are_refused_with_a_model(data, one_line_error):
    d = data
    assert main(["kernel", "--data", str(d / "train.npz"), "--model", str(d / "net.py"), "--b-std", "0.3",
                 "--out", str(d / "k.npz")]) == 2
    assert "--b-std shapes the built-in network only" in one_line_error()


@pytest.mark.parametrize("layer", ["nn.BatchNorm1d(16)", "nn.Dropout(0.5)"])
def test_train_mode_model_is_refused_with_the_python_api_message(data, one_line_error, layer):
    d = data
    src = ("import torch\nfrom torch import nn\ntorch.manual_seed(0)\n"
           f"model = nn.Sequential(nn.Linear(3, 16), {layer}, nn.ReLU(), nn.Linear(16, 1))\n")
    (d / "bn.py").write_text(src)
    ns: dict = {}
    exec(src, ns)
    x = torch.from_numpy(np.load(d / "train.npz")["x"])
    with pytest.raises(ModelStateError) as api:
        torchntk.empirical_ntk(ns["model"].double(), x)
    assert main(["kernel", "--data", str(d / "train.npz"), "--model", str(d / "bn.py"), "--out", str(d / "k.npz")]) == 2
    assert str(api.value) in one_line_error()
    assert not (d / "k.npz").exists()
    # in eval mode the same model is accepted, and its kernel is the Python API's
    (d / "bn.py").write_text(src + "model.eval()\n")
    assert main(["kernel", "--data", str(d / "train.npz"), "--model", str(d / "bn.py"), "--out", str(d / "k.npz")]) == 0
    ns = {}
    exec(src + "model.eval()\n", ns)
    expected = torchntk.empirical_ntk(ns["model"].double(), x, mode="mean")
    # the same float64 computation on the same weights: round-off only
    np.testing.assert_allclose(np.load(d / "k.npz")["ntk"], expected.numpy(), rtol=1e-12, atol=1e-13)


_TOKEN_NET = (
    "import torch\nfrom torch import nn\n"
    "class Tokens(nn.Module):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        torch.manual_seed(0)\n"
    "        self.emb, self.mix, self.head = nn.Embedding(50, 8), nn.Linear(8, 8), nn.Linear(8, 3)\n"
    "    def forward(self, ids):\n"
    "        return self.head(torch.tanh(self.mix(self.emb(ids))).mean(1))\n"
    "model = Tokens()\n"
)


def _token_files(d):
    """The token model file ``tok.py`` and ``ids.npz`` (10 sequences of 6 ids) in ``d``; the ids."""
    (d / "tok.py").write_text(_TOKEN_NET)
    ids = np.random.default_rng(0).integers(0, 50, (10, 6))
    np.savez(d / "ids.npz", x=ids)
    return ids


def test_token_ids_stay_integers_and_a_model_file_store_resumes(data, capsys):
    # a language-model-style file: integer inputs go to nn.Embedding as int64 (not float64), and
    # the tiled store of its empirical NTK resumes a lost tile from the same model file
    pytest.importorskip("zarr")
    d = data
    ids = _token_files(d)
    store = d / "k.zarr"
    argv = ["kernel", "--model", str(d / "tok.py"), "--data", str(d / "ids.npz"), "--tile", "4", "--no-progress"]
    assert main([*argv, "--out", str(store)]) == 0
    ns: dict = {}
    exec(compile(_TOKEN_NET, "tok.py", "exec"), ns)  # the test's own copy of the file's model
    want = torchntk.empirical_ntk(ns["model"].double(), torch.as_tensor(ids), mode="mean").numpy()
    got = torchntk.scale.KernelStore.open(store).to_numpy("ntk")
    # tiles against one whole float64 call: two code paths, rounding only (1e-12 of the kernel)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
    (store / "ntk" / "c" / "1" / "2").unlink()  # a tile lost (an interrupted run)
    capsys.readouterr()
    assert main(["kernel", "--resume", str(store), "--model", str(d / "tok.py"), "--no-progress"]) == 0
    assert "1 tiles computed" in capsys.readouterr().out
    np.testing.assert_allclose(torchntk.scale.KernelStore.open(store).to_numpy("ntk"), got, rtol=0, atol=1e-12 * np.abs(want).max())


def test_sketched_kernel_of_a_model_file_in_tiles_resumes_with_the_same_projection(data, capsys, one_line_error):
    # --sketch K: every tile projects its rows with the same draw, so the store is the Python
    # sketched kernel (up to rounding), and a lost tile is recomputed with that draw on resume
    pytest.importorskip("zarr")
    d = data
    ids = _token_files(d)
    store = d / "s.zarr"
    argv = ["kernel", "--model", str(d / "tok.py"), "--data", str(d / "ids.npz"), "--no-progress",
            "--sketch", "256", "--sketch-seed", "3"]
    assert main([*argv, "--tile", "4", "--out", str(store)]) == 0
    ns: dict = {}
    exec(compile(_TOKEN_NET, "tok.py", "exec"), ns)  # the test's own copy of the file's model
    want = torchntk.empirical_ntk(ns["model"].double(), torch.as_tensor(ids), mode="mean", sketch=256, seed=3).numpy()
    exact = torchntk.empirical_ntk(ns["model"].double(), torch.as_tensor(ids), mode="mean").numpy()
    got = torchntk.scale.KernelStore.open(store).to_numpy("ntk")
    # tiles against one whole call: the same projection, products in other blocks (rounding only)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
    assert 0 < np.abs(got - exact).max() < 0.5 * np.abs(exact).max()  # an estimate, not the exact kernel
    (store / "ntk" / "c" / "1" / "2").unlink()  # a tile lost (an interrupted run)
    capsys.readouterr()
    assert main(["kernel", "--resume", str(store), "--model", str(d / "tok.py"), "--no-progress"]) == 0
    assert "1 tiles computed" in capsys.readouterr().out
    np.testing.assert_allclose(torchntk.scale.KernelStore.open(store).to_numpy("ntk"), got, rtol=0,
                               atol=1e-12 * np.abs(want).max())
    # an .npz output: the same estimate
    assert main([*argv, "--out", str(d / "s.npz")]) == 0
    np.testing.assert_allclose(np.load(d / "s.npz")["ntk"], want, rtol=0, atol=1e-12 * np.abs(want).max())
    capsys.readouterr()
    for bad, needle in ((["--sketch", "3"], "even"), (["--sketch-seed", "1"], "add --sketch"),
                        (["--sketch", "64", "--analytic"], "--analytic")):
        base = ["kernel", "--model", str(d / "tok.py"), "--data", str(d / "ids.npz"), "--out", str(d / "x.npz")]
        assert main([*base, *bad]) == 2
        assert needle in one_line_error()
    assert main(["kernel", "--resume", str(store), "--sketch", "64"]) == 2
    assert "--sketch" in one_line_error()
