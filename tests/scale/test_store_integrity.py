"""Stores are checked data: damaged tiles are named by every reader and recomputed by resume;
one writer at a time (lock file, stale-lock recovery, racing creators); corrupt manifests and an
unreachable scheduler give StoreError / InvalidArgumentError, never a numpy error or an empty store."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from torchntk.errors import InvalidArgumentError, StoreError
from torchntk.scale import KernelOperator, KernelStore, resume, tiled_kernel
from torchntk.scale._lock import StoreLock, lock_path
from ._reference import ReluFCKernel, assert_same_kernel

pytest.importorskip("zarr")

N, TILE = 96, 32  # a 3 x 3 grid: 6 upper tiles


def _x(n=N, seed=0):
    return torch.randn(n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _chunk(path: Path, name: str, bi: int, bj: int) -> Path:
    return path / name / "c" / str(bi) / str(bj)


@pytest.fixture()
def store_path(tmp_path):
    path = tmp_path / "k.zarr"
    tiled_kernel(ReluFCKernel(depth=2), _x(), out=path, block_size=TILE, progress=False)
    return path


def _damage(path: Path, how: str) -> None:
    """Damage tile (0, 1) of 'ntk': delete, alter one entry, or truncate its chunk."""
    chunk = _chunk(path, "ntk", 0, 1)
    if how == "deleted":
        chunk.unlink()
    elif how == "altered":
        raw = bytearray(chunk.read_bytes())
        raw[8 * 5:8 * 6] = np.float64(1e6).tobytes()  # one entry set to 1e6
        chunk.write_bytes(bytes(raw))
    else:
        with open(chunk, "r+b") as fh:
            fh.truncate(100)


@pytest.mark.parametrize("how", ["deleted", "altered", "truncated"])
def test_damaged_tile_is_named_by_every_reader_and_recomputed_by_resume(store_path, how):
    # the closed form computed directly (another code path: equal up to rounding), and the
    # store's own bytes before the damage (resume repeats the same tile call: the same bits)
    ref = ReluFCKernel(depth=2, block=None)(_x(), _x())
    before = KernelStore.open(store_path).to_tensor("all")
    _damage(store_path, how)
    store = KernelStore.open(store_path)
    assert store.is_complete  # the marker is still there: only the checksum tells
    match = r"tile \(0, 1\) of array 'ntk'"
    readers = [
        lambda: store.to_tensor("ntk"),
        lambda: store.read_tile("ntk", 1, 0),          # the mirrored lower tile too
        lambda: KernelStore.open(store_path).to_numpy(),
        lambda: KernelOperator.from_store(KernelStore.open(store_path), "ntk").matvec(np.ones(N)),
    ]
    for read in readers:
        with pytest.raises(StoreError, match=match):
            read()
    assert store.damaged_tiles() == [(0, 1)]
    # the undamaged array and tiles still read
    assert torch.equal(store.to_tensor("nngp"), before["nngp"])
    assert_same_kernel(store.to_tensor("nngp"), ref["nngp"])
    # resume verifies every finished tile and recomputes exactly the damaged one
    done = resume(store_path, ReluFCKernel(depth=2), _x(), progress=False)
    assert done.last_run == {"computed": 1, "skipped": 5, "repaired": 1}
    assert torch.equal(KernelStore.open(store_path).to_tensor("ntk"), before["ntk"])
    assert_same_kernel(KernelStore.open(store_path).to_tensor("ntk"), ref["ntk"])


def test_verify_flag_skips_the_check(store_path):
    _damage(store_path, "altered")
    raw = KernelStore.open(store_path, verify=False).to_numpy("ntk")
    assert raw[0, TILE + 5] == 1e6  # what the tester saw: a silently wrong entry
    with pytest.raises(StoreError, match="damaged"):
        KernelStore.open(store_path).to_numpy("ntk")


def test_marker_without_checksum_counts_as_damaged(store_path):
    (store_path / "_tiles" / "1_2").write_text("")  # e.g. a store of format 1 (empty markers)
    with pytest.raises(StoreError, match=r"tile \(1, 2\) of array 'nngp' .* no recorded checksum"):
        KernelStore.open(store_path).to_numpy("nngp")
    assert resume(store_path, ReluFCKernel(depth=2), _x(), progress=False).last_run["repaired"] == 1


@pytest.mark.parametrize("corruption", ["json", "missing_n1", "shape", "tile_type", "no_tiles_dir"])
def test_corrupt_manifest_is_a_store_error(store_path, corruption):
    meta = store_path / "zarr.json"
    doc = json.loads(meta.read_text())
    manifest = doc["attributes"]["torchntk"]
    if corruption == "json":
        meta.write_text(meta.read_text()[:-40])
    else:
        if corruption == "missing_n1":
            del manifest["n1"]
        elif corruption == "shape":
            manifest["arrays"]["ntk"]["shape"] = [N, N + 1]
        elif corruption == "tile_type":
            manifest["tile"] = "32"
        else:
            shutil.rmtree(store_path / "_tiles")
        meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="corrupt manifest|not a torchntk kernel store"):
        KernelStore.open(store_path)
    with pytest.raises(StoreError):
        resume(store_path, ReluFCKernel(depth=2), _x(), progress=False)


def test_second_writer_gets_a_store_error_and_a_stale_lock_is_recovered(tmp_path):
    path = tmp_path / "k.zarr"
    with StoreLock(path):
        with pytest.raises(StoreError, match=rf"being written by pid {os.getpid()} on host"):
            tiled_kernel(ReluFCKernel(depth=2), _x(), out=path, block_size=TILE, progress=False)
    assert not path.exists() and not lock_path(path).exists()
    # a lock file left by a writer that died (its pid no longer exists) does not block
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    lock_path(path).write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))
    store = tiled_kernel(ReluFCKernel(depth=2), _x(), out=path, block_size=TILE, progress=False)
    assert store.is_complete and not lock_path(path).exists()


def _racer(path: str, barrier, results) -> None:
    from torchntk.errors import StoreError as Err

    x = torch.randn(N, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    barrier.wait()
    try:
        tiled_kernel(ReluFCKernel(depth=2), x, out=path, block_size=TILE, resume=False, progress=False)
        results.put("ok")
    except Err as err:
        results.put(f"StoreError: {err}")
    except BaseException as err:  # noqa: BLE001  (reported to the test)
        results.put(f"{type(err).__name__}: {err}")


def _race(tmp_path, n: int) -> None:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torchntk.scale"])
    path = str(tmp_path / "race.zarr")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(path, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes.count("ok") == 1, outcomes
    losers = [o for o in outcomes if o != "ok"]
    assert all(o.startswith("StoreError: ") for o in losers), [o for o in losers if not o.startswith("Store")]
    store = KernelStore.open(path)
    assert store.is_complete and store.damaged_tiles() == []
    assert_same_kernel(store.to_tensor("ntk"), ReluFCKernel(depth=2, block=None)(_x(), _x())["ntk"])


def test_racing_creators_leave_one_valid_store(tmp_path):
    _race(tmp_path, 10)


@pytest.mark.slow
def test_150_racing_creators_leave_one_valid_store(tmp_path):
    _race(tmp_path, 150)


def test_unreachable_scheduler_is_an_argument_error_and_leaves_no_store(tmp_path):
    dask = pytest.importorskip("dask")
    pytest.importorskip("dask.distributed")
    path = tmp_path / "k.zarr"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(InvalidArgumentError, match="scheduler.*tcp://127.0.0.1:9"):
            tiled_kernel(ReluFCKernel(depth=2), _x(), out=path, block_size=TILE, executor="dask",
                         scheduler="tcp://127.0.0.1:9", progress=False)
    assert not path.exists() and not lock_path(path).exists()


def test_failed_first_tile_leaves_no_empty_store(tmp_path):
    path = tmp_path / "k.zarr"
    calls = []

    def flaky(a, b):
        calls.append(1)
        if len(calls) > 1:  # the probe passes, the first tile fails
            raise RuntimeError("boom")
        return ReluFCKernel(depth=2)(a, b)

    with pytest.raises(RuntimeError, match="boom"):
        tiled_kernel(flaky, _x(), out=path, block_size=TILE, progress=False)
    assert not path.exists()


def test_worker_store_cache_is_keyed_by_store_identity(tmp_path):
    """A worker that wrote into a store keeps writing the right layout when the store at the
    same path is deleted and created again with another tile size (the Dask task, run here)."""
    from torchntk.scale import TilePlan
    from torchntk.scale.executors import _dask_tile_task

    fn, x = ReluFCKernel(depth=2), _x()
    path = tmp_path / "k.zarr"
    first = tiled_kernel(fn, x, out=path, block_size=TILE, progress=False)
    _dask_tile_task(fn, x, None, first.plan, 0, 0, (str(path), first.store_id), None, None)
    shutil.rmtree(path)
    second = tiled_kernel(fn, x, out=path, block_size=48, progress=False)
    second.forget_tiles([(0, 1)])
    _dask_tile_task(fn, x, None, TilePlan(N, N, 48, True), 0, 1, (str(path), second.store_id), None, None)
    again = KernelStore.open(path)
    assert again.is_complete
    assert_same_kernel(again.to_tensor("ntk"), ReluFCKernel(depth=2, block=None)(x, x)["ntk"])
    with pytest.raises(StoreError, match="not the one this run writes"):
        _dask_tile_task(fn, x, None, TilePlan(N, N, 48, True), 0, 1, (str(path), "0" * 32), None, None)
