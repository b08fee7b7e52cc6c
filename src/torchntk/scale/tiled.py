"""``tiled_kernel``: any kernel over (x1, x2), computed tile by tile under a memory budget.

The entry point of :mod:`torchntk.scale`. A *kernel function* ``kernel_fn(a, b)`` maps two
blocks of inputs, ``a`` of shape ``(r, *feature)`` and ``b`` of shape ``(c, *feature)``, to a
tensor ``(r, c, *trailing)`` or to a dict of them (e.g. ``{"nngp": ..., "ntk": ...}``). The
tiled result is ``K[i, j] = kernel_fn(x1[i:i+1], x2[j:j+1])`` assembled from tiles; it equals
``kernel_fn(x1, x2)`` bit for bit whenever the kernel function computes every entry the same
way whatever the block (true of elementwise recursions on a blockwise-deterministic Gram
matrix; BLAS matrix products may differ in the last bits between block shapes).
"""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from tqdm.auto import tqdm

from .._checks import check_choice, check_nonempty_batch, check_tensor, renamed
from .._memory import DEFAULT_MEMORY
from ..errors import InvalidArgumentError, ShapeError, StoreError
from ._budget import plan_tile
from ._identity import compare_manifests, jsonable, kernel_identity, tensor_hash, versions
from ._lock import StoreLock
from .executors import compute_tile, dask_session, run_dask, run_inprocess
from .store import KernelStore
from .tiles import TilePlan, mirror

KernelFn = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | Mapping[str, torch.Tensor]"]

_PROBE = 2


