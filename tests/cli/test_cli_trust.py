"""The CLI trusts no file: a store never runs the code it names, damaged or corrupt stores and
every user mistake give one line and exit 2, outputs follow the extension the user gave."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import torchntk
from torchntk.cli import main


def _manifest_doc(store):
    return json.loads((store / "zarr.json").read_text())


def _set_manifest(store, doc):
    (store / "zarr.json").write_text(json.dumps(doc))


def _net(d):
    import importlib.util

    spec = importlib.util.spec_from_file_location("net_for_trust_test", d / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_model().double().eval()


# -- stores are data -----------------------------------------------------------------------------

def test_resume_never_imports_the_model_file_named_in_a_store(data, capsys, one_line_error):
    pytest.importorskip("zarr")
    d = data
    store = d / "k.zarr"
    argv = ["kernel", "--data", str(d / "train.npz"), "--model", str(d / "net.py"), "--tile", "4",
            "--no-progress", "--out", str(store)]
    assert main(argv) == 0
    (store / "_tiles" / "0_1").unlink()                       # an interrupted store
    capsys.readouterr()
    # a planted file, named in the store's manifest: running it would write the marker
    marker = d / "EXECUTED"
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\nimport torch\n"
                               "model = torch.nn.Linear(3, 1)\n")
    doc = _manifest_doc(store)
    doc["attributes"]["torchntk"]["identity"]["model"] = str(d / "evil.py")
    _set_manifest(store, doc)
    assert main(["kernel", "--resume", str(store), "--no-progress"]) == 2
    assert "pass --model" in one_line_error()
    assert main(["kernel", "--resume", str(store), "--model", str(d / "evil.py"), "--no-progress"]) == 2
    assert "sha256" in one_line_error()
    assert not marker.exists()
    # the genuine file (checked against the recorded sha256) resumes; the identity is unchanged
    doc["attributes"]["torchntk"]["identity"]["model"] = str(d / "net.py")
    _set_manifest(store, doc)
    assert main(["kernel", "--resume", str(store), "--model", str(d / "net.py"), "--no-progress"]) == 0
    assert "1 tiles computed" in capsys.readouterr().out
    assert not marker.exists()
    # ... and the empirical store holds 'ntk', readable by predict and spectrum
    x = torch.from_numpy(np.load(d / "train.npz")["x"])
    ntk = torchntk.empirical_ntk(_net(d), x, mode="mean")
    got = torchntk.scale.KernelStore.open(store).to_tensor("ntk")
    torch.testing.assert_close(got, ntk, rtol=1e-12, atol=1e-12)   # same float64 computation, other blocks
    assert main(["predict", "--kernel", str(store), "--data", str(d / "train.npz"), "--t", "inf",
                 "--out", str(d / "p.npz")]) == 0
    p = np.load(d / "p.npz")
    np.testing.assert_allclose(p["f_train"][-1, :, 0], np.load(d / "train.npz")["y"], atol=1e-6)
    assert main(["spectrum", "--kernel", str(store), "--out", str(d / "s.json")]) == 0
    np.testing.assert_allclose(json.loads((d / "s.json").read_text())["lambda_max"],
                               torch.linalg.eigvalsh(ntk).max().item(), rtol=1e-10)


def test_resume_refuses_a_model_file_for_a_built_in_store(data, one_line_error):
    pytest.importorskip("zarr")
    d = data
    assert main(["kernel", "--data", str(d / "train.npz"), "--analytic", "--tile", "4", "--no-progress",
                 "--out", str(d / "k.zarr")]) == 0
    assert main(["kernel", "--resume", str(d / "k.zarr"), "--model", str(d / "net.py")]) == 2
    assert "built-in network" in one_line_error()


def test_damaged_store_is_named_by_predict_and_spectrum_and_repaired_by_resume(data, capsys, one_line_error):
    pytest.importorskip("zarr")
    d = data
    store = d / "k.zarr"
    assert main(["kernel", "--data", str(d / "train.npz"), "--analytic", "--depth", "2", "--tile", "4",
                 "--no-progress", "--out", str(store)]) == 0
    good = torchntk.scale.KernelStore.open(store).to_numpy("ntk")
    chunk = store / "ntk" / "c" / "1" / "2"
    raw = bytearray(chunk.read_bytes())
    raw[:8] = np.float64(1e6).tobytes()
    chunk.write_bytes(bytes(raw))
    capsys.readouterr()
    for argv in (["predict", "--kernel", str(store), "--data", str(d / "train.npz"), "--out", str(d / "p.npz")],
                 ["spectrum", "--kernel", str(store), "--out", str(d / "s.json")]):
        assert main(argv) == 2
        assert "tile (1, 2) of array 'ntk'" in one_line_error()
    assert main(["kernel", "--resume", str(store), "--no-progress"]) == 0
    assert "1 tiles computed (1 of them damaged)" in capsys.readouterr().out
    np.testing.assert_array_equal(torchntk.scale.KernelStore.open(store).to_numpy("ntk"), good)


def test_incomplete_store_message_does_not_advise_an_unchecked_resume(data, capsys, one_line_error):
    pytest.importorskip("zarr")
    d = data
    store = d / "k.zarr"
    assert main(["kernel", "--data", str(d / "train.npz"), "--analytic", "--tile", "4", "--no-progress",
                 "--out", str(store)]) == 0
    (store / "_tiles" / "0_0").unlink()
    capsys.readouterr()
    assert main(["spectrum", "--kernel", str(store)]) == 2
    assert "--model FILE" in one_line_error()


@pytest.mark.parametrize("corruption", ["data_type", "no_n1", "not_json", "no_sha"])
def test_corrupt_metadata_on_resume_is_one_line(data, capsys, one_line_error, corruption):
    pytest.importorskip("zarr")
    d = data
    store = d / "k.zarr"
    extra = ["--model", str(d / "net.py")] if corruption == "no_sha" else ["--analytic"]
    assert main(["kernel", "--data", str(d / "train.npz"), *extra, "--tile", "4", "--no-progress",
                 "--out", str(store)]) == 0
    doc = _manifest_doc(store)
    manifest = doc["attributes"]["torchntk"]
    if corruption == "data_type":
        manifest["identity"]["data"] = 5
    elif corruption == "no_n1":
        del manifest["n1"]
    elif corruption == "no_sha":
        del manifest["identity"]["model_sha256"]
    _set_manifest(store, doc)
    if corruption == "not_json":
        (store / "zarr.json").write_text("{ this is not json")
    capsys.readouterr()
    argv = ["kernel", "--resume", str(store), "--no-progress"] + (extra if corruption == "no_sha" else [])
    assert main(argv) == 2
    assert any(w in one_line_error() for w in ("corrupt", "not a torchntk kernel store", "no sha256"))


# -- user mistakes: one line, exit 2 -------------------------------------------------------------

@pytest.mark.parametrize("case", ["wrong_input_size", "nan_kernel", "depth_with_model", "seed_with_module",
                                  "top_negative", "plot_missing_dir", "plot_format", "spectrum_out",
                                  "predict_out", "kernel_out_dir"])
def test_user_mistakes_one_line_exit_2(data, one_line_error, case):
    d = data
    np.savez(d / "k.npz", ntk=np.eye(12))
    if case == "wrong_input_size":
        (d / "wide.py").write_text("from torchntk.nn import MLP\nmodel = MLP(5, [8], 1)\n")
        argv = ["kernel", "--data", str(d / "train.npz"), "--model", str(d / "wide.py"), "--out", str(d / "o.npz")]
        match = "cannot take the inputs of --data"
    elif case == "nan_kernel":
        np.savez(d / "nan.npz", ntk=np.full((12, 12), np.nan))
        argv = ["spectrum", "--kernel", str(d / "nan.npz"), "--out", str(d / "s.json")]
        match = "contains NaN or Inf"
    elif case == "depth_with_model":
        argv = ["kernel", "--data", str(d / "train.npz"), "--model", str(d / "net.py"), "--depth", "5",
                "--out", str(d / "o.npz")]
        match = "--depth shapes the built-in network only"
    elif case == "seed_with_module":
        argv = ["kernel", "--data", str(d / "train.npz"), "--model", str(d / "net.py"), "--seed", "3",
                "--out", str(d / "o.npz")]
        match = "drop --seed"
    elif case == "top_negative":
        argv = ["spectrum", "--kernel", str(d / "k.npz"), "--top", "-3", "--out", str(d / "s.json")]
        match = "--top must be a positive"
    elif case == "plot_missing_dir":
        argv = ["spectrum", "--kernel", str(d / "k.npz"), "--out", str(d / "s.json"),
                "--plot", str(d / "nonexistent" / "dir" / "s.png")]
        match = "does not exist"
    elif case == "plot_format":
        argv = ["spectrum", "--kernel", str(d / "k.npz"), "--out", str(d / "s.json"), "--plot", str(d / "s.gif")]
        match = "--plot must end in"
    elif case == "spectrum_out":
        argv = ["spectrum", "--kernel", str(d / "k.npz"), "--out", str(d / "s.txt")]
        match = "--out must end in .json"
    elif case == "predict_out":
        argv = ["predict", "--kernel", str(d / "k.npz"), "--data", str(d / "train.npz"), "--out", str(d / "p.txt")]
        match = "--out must end in"
    else:
        argv = ["kernel", "--data", str(d / "train.npz"), "--out", str(d / "nodir" / "k.npz")]
        match = "does not exist"
    assert main(argv) == 2
    assert match in one_line_error()
    assert not (d / "nonexistent").exists() and not (d / "nodir").exists()
    assert not any((d / n).exists() for n in ("o.npz", "s.json", "p.txt", "s.txt", "s.gif"))


def test_unreachable_scheduler_is_one_line_and_leaves_no_store(data, one_line_error):
    dask = pytest.importorskip("dask")
    pytest.importorskip("dask.distributed")
    pytest.importorskip("zarr")
    d = data
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert main(["kernel", "--data", str(d / "train.npz"), "--analytic", "--no-progress", "--executor", "dask",
                     "--scheduler", "tcp://127.0.0.1:9", "--out", str(d / "k.zarr")]) == 2
    assert "cannot connect to the Dask scheduler" in one_line_error()
    assert not (d / "k.zarr").exists()


# -- outputs follow the extension --------------------------------------------------------------

def test_predict_outputs_follow_the_extension(data, capsys):
    d = data
    assert main(["kernel", "--data", str(d / "train.npz"), "--test", str(d / "test.npz"), "--analytic",
                 "--out", str(d / "k.npz")]) == 0
    base = ["predict", "--kernel", str(d / "k.npz"), "--data", str(d / "train.npz"), "--t", "0,2,inf"]
    for ext in ("npz", "pt", "json", "csv"):
        assert main(base + ["--out", str(d / f"P.{ext}")]) == 0
        assert f"wrote {d / f'P.{ext}'}" in capsys.readouterr().out
    assert sorted(p.name for p in d.glob("P.*")) == ["P.csv", "P.json", "P.npz", "P.pt"]
    ref = np.load(d / "P.npz")
    pt = torch.load(d / "P.pt")
    np.testing.assert_array_equal(pt["f_train"].numpy(), ref["f_train"])
    np.testing.assert_array_equal(pt["f_test"].numpy(), ref["f_test"])

    def no_constants(name):
        raise AssertionError(f"invalid JSON constant {name}")

    doc = json.loads((d / "P.json").read_text(), parse_constant=no_constants)   # RFC 8259: no Infinity
    assert doc["t"] == [0.0, 2.0, "inf"]
    np.testing.assert_allclose(doc["f_train"], ref["f_train"], rtol=1e-15)
    with open(d / "P.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * (12 + 5)
    got = np.array([float(r["prediction"]) for r in rows if r["split"] == "test"]).reshape(3, 5, 1)
    np.testing.assert_array_equal(got, ref["f_test"])          # repr round-trips float64 exactly
    assert [float(r["t"]) for r in rows[::12 + 0][:1]] == [0.0] and rows[-1]["t"] == "inf"


def test_spectrum_plot_jpeg_is_a_jpeg_and_json_is_strict(data):
    pytest.importorskip("matplotlib")
    d = data
    np.savez(d / "k.npz", ntk=np.diag([3.0, 2.0, 0.0, 1.0]))    # singular: condition number inf
    assert main(["spectrum", "--kernel", str(d / "k.npz"), "--out", str(d / "s.json"),
                 "--plot", str(d / "s.jpg")]) == 0
    assert (d / "s.jpg").read_bytes()[:3] == b"\xff\xd8\xff"         # JPEG magic, not PNG
    text = (d / "s.json").read_text()
    doc = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(c)))
    assert doc["condition_number"] == "inf" and doc["eigenvalues"] == [3.0, 2.0, 1.0, 0.0]
    assert main(["spectrum", "--kernel", str(d / "k.npz"), "--out", str(d / "s.json"),
                 "--plot", str(d / "s.png"), "--force"]) == 0
    assert (d / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
