"""scale refuses kernels it cannot vouch for: a tile with NaN is named and never stored; the
solvers check tensor kernels with the one check of torchntk._kernel_checks (symmetric, PSD)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchntk.errors import InvalidArgumentError, NonFiniteError, StoreError
from torchntk.scale import KernelOperator, KernelStore, cg_solve, kernel_regression, tiled_kernel, top_eigh
from torchntk.scale.functions import with_identity

DT = torch.float64
N, TILE = 96, 32


def _x():
    x = torch.randn(N, 4, dtype=DT, generator=torch.Generator().manual_seed(0))
    x[70, 0] = 1e3  # the kernel below is NaN on every pair with input 70
    return x


def _nan_at_large_inputs(a, b):
    k = a @ b.T / 4 + 1.0
    bad = (a[:, :1].abs() > 100) | (b[:, :1].abs() > 100).T
    return torch.where(bad, torch.full_like(k, float("nan")), k)


def test_non_finite_tile_is_named_and_never_stored(tmp_path):
    pytest.importorskip("zarr")
    fn = with_identity(_nan_at_large_inputs, {"kind": "nan-at-large-inputs"})
    x = _x()
    # upper tiles in row-major order: (0, 2) is the first to hold column 70
    match = r"non-finite value\(s\) in tile \(0, 2\) of array 'kernel' \(rows 0:32, columns 64:96\)"
    with pytest.raises(NonFiniteError, match=match):
        tiled_kernel(fn, x, block_size=TILE, progress=False)
    path = tmp_path / "k.zarr"
    with pytest.raises(NonFiniteError, match=match):
        tiled_kernel(fn, x, out=path, block_size=TILE, progress=False)
    store = KernelStore.open(path)
    assert (0, 2) in store.missing_tiles() and (0, 2) not in store.done_tiles()
    # the finite tiles that were stored are the kernel's values
    np.testing.assert_allclose(store.read_tile("kernel", 0, 1), (x[:32] @ x[32:64].T / 4 + 1.0).numpy(),
                               rtol=1e-15, atol=1e-15)


def _spd(n=40, seed=0):
    x = torch.randn(n, 5, dtype=DT, generator=torch.Generator().manual_seed(seed))
    return x @ x.T / 5 + 0.1 * torch.eye(n, dtype=DT)


def test_solvers_refuse_non_symmetric_and_indefinite_tensor_kernels():
    k, y = _spd(), torch.randn(40, dtype=DT)
    skew = k.clone()
    skew[3, 7] += 0.5
    with pytest.raises(InvalidArgumentError, match="`ntk_train_train` must be a symmetric kernel"):
        kernel_regression(skew, y, diag_reg=0.1, diag_reg_mode="absolute")
    shifted = k - float(torch.linalg.eigvalsh(k)[-1]) * torch.eye(40, dtype=DT)  # negative definite
    with pytest.raises(InvalidArgumentError, match="`ntk_train_train` is not positive semi-definite"):
        kernel_regression(shifted, y, diag_reg=0.1, diag_reg_mode="absolute")
    for call in (lambda: cg_solve(skew, y), lambda: top_eigh(skew.numpy(), 3),
                 lambda: KernelOperator.from_tensor(shifted)):
        with pytest.raises(InvalidArgumentError, match="`kernel`"):
            call()
    nan = k.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="`ntk_train_train`"):
        kernel_regression(nan, y)
    # a valid kernel still gives the dense solution (CG to rtol 1e-10 on a matrix of condition
    # about 1e3: the solution to about 1e-7 of its scale)
    f_train, _, info = kernel_regression(k, y, diag_reg=0.1, diag_reg_mode="absolute", rtol=1e-10)
    dense = k @ torch.linalg.solve(k + 0.1 * torch.eye(40, dtype=DT), y)
    torch.testing.assert_close(f_train, dense, rtol=1e-7, atol=1e-7 * float(dense.abs().max()))


def test_operator_refuses_a_cross_kernel_store(tmp_path):
    pytest.importorskip("zarr")
    fn = with_identity(lambda a, b: a @ b.T + 1.0, {"kind": "linear"})
    x = torch.randn(20, 3, dtype=DT)
    store = tiled_kernel(fn, x, x.clone(), out=tmp_path / "c.zarr", block_size=8, progress=False)
    with pytest.raises(InvalidArgumentError, match="cross kernel"):
        KernelOperator.from_store(store)


def test_resume_on_another_cpu_accepts_a_probe_within_rounding(tmp_path):
    # the probe block, recomputed on another CPU, may differ by the rounding of another code
    # path (up to ~1.5e-8 of its scale on its diagonal, where the arc-cosine meets correlation 1)
    pytest.importorskip("zarr")
    import json

    from ._reference import ReluFCKernel

    x = torch.randn(64, 5, dtype=DT, generator=torch.Generator().manual_seed(4))
    path = tmp_path / "k.zarr"
    tiled_kernel(ReluFCKernel(depth=2), x, out=path, block_size=32, progress=False)
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    probe = doc["attributes"]["torchntk"]["probe"]["ntk"]
    original = list(probe)
    probe[0] *= 1 + 2e-8  # as another CPU's rounding at correlation 1
    meta.write_text(json.dumps(doc))
    assert tiled_kernel(ReluFCKernel(depth=2), x, out=path, progress=False).last_run["computed"] == 0
    probe[:] = [v * (1 + 1e-4) for v in original]  # another kernel
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="probe block"):
        tiled_kernel(ReluFCKernel(depth=2), x, out=path, progress=False)
