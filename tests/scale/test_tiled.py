"""tiled_kernel: tiles equal the monolithic kernel; the store, its manifest and its checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from torchntk.errors import InvalidArgumentError, ShapeError, StoreError
from torchntk.scale import KernelStore, kernel_fn_from_spec, resume, tiled_kernel, with_identity
from ._reference import RecordingKernel, ReluFCKernel, assert_same_kernel


def _x(n, d=40, seed=0):
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _outer_full(a, b):
    """A deterministic 'full' kernel (r, c, O, O): K[i, j, p, q] = tanh(a_i)[p] * b_j[q] + a_i.b_j."""
    dot = (a[:, None, :] * b[None, :, :]).sum(-1)
    return torch.tanh(a)[:, None, :3, None] * torch.tanh(b)[None, :, None, :3] + dot[:, :, None, None] * (
        torch.eye(3, dtype=a.dtype)
    )


@pytest.mark.parametrize("tile", [64, 192])
def test_tiled_equals_monolithic(tile):
    # tiles and one call are two code paths (other BLAS shapes): equal up to their rounding
    x = _x(320)
    fn = ReluFCKernel(depth=3, block=None)
    mono = fn(x, x)
    tiled = tiled_kernel(fn, x, block_size=tile, progress=False)
    assert set(tiled) == {"nngp", "ntk"}
    for name in mono:
        assert tiled[name].dtype == torch.float64
        assert_same_kernel(tiled[name], mono[name])
        t = tiled[name]
        # a lower tile is the mirror of its upper one: the same bytes (a diagonal tile is the
        # kernel function's own, symmetric to its rounding)
        assert torch.equal(t[tile:2 * tile, :tile], t[:tile, tile:2 * tile].T)
    x2 = _x(150, seed=1)
    mono2 = fn(x, x2)
    tiled2 = tiled_kernel(fn, x, x2, block_size=tile, progress=False)
    for name in mono2:
        assert_same_kernel(tiled2[name], mono2[name], symmetric=False)


def test_full_kernel_mirrors_output_axes_and_bare_tensor_output():
    x = _x(50, d=5)
    mono = _outer_full(x, x)
    tiled = tiled_kernel(_outer_full, x, block_size=16, progress=False)
    assert isinstance(tiled, torch.Tensor) and tiled.shape == (50, 50, 3, 3)
    # sums of 5 products per entry, in other block shapes: a few ulp of |a| |b|
    torch.testing.assert_close(tiled, mono, rtol=1e-13, atol=1e-13 * float(mono.abs().max()))
    assert torch.equal(tiled, tiled.permute(1, 0, 3, 2))  # mirrored tiles


def test_store_round_trip_and_manifest(tmp_path):
    x = _x(300)
    fn = ReluFCKernel(depth=3)
    ident = {"command": "kernel", "argv": ["--depth", "3"], "n": 300}
    rec = RecordingKernel(fn, x)
    store = tiled_kernel(rec, x, out=tmp_path / "k.zarr", block_size=64, identity=ident, progress=False)
    assert store.last_run == {"computed": 15, "skipped": 0, "repaired": 0}
    assert store.is_complete and store.missing_tiles() == []
    again = KernelStore.open(tmp_path / "k.zarr")
    m = again.manifest
    assert m["identity"] == ident
    assert m["kernel"] == fn.torchntk_identity
    assert m["tile"] == 64 and m["symmetric"] is True
    assert m["arrays"]["ntk"] == {"shape": [300, 300], "dtype": "float64"}
    assert {"torchntk", "torch", "zarr"} <= set(m["versions"])
    json.dumps(m)  # plain JSON
    mono = ReluFCKernel(depth=3, block=None)(x, x)
    both = again.to_tensor("all")
    for k in mono:
        assert_same_kernel(both[k], mono[k])
    # the bytes computed for the store, read back: bit for bit (not against an in-memory run,
    # another code path)
    computed = rec.kernel()
    assert all(torch.equal(both[k], computed[k]) for k in computed)
    assert torch.equal(again.to_tensor(), computed["ntk"])  # default: the last array
    np.testing.assert_array_equal(again.diagonal("nngp"), torch.diagonal(computed["nngp"]).numpy())
    # lower-triangle chunks are never written: they are mirrored on read
    assert np.isnan(again._array("ntk")[200:, :64]).all()
    assert np.array_equal(again.read_tile("ntk", 3, 0), computed["ntk"][192:256, :64].numpy())
    # a second call resumes a complete store: nothing computed
    calls = []
    counting = with_identity(lambda a, b: calls.append(1) or fn(a, b), fn.torchntk_identity)
    store2 = tiled_kernel(counting, x, out=tmp_path / "k.zarr", progress=False)
    assert store2.last_run == {"computed": 0, "skipped": 15, "repaired": 0}
    assert len(calls) == 1  # only the probe


def test_changed_inputs_spec_or_settings_are_refused(tmp_path):
    x = _x(200)
    path = tmp_path / "k.zarr"
    tiled_kernel(ReluFCKernel(depth=3), x, out=path, block_size=64, identity={"run": 1}, progress=False)
    x_changed = x.clone()
    x_changed[17, 3] += 1e-9
    with pytest.raises(StoreError, match=r"inputs x1 \(data hash\)"):
        resume(path, ReluFCKernel(depth=3), x_changed, progress=False)
    with pytest.raises(StoreError, match=r"kernel function \(spec or model hash\)"):
        resume(path, ReluFCKernel(depth=4), x, progress=False)
    with pytest.raises(StoreError, match="tile size"):
        resume(path, ReluFCKernel(depth=3), x, block_size=32, progress=False)
    with pytest.raises(StoreError, match="user-supplied identity"):
        resume(path, ReluFCKernel(depth=3), x, identity={"run": 2}, progress=False)
    with pytest.raises(StoreError, match="inputs x2"):
        resume(path, ReluFCKernel(depth=3), x, _x(10, seed=5), progress=False)
    # same name and identity, other values: caught by the probe
    liar = with_identity(lambda a, b: ReluFCKernel(depth=4)(a, b), ReluFCKernel(depth=3).torchntk_identity)
    with pytest.raises(StoreError, match="probe block"):
        resume(path, liar, x, progress=False)
    with pytest.raises(StoreError, match="exists"):
        tiled_kernel(ReluFCKernel(depth=3), x, out=path, resume=False, progress=False)
    with pytest.raises(StoreError, match="no store"):
        resume(tmp_path / "nothing.zarr", ReluFCKernel(), x)
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a torchntk kernel store"):
        KernelStore.open(tmp_path / "plain")
    # the right call still resumes
    assert resume(path, ReluFCKernel(depth=3), x, progress=False).last_run["computed"] == 0


def test_bad_arguments():
    x = _x(20)
    with pytest.raises(InvalidArgumentError, match="kernel_fn"):
        tiled_kernel("not a function", x)
    with pytest.raises(ShapeError, match="feature shape"):
        tiled_kernel(ReluFCKernel(), x, _x(5, d=3))
    with pytest.raises(ShapeError, match="expected"):
        tiled_kernel(lambda a, b: a @ b.T[:, :1], x, _x(5), progress=False)
    with pytest.raises(ShapeError, match="must return"):
        tiled_kernel(lambda a, b: [a], x, progress=False)
    with pytest.raises(InvalidArgumentError, match="executor"):
        tiled_kernel(ReluFCKernel(), x, executor="spark")
    with pytest.raises(InvalidArgumentError, match="block_size"):
        tiled_kernel(ReluFCKernel(), x, block_size=0)
    with pytest.raises(StoreError, match="JSON"):
        tiled_kernel(ReluFCKernel(), x, out="/tmp/never.zarr", identity={"f": object()})


def test_interrupted_store_reports_missing_tiles_and_refuses_reads(tmp_path):
    x = _x(256)
    fn = ReluFCKernel(depth=2)
    path = tmp_path / "k.zarr"
    store = tiled_kernel(fn, x, out=path, block_size=64, progress=False)
    # simulate a loss: remove two markers (the chunk data stays but is not trusted)
    for bi, bj in [(0, 1), (2, 3)]:
        (path / "_tiles" / f"{bi}_{bj}").unlink()
    store = KernelStore.open(path)
    assert store.missing_tiles() == [(0, 1), (2, 3)]
    with pytest.raises(StoreError, match="not computed"):
        store.read_tile("ntk", 1, 0)
    kept = {t: store.read_tile("ntk", *t) for t in store.done_tiles()}
    done = resume(path, fn, x, progress=False)
    assert done.last_run == {"computed": 2, "skipped": 8, "repaired": 0}
    # the tiles that were there are not computed again: the same bytes re-read
    for t, before in kept.items():
        np.testing.assert_array_equal(done.read_tile("ntk", *t), before)
    # a resumed store against the in-memory run (another code path) and the closed form: to rounding
    assert_same_kernel(done.to_tensor("ntk"), tiled_kernel(fn, x, block_size=64, progress=False)["ntk"])
    assert_same_kernel(done.to_tensor("ntk"), ReluFCKernel(depth=2, block=None)(x, x)["ntk"])


def test_spec_kernel_fn_reproduces_the_spec():
    L = pytest.importorskip("torchntk.layers")
    if not hasattr(L, "Relu"):
        pytest.skip("torchntk.layers.Relu not available yet")
    spec = L.serial(L.Dense(1, b_std=0.1), L.Relu(), L.Dense(1, b_std=0.1), L.Relu(), L.Dense(1))
    x = _x(300, d=8)
    fn = kernel_fn_from_spec(spec)
    tiled = tiled_kernel(fn, x, block_size=64, progress=False)
    # the spec's own blocks of the same size: another code path (one call per tile, against
    # the spec's blocks and threads), equal up to rounding
    blocked = spec.kernel(x, block_size=64)
    assert_same_kernel(tiled["ntk"], blocked.ntk)
    assert_same_kernel(tiled["nngp"], blocked.nngp)
    # against the unblocked kernel: equal up to the BLAS rounding of x . x' (the spec multiplies
    # with one BLAS call whose bits depend on the block shape; on the diagonal the arc-cosine
    # amplifies a rounding of q12 near sqrt(q11 q22) to about sqrt(eps))
    mono = spec.kernel(x)
    off = ~torch.eye(300, dtype=torch.bool)
    torch.testing.assert_close(tiled["ntk"][off], mono.ntk[off], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tiled["ntk"], mono.ntk, rtol=1e-7, atol=1e-7)
    x2 = _x(100, d=8, seed=3)
    torch.testing.assert_close(tiled_kernel(fn, x, x2, block_size=64, progress=False)["nngp"],
                               spec.kernel(x, x2).nngp, rtol=1e-7, atol=1e-7)
    # identity records the spec; another spec changes it
    other = kernel_fn_from_spec(L.serial(L.Dense(1, b_std=0.2), L.Relu(), L.Dense(1)))
    assert fn.torchntk_identity["spec"] != other.torchntk_identity["spec"]
    assert kernel_fn_from_spec(spec, which="ntk")(x[:3], x[:4]).keys() == {"ntk"}


def test_compressed_store_and_optional_dependency_message(tmp_path, monkeypatch):
    x = _x(130)
    fn = ReluFCKernel(depth=2)
    rec = RecordingKernel(fn, x)
    store = tiled_kernel(rec, x, out=tmp_path / "z.zarr", block_size=64, compressor="zstd", progress=False)
    # the bytes computed for the store, compressed and read back: bit for bit
    assert torch.equal(store.to_tensor("nngp"), rec.kernel()["nngp"])
    mem = tiled_kernel(fn, x, block_size=64, progress=False)
    with pytest.raises(InvalidArgumentError, match="compressor"):
        tiled_kernel(fn, x, out=tmp_path / "bad.zarr", compressor="gzip9", progress=False)
    import sys

    monkeypatch.setitem(sys.modules, "zarr", None)  # as if zarr were not installed
    with pytest.raises(ImportError, match=r"pip install 'torchntk\[scale\]'"):
        tiled_kernel(fn, x, out=tmp_path / "nozarr.zarr", progress=False)
    # the in-memory path does not need zarr (the same call repeated: the same bytes)
    assert torch.equal(tiled_kernel(fn, x, block_size=64, progress=False)["ntk"], mem["ntk"])