def tiled_kernel(
    kernel_fn: KernelFn,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    out: str | os.PathLike | None = None,
    block_size: int | None = None,
    memory: str | int | None = DEFAULT_MEMORY,
    executor: str = "inprocess",
    scheduler: Any = None,
    n_workers: int | None = None,
    device: str | None = None,
    identity: Mapping[str, Any] | None = None,
    resume: bool = True,
    progress: bool = True,
    compressor: str | None = None,
    tile: int | None = None,
) -> "torch.Tensor | dict[str, torch.Tensor] | KernelStore":
    """Compute ``kernel_fn`` over all pairs of ``x1`` and ``x2`` in tiles.

    Args:
        kernel_fn: ``(a (r, *f), b (c, *f)) -> (r, c, *trailing)`` tensor or dict of tensors.
        x1: inputs ``(N1, *f)``. x2: inputs ``(N2, *f)``; None (or ``x1`` itself) means the
            symmetric kernel ``K(x1, x1)``, of which only the upper-triangle tiles are computed.
        out: None returns the kernel in memory; a path streams the tiles into a zarr
            :class:`KernelStore` there and returns it.
        block_size: examples per tile edge (rows and columns at a time); default: planned
            from ``memory`` (see ``_budget``).
        memory: budget for the tile working set (``"2GiB"``, ``"500MB"`` or bytes, units of
            :mod:`torchntk._memory`; default 2 GiB). With
            ``out=None`` the result itself (``N1*N2`` entries per array) comes on top.
        executor: ``"inprocess"`` (default) or ``"dask"``.
        scheduler: for Dask: None starts a ``LocalCluster``; an address ``"tcp://host:8786"``
            or a ``distributed.Client`` uses that cluster.
        n_workers: worker processes of the embedded ``LocalCluster`` (default: one per GPU,
            else up to 4).
        device: where tiles are computed. None: where the inputs are (in-process) or on the
            CPU (Dask); ``"auto"`` on Dask: one GPU per worker when present; or a torch device.
        identity: a JSON dict recorded in the manifest (e.g. the CLI request that rebuilds
            ``kernel_fn`` and the data); on resume it must match unless None.
        resume: an existing store at ``out`` is resumed after checking that it was computed
            from the same kernel, data and settings (StoreError otherwise) and verifying every
            finished tile against its sha256 (damaged ones are computed again); False refuses
            to touch an existing path. Creating or resuming holds the lock ``<out>.lock``: a
            second writer of the same store gets a StoreError.
        progress: show a progress bar with ETA (tqdm, on stderr).
        compressor: chunk compression of a new store: None (raw), ``"zstd"`` or ``"blosc"``.
        tile: deprecated name of ``block_size``.

    Returns:
        With ``out=None``: a tensor ``(N1, N2, *trailing)``, or a dict of them when
        ``kernel_fn`` returns a dict. With ``out``: the :class:`KernelStore` (its ``last_run``
        says how many tiles were computed now, how many were already there, and how many of
        the finished ones were found damaged and computed again).

    Example::

        >>> fn = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2)
        >>> x = torch.randn(1000, 3, dtype=torch.float64)
        >>> K = tiled_kernel(fn, x, block_size=256, progress=False)           # (1000, 1000)
        >>> store = tiled_kernel(fn, x, out="rbf.zarr", block_size=256)       # doctest: +SKIP
    """
    if not callable(kernel_fn):
        raise InvalidArgumentError(f"`kernel_fn` must be callable, got {type(kernel_fn).__name__}")
    check_nonempty_batch("x1", check_tensor("x1", x1))
    symmetric = x2 is None or x2 is x1
    if not symmetric:
        check_nonempty_batch("x2", check_tensor("x2", x2))
        if x1.shape[1:] != x2.shape[1:]:
            raise ShapeError(
                f"`x1` and `x2` must have the same feature shape, got {tuple(x1.shape[1:])} "
                f"and {tuple(x2.shape[1:])}"
            )
    x2_eff = None if symmetric else x2
    executor = check_choice("executor", executor, ("inprocess", "dask"))
    tile = renamed("block_size", block_size, "tile", tile)
    if tile is not None and (not isinstance(tile, int) or isinstance(tile, bool) or tile < 1):
        raise InvalidArgumentError(f"`block_size` must be a positive integer or None, got {tile!r}")
    n1 = x1.shape[0]
    n2 = n1 if symmetric else x2.shape[0]

    probe = _probe(kernel_fn, x1, x2_eff)
    trailing = {k: tuple(v.shape[2:]) for k, v in probe.items()}
    with ExitStack() as stack:
        # connect to the cluster first: an unreachable scheduler must not leave an empty store
        session = stack.enter_context(dask_session(scheduler, n_workers)) if executor == "dask" else None
        if out is None:
            t = tile or _planned_tile(n1, n2, probe, memory)
            plan = TilePlan(n1, n2, t, symmetric)
            return _in_memory(kernel_fn, x1, x2_eff, plan, probe, trailing, session, device, progress,
                              return_dict=not _bare(probe))
        try:
            Path(out).parent.mkdir(parents=True, exist_ok=True)   # as zarr would, for the lock file
        except OSError as err:
            raise StoreError(f"cannot create the folder of the kernel store {str(out)!r} "
                             f"({err.strerror or err})") from None
        stack.enter_context(StoreLock(out))
        manifest = _manifest(kernel_fn, x1, x2_eff, n1, n2, symmetric, probe, trailing, tile, identity)
        store, created, repaired = _open_or_create(out, manifest, resume, tile, n1, n2, probe, memory,
                                                   compressor)
        tasks = store.missing_tiles()
        store.last_run = {"computed": len(tasks), "skipped": store.plan.n_tiles - len(tasks),
                          "repaired": repaired}
        bar = tqdm(total=len(tasks), disable=not progress, unit="tile", desc=f"kernel -> {out}")
        try:
            with bar:
                if session is None:
                    run_inprocess(
                        tasks,
                        lambda bi, bj: compute_tile(kernel_fn, x1, x2_eff, store.plan, bi, bj, device),
                        store.write_tile,
                        background_writes=True,
                        progress=bar,
                    )
                else:
                    run_dask(tasks, kernel_fn, x1, x2_eff, store.plan, None,
                             store=(str(out), store.store_id), session=session, device=device, progress=bar)
        except BaseException:
            if created and not store.done_tiles():  # nothing computed: leave no empty store behind
                shutil.rmtree(out, ignore_errors=True)
            raise
    return store


def resume(
    path: str | os.PathLike,
    kernel_fn: KernelFn,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    **kwargs: Any,
) -> KernelStore:
    """Finish an interrupted store: compute only its missing tiles.

    Checks that ``kernel_fn``, ``x1``, ``x2`` (and ``identity``/``block_size`` if given) are those
    the store was started with; StoreError naming what changed otherwise. Every finished tile
    is verified against its recorded sha256 and computed again if its chunk was deleted,
    altered or truncated (``last_run["repaired"]``). Other keyword
    arguments (executor, scheduler, progress...) are those of :func:`tiled_kernel`.

    Example::

        >>> store = resume("kernel.zarr", fn, x)         # doctest: +SKIP
        >>> store.last_run                      # {"computed": 3, "skipped": 12, "repaired": 0}
    """
    if not Path(path).exists():
        raise StoreError(f"cannot resume {str(path)!r}: no store there")
    kwargs.pop("resume", None)
    return tiled_kernel(kernel_fn, x1, x2, out=path, resume=True, **kwargs)


