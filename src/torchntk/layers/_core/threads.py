"""Blocks of the kernel driver on a thread pool (private), assembled into one kernel.

The symmetric kernel (``x2=None``) computes the blocks on and above the diagonal and mirrors the
others (:func:`torchntk.layers._spatial.transpose_pairs`); the blocks are those of
:class:`torchntk._tiles.TilePlan`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ..._progress import progress_bar
from ..._tiles import TilePlan
from .. import _spatial
from .kernel import Kernel



def _blocked(run: Any, n1: int, n2: int, same: bool, b: int, serial: bool, progress: bool | None = None) -> Kernel:
    """Assemble the kernel from ``(b x b)`` blocks of pairs; mirror the symmetric case.

    ``run(rows1, rows2)`` computes one block from two slices (``rows2=None``: a diagonal block
    of the symmetric kernel, ``rows1`` with itself); ``serial``: run the blocks on this thread
    (when autograd records, or on an accelerator); ``progress``: a bar over the blocks
    (:func:`torchntk._progress.progress_bar`).
    """
    plan = TilePlan(n1, n2, b, same)
    r1 = [(s.start, s.stop) for s in map(plan.rows, range(plan.grid[0]))]
    r2 = [(s.start, s.stop) for s in map(plan.cols, range(plan.grid[1]))]
    pairs = plan.tiles()

    grad_mode = torch.is_grad_enabled()  # thread-local: carried into the worker threads

    def one(pair: tuple[int, int]) -> Kernel:
        (i0, i1), (j0, j1) = r1[pair[0]], r2[pair[1]]
        with torch.set_grad_enabled(grad_mode):
            return run(slice(i0, i1), None if same and pair[0] == pair[1] else slice(j0, j1))

    workers = torch.get_num_threads()
    if workers > 1 and len(pairs) > 1 and not serial:
        pool = ThreadPoolExecutor(max_workers=workers)
        results = pool.map(one, pairs)  # in order; assembled while the next blocks compute
    else:
        pool, results = None, map(one, pairs)
    bar = progress_bar(len(pairs), "spec.kernel", progress)

    def counted(items: Any) -> Any:
        for item in items:
            bar.update()
            yield item

    try:
        return _assemble(counted(results), pairs, r1, r2, n1, n2, same)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _assemble(results: Any, pairs: list, r1: list, r2: list, n1: int, n2: int, same: bool) -> Kernel:
    """Write the block kernels ``results`` (in the order of ``pairs``) into the full kernel."""
    nngp = ntk = cov1 = cov2 = None
    first: Kernel | None = None
    for (bi, bj), k in zip(pairs, results):
        (i0, i1), (j0, j1) = r1[bi], r2[bj]
        if first is None:
            first = k
            tail = tuple(k.nngp.shape[2:])
            kw = {"dtype": k.nngp.dtype, "device": k.nngp.device}
            nngp = torch.empty((n1, n2, *tail), **kw)
            ntk = None if k.ntk is None else torch.empty((n1, n2, *tail), **kw)
            cov1 = torch.empty((n1, *k.cov1.shape[1:]), **kw)
            cov2 = None if same else torch.empty((n2, *k.cov1.shape[1:]), **kw)
        nngp[i0:i1, j0:j1] = k.nngp
        if ntk is not None:
            ntk[i0:i1, j0:j1] = k.ntk
        if bj == (bi if same else 0):
            cov1[i0:i1] = k.cov1
        if not same and bi == 0:
            cov2[j0:j1] = k.q22
        if same and bj > bi:
            nsp, full = k.spatial_ndim, k.full_spatial
            nngp[j0:j1, i0:i1] = _spatial.transpose_pairs(k.nngp, full, nsp)
            if ntk is not None:
                ntk[j0:j1, i0:i1] = _spatial.transpose_pairs(k.ntk, full, nsp)
    assert first is not None
    return first.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2)
