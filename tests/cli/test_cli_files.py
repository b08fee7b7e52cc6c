"""Files that match: every kernel file records a fingerprint of its inputs and ``predict`` /
``spectrum`` refuse other inputs; outputs never overwrite without ``--force``; ``--resume``
refuses the flags it would ignore."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from torchntk.cli import main


def _kernel(d, name="k.npz", *extra):
    assert main(["kernel", "--data", str(d / "train.npz"), "--test", str(d / "test.npz"), "--analytic",
                 "--depth", "2", "--out", str(d / name), *extra]) == 0


def _predict(d, kernel="k.npz", train="train.npz", test="test.npz", out="p.npz"):
    return main(["predict", "--kernel", str(d / kernel), "--data", str(d / train), "--test-data", str(d / test),
                 "--t", "inf", "--out", str(d / out)])


@pytest.mark.parametrize("fmt", ["npz", "pt"])
def test_predict_refuses_a_kernel_of_other_test_inputs_of_the_same_size(data, one_line_error, fmt):
    d = data
    _kernel(d, f"k.{fmt}")
    rng = np.random.default_rng(7)
    xt = rng.normal(size=(5, 3))                  # other test inputs, same size: a wrong test MSE before
    np.savez(d / "testy.npz", x=xt, y=np.sin(xt[:, 0]))
    assert _predict(d, f"k.{fmt}", test="testy.npz") == 2
    err = one_line_error()
    assert "computed on other test inputs than --test-data" in err and "testy.npz" in err
    x = rng.normal(size=(12, 3))                  # other training inputs, same size
    np.savez(d / "trainy.npz", x=x, y=np.sin(x[:, 0]))
    assert _predict(d, f"k.{fmt}", train="trainy.npz") == 2
    assert "computed on other training inputs than --data" in one_line_error()
    assert not (d / "p.npz").exists()
    assert _predict(d, f"k.{fmt}") == 0           # the inputs it was computed on


def test_fingerprint_is_the_sha256_of_the_float64_inputs(data):
    import hashlib

    d = data
    _kernel(d)
    with np.load(d / "k.npz") as f:
        record = json.loads(str(f["torchntk_inputs"]))
    for split, name in (("train", "train.npz"), ("test", "test.npz")):
        x = np.ascontiguousarray(np.load(d / name)["x"], dtype=np.float64)
        assert record[split]["sha256"] == hashlib.sha256(x.tobytes()).hexdigest()
        assert record[split]["shape"] == list(x.shape)


def test_a_store_is_checked_against_the_inputs_it_records(data, one_line_error):
    pytest.importorskip("zarr")
    d = data
    assert main(["kernel", "--data", str(d / "train.npz"), "--analytic", "--tile", "4", "--no-progress",
                 "--out", str(d / "k.zarr")]) == 0
    x = np.random.default_rng(8).normal(size=(12, 3))
    np.savez(d / "trainy.npz", x=x, y=np.sin(x[:, 0]))
    assert main(["predict", "--kernel", str(d / "k.zarr"), "--data", str(d / "trainy.npz"), "--out", str(d / "p.npz")]) == 2
    assert "other training inputs" in one_line_error()
    assert main(["spectrum", "--kernel", str(d / "k.zarr"), "--data", str(d / "trainy.npz"), "--out", str(d / "s.json")]) == 2
    assert "other training inputs" in one_line_error()
    assert main(["spectrum", "--kernel", str(d / "k.zarr"), "--data", str(d / "train.npz"), "--out", str(d / "s.json")]) == 0


@pytest.mark.parametrize("features", [False, True])
def test_a_builtin_split_other_than_the_kernels_is_refused(data, one_line_error, features):
    d = data
    extra = ["--features", "16"] if features else []     # a features file is checked the same way
    assert main(["kernel", "--data", "circle", "--analytic", *extra, "--out", str(d / "k.npz")]) == 0
    assert main(["predict", "--kernel", str(d / "k.npz"), "--data", "circle", "--data-seed", "1",
                 "--out", str(d / "p.npz")]) == 2
    assert "other training inputs" in one_line_error()
    assert main(["predict", "--kernel", str(d / "k.npz"), "--data", "circle", "--out", str(d / "p.npz")]) == 0


def test_a_kernel_without_fingerprint_is_used_with_a_warning(data, capsys):
    d = data
    x = torch.from_numpy(np.load(d / "train.npz")["x"])
    K = (x @ x.T + 1.0).numpy()                   # written from Python: no record
    np.savez(d / "k.npz", ntk=K)
    assert main(["predict", "--kernel", str(d / "k.npz"), "--data", str(d / "train.npz"), "--t", "inf",
                 "--out", str(d / "p.npz")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("torchntk: warning:") and len(err.strip().splitlines()) == 1
    assert "records no fingerprint" in err
    y = np.load(d / "train.npz")["y"]
    # rank-4 kernel on 12 points: t = inf projects y on its range (closed form, least squares)
    proj = K @ np.linalg.lstsq(K, y, rcond=None)[0]
    np.testing.assert_allclose(np.load(d / "p.npz")["f_train"][-1, :, 0], proj, atol=1e-8)


@pytest.mark.parametrize("command", ["kernel", "predict", "spectrum", "plot"])
def test_outputs_never_overwrite_without_force(data, monkeypatch, one_line_error, capsys, command):
    d = data
    monkeypatch.chdir(d)
    _kernel(d, "k0.npz")
    argv = {"kernel": ["kernel", "--data", "train.npz", "--analytic"],
            "predict": ["predict", "--kernel", "k0.npz", "--data", "train.npz", "--t", "1"],
            "spectrum": ["spectrum", "--kernel", "k0.npz"],
            "plot": ["spectrum", "--kernel", "k0.npz", "--out", "s.json", "--plot", "s.png"]}[command]
    default = {"kernel": "kernel.npz", "predict": "predictions.npz", "spectrum": "spectrum.json", "plot": "s.png"}[command]
    if command == "plot":
        pytest.importorskip("matplotlib")
    (d / default).write_bytes(b"precious")
    assert main(argv) == 2
    assert "exists: pass --force" in one_line_error()
    assert (d / default).read_bytes() == b"precious"
    assert main(argv + ["--force"]) == 0
    assert (d / default).read_bytes() != b"precious"


def test_force_on_a_store_recomputes_it_and_refuses_other_folders(data, capsys, one_line_error):
    pytest.importorskip("zarr")
    d = data
    base = ["kernel", "--data", str(d / "train.npz"), "--analytic", "--tile", "4", "--no-progress"]
    assert main(base + ["--depth", "2", "--out", str(d / "k.zarr")]) == 0
    assert main(base + ["--depth", "3", "--out", str(d / "k.zarr"), "--force"]) == 0
    assert main(["kernel", "--data", str(d / "train.npz"), "--analytic", "--depth", "3", "--out", str(d / "k.npz")]) == 0
    import torchntk

    got = torchntk.scale.KernelStore.open(d / "k.zarr").to_numpy("ntk")
    # the store and the in-memory kernel: the same float64 recursion per tile
    np.testing.assert_allclose(got, np.load(d / "k.npz")["ntk"], rtol=1e-12)
    # a request that fails (no such data file) leaves the store alone, --force or not
    assert main(["kernel", "--data", str(d / "nope.npz"), "--analytic", "--out", str(d / "k.zarr"), "--force"]) == 2
    assert (d / "k.zarr" / "zarr.json").is_file()
    (d / "folder.zarr").mkdir()
    (d / "folder.zarr" / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert main(base + ["--out", str(d / "folder.zarr"), "--force"]) == 2
    assert "not a kernel store" in one_line_error()
    assert (d / "folder.zarr" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("flag", [["--width", "64"], ["--data", "x.npz"], ["--mode", "full"], ["--out", "o.zarr"],
                                  ["--memory", "1GiB"], ["--analytic"]])
def test_resume_refuses_flags_it_would_ignore(data, capsys, one_line_error, flag):
    pytest.importorskip("zarr")
    d = data
    assert main(["kernel", "--data", str(d / "train.npz"), "--tile", "4", "--no-progress", "--width", "16",
                 "--out", str(d / "k.zarr")]) == 0
    (d / "k.zarr" / "_tiles" / "0_1").unlink()
    capsys.readouterr()
    assert main(["kernel", "--resume", str(d / "k.zarr"), "--no-progress", *flag]) == 2
    err = one_line_error()
    assert f"{flag[0]} conflicts with --resume" in err
    if flag[0] == "--width":
        assert "width=16" in err
    assert main(["kernel", "--resume", str(d / "k.zarr"), "--no-progress"]) == 0