# -- helpers ------------------------------------------------------------------------------------
def _probe(kernel_fn: KernelFn, x1: torch.Tensor, x2: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The kernel on the first two inputs of each side: names, trailing shapes, dtypes, values."""
    plan = TilePlan(min(_PROBE, x1.shape[0]), min(_PROBE, (x1 if x2 is None else x2).shape[0]),
                    _PROBE, symmetric=False)
    a = x1[:_PROBE]
    b = (x1 if x2 is None else x2)[:_PROBE]
    return compute_tile(kernel_fn, a, b, plan, 0, 0)


def _bare(probe: Mapping[str, torch.Tensor]) -> bool:
    return list(probe) == ["kernel"]


def _planned_tile(n1: int, n2: int, probe: Mapping[str, torch.Tensor], memory: Any) -> int:
    entry = max(v[0, 0].numel() * v.element_size() for v in probe.values())
    return plan_tile(n1, n2, memory=memory, entry_bytes=entry, n_arrays=len(probe))


def _manifest(kernel_fn: KernelFn, x1: torch.Tensor, x2: torch.Tensor | None, n1: int, n2: int,
              symmetric: bool, probe: Mapping[str, torch.Tensor], trailing: Mapping[str, tuple],
              tile: int | None, identity: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "kernel": jsonable(kernel_identity(kernel_fn), "kernel_fn.torchntk_identity"),
        "x1": tensor_hash(x1),
        "x2": None if x2 is None else tensor_hash(x2),
        "symmetric": symmetric,
        "n1": n1,
        "n2": n2,
        "arrays": {
            k: {"shape": [n1, n2, *trailing[k]], "dtype": str(v.numpy().dtype)} for k, v in probe.items()
        },
        "tile": tile,
        "probe": {k: v.double().reshape(-1).tolist() for k, v in probe.items()},
        "identity": None if identity is None else jsonable(dict(identity)),
        "versions": versions(),
    }


def _open_or_create(out: str | os.PathLike, manifest: dict[str, Any], resume: bool, tile: int | None,
                    n1: int, n2: int, probe: Mapping[str, torch.Tensor], memory: Any,
                    compressor: str | None) -> tuple[KernelStore, bool, int]:
    """``(store, created, repaired)``: the existing store at ``out`` checked against
    ``manifest`` with its damaged tiles forgotten, or a new one. Called under the writer lock."""
    if Path(out).exists():
        if not resume:
            raise StoreError(
                f"the output path {str(out)!r} exists; pass resume=True to continue that store, "
                "or choose another path"
            )
        store = KernelStore.open(out)
        compare_manifests(store.manifest, manifest, str(out))
        damaged = store.damaged_tiles()   # every finished tile checked against its sha256
        store.forget_tiles(damaged)
        return store, False, len(damaged)
    manifest["tile"] = tile or _planned_tile(n1, n2, probe, memory)
    manifest["identity"] = manifest["identity"] or {}
    return KernelStore.create(out, manifest, compressor=compressor), True, 0


def _in_memory(kernel_fn: KernelFn, x1: torch.Tensor, x2: torch.Tensor | None, plan: TilePlan,
               probe: Mapping[str, torch.Tensor], trailing: Mapping[str, tuple],
               session: Any, device: str | None, progress: bool,
               return_dict: bool) -> "torch.Tensor | dict[str, torch.Tensor]":
    result = {
        k: torch.empty((plan.n1, plan.n2, *trailing[k]), dtype=v.dtype) for k, v in probe.items()
    }

    def sink(bi: int, bj: int, blocks: Mapping[str, torch.Tensor]) -> None:
        for k, block in blocks.items():
            result[k][plan.rows(bi), plan.cols(bj)] = block
            if plan.symmetric and bi != bj:
                result[k][plan.rows(bj), plan.cols(bi)] = mirror(block)

    tasks = plan.tiles()
    bar = tqdm(total=len(tasks), disable=not progress, unit="tile", desc="kernel tiles")
    with bar:
        if session is None:
            run_inprocess(tasks, lambda bi, bj: compute_tile(kernel_fn, x1, x2, plan, bi, bj, device),
                          sink, background_writes=False, progress=bar)
        else:
            run_dask(tasks, kernel_fn, x1, x2, plan, sink, store=None, session=session, device=device,
                     progress=bar)
    return result if return_dict else result["kernel"]
