"""A run killed with SIGKILL mid-way resumes to the identical store, computing only what is missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import torch

from torchntk.scale import KernelStore, resume, tiled_kernel
from ._reference import ReluFCKernel, assert_same_kernel

N, D, TILE = 320, 30, 64  # 5 x 5 tile grid, 15 upper tiles

_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {HERE!r})
    from torchntk.scale import tiled_kernel
    from _reference import ReluFCKernel
    x = torch.randn({N}, {D}, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    tiled_kernel(ReluFCKernel(depth=2, delay=0.25), x, out=sys.argv[1], block_size={TILE},
                 identity={{"run": "interrupt-test"}}, progress=False)
    """
).format(N=N, D=D, TILE=TILE, HERE=os.path.dirname(os.path.abspath(__file__)))


class _Counting(ReluFCKernel):
    def __init__(self) -> None:
        super().__init__(depth=2)
        self.calls = 0

    def __call__(self, a, b):
        self.calls += 1
        return super().__call__(a, b)


def _x() -> torch.Tensor:
    return torch.randn(N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def test_kill_minus_9_then_resume_gives_the_identical_store(tmp_path):
    path = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(path)])
    tiles = path / "_tiles"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if tiles.is_dir() and len(os.listdir(tiles)) >= 3:
                break
            assert proc.poll() is None, "the child finished before it could be killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    partial = KernelStore.open(path)
    done_before = partial.done_tiles()
    missing = partial.missing_tiles()
    assert 3 <= len(done_before) < 15 and len(missing) == 15 - len(done_before)
    kept = {(name, t): partial.read_tile(name, *t) for name in ("nngp", "ntk") for t in done_before}

    fn = _Counting()
    store = resume(path, fn, _x(), progress=False)
    assert store.last_run == {"computed": len(missing), "skipped": len(done_before), "repaired": 0}
    assert fn.calls == len(missing) + 1  # the missing tiles, plus the probe of 2 x 2 inputs
    assert store.is_complete
    # the killed run's tiles are not computed again: the same bytes re-read
    for (name, t), before in kept.items():
        np.testing.assert_array_equal(store.read_tile(name, *t), before)

    ref = tiled_kernel(ReluFCKernel(depth=2), _x(), out=tmp_path / "ref.zarr", block_size=TILE,
                       identity={"run": "interrupt-test"}, progress=False)
    assert store.store_id != ref.store_id  # each store has its own identity, the rest is equal
    assert {k: v for k, v in store.manifest.items() if k != "store_id"} == {
        k: v for k, v in ref.manifest.items() if k != "store_id"}
    assert store.done_tiles() == ref.done_tiles()
    for name in ("nngp", "ntk"):
        # the same tiles written (the lower triangle never: NaN)...
        np.testing.assert_array_equal(np.isnan(store._array(name)[:]), np.isnan(ref._array(name)[:]))
        # ...their values from two processes (the killed child's thread count and code paths
        # need not be this one's): equal up to rounding
        assert_same_kernel(store.to_tensor(name), ref.to_tensor(name))
    x = _x()
    assert_same_kernel(store.to_tensor("ntk"), ReluFCKernel(depth=2, block=None)(x, x)["ntk"])
