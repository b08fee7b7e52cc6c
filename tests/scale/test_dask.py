"""The Dask executor: a LocalCluster of 2 worker processes gives the in-process result, even
when one worker is killed mid-run."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from torchntk.scale import KernelStore, tiled_kernel
from ._reference import ReluFCKernel, assert_same_kernel

distributed = pytest.importorskip("dask.distributed")


def _x(n=256, d=20, seed=0):
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as c:
        yield c


def test_local_cluster_two_workers_equals_inprocess(tmp_path, cluster):
    x, x2 = _x(), _x(100, seed=1)
    fn = ReluFCKernel(depth=3)
    ref = tiled_kernel(fn, x, block_size=64, progress=False)
    ref2 = tiled_kernel(fn, x, x2, block_size=64, progress=False)
    # in memory (tiles gathered) and into a store (tiles written by the workers)
    got = tiled_kernel(fn, x, block_size=64, executor="dask", scheduler=cluster.scheduler_address,
                       progress=False)
    store = tiled_kernel(fn, x, x2, block_size=64, executor="dask", scheduler=cluster.scheduler_address,
                         out=tmp_path / "d.zarr", progress=False)
    # the workers run the same tile calls in other processes with one thread each (another BLAS
    # code path): equal up to rounding
    for k in ref:
        assert_same_kernel(got[k], ref[k])
    assert store.is_complete
    for k in ref2:
        assert_same_kernel(store.to_tensor(k), ref2[k], symmetric=False)


def test_long_lived_cluster_writes_a_recreated_store_with_its_own_layout(tmp_path, cluster):
    """Workers cache open stores by store_id, not path: a store deleted and created again at the
    same path with another tile size is written with the new layout."""
    import shutil

    x, fn = _x(128), ReluFCKernel(depth=2)
    path = tmp_path / "k.zarr"
    tiled_kernel(fn, x, block_size=64, executor="dask", scheduler=cluster.scheduler_address, out=path, progress=False)
    shutil.rmtree(path)
    store = tiled_kernel(fn, x, block_size=48, executor="dask", scheduler=cluster.scheduler_address, out=path,
                         progress=False)
    again = KernelStore.open(path)
    assert again.plan.tile == 48 and again.is_complete and again.damaged_tiles() == []
    assert_same_kernel(again.to_tensor("ntk"), tiled_kernel(fn, x, block_size=48, progress=False)["ntk"])
    assert store.store_id == again.store_id


@pytest.mark.slow
def test_embedded_cluster_started_by_the_engine(tmp_path):
    x = _x(128)
    fn = ReluFCKernel(depth=2)
    got = tiled_kernel(fn, x, block_size=64, executor="dask", n_workers=2, progress=False)
    assert_same_kernel(got["ntk"], tiled_kernel(fn, x, block_size=64, progress=False)["ntk"])


@pytest.mark.slow
def test_killing_a_worker_mid_run_still_gives_identical_results(tmp_path, cluster):
    x = _x(320)
    fn = ReluFCKernel(depth=3, delay=0.3)  # 15 tiles of at least 0.3 s on 2 workers
    path = tmp_path / "k.zarr"
    killed = {}
    with distributed.Client(cluster) as client:
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]

        def killer() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                tiles = path / "_tiles"
                n = len(os.listdir(tiles)) if tiles.is_dir() else 0
                if n >= 3:
                    os.kill(victim, signal.SIGKILL)
                    killed["at"] = n
                    return
                time.sleep(0.02)

        thread = threading.Thread(target=killer)
        thread.start()
        store = tiled_kernel(fn, x, block_size=64, executor="dask", scheduler=client, out=path, progress=False)
        thread.join()
        assert victim not in client.run(os.getpid).values()  # the worker really died
    assert 3 <= killed["at"] < 15  # ... while tiles were still missing
    assert store.is_complete
    ref = tiled_kernel(ReluFCKernel(depth=3), x, block_size=64, out=tmp_path / "ref.zarr", progress=False)
    for name in ("nngp", "ntk"):
        raw, want = KernelStore.open(path)._array(name)[:], ref._array(name)[:]
        np.testing.assert_array_equal(np.isnan(raw), np.isnan(want))  # the same tiles written
        assert_same_kernel(KernelStore.open(path).to_tensor(name), ref.to_tensor(name))
