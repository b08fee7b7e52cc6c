"""Executors: who computes the tiles. In-process (default) or Dask distributed.

Both run the same tile function, :func:`compute_tile`, so their results are identical bit for
bit. Neither schedules anything by hand: the in-process executor is a loop (torch already uses
every core inside each tile) with one background thread that writes the previous tile while the
next one is computed; the Dask executor submits one task per tile to a ``distributed.Client``
and lets the scheduler place them, retry them and recompute the tiles of a lost worker.
"""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from ..errors import InvalidArgumentError, NonFiniteError, ShapeError, StoreError
from ._optional import require_distributed
from .store import KernelStore
from .tiles import TilePlan

Tile = tuple[int, int]
Sink = Callable[[int, int, Mapping[str, torch.Tensor]], None]


def as_blocks(value: Any) -> dict[str, torch.Tensor]:
    """A kernel function's output as ``{name: tensor}`` (a bare tensor is named ``"kernel"``)."""
    if isinstance(value, torch.Tensor):
        return {"kernel": value}
    if isinstance(value, Mapping) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
        return dict(value)
    raise ShapeError(
        "`kernel_fn` must return a tensor (n1, n2, ...) or a dict name -> tensor, "
        f"got {type(value).__name__}"
    )


def compute_tile(
    kernel_fn: Callable, x1: torch.Tensor, x2: torch.Tensor | None, plan: TilePlan, bi: int, bj: int,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """``kernel_fn(x1[rows(bi)], x2[cols(bj)])`` as CPU tensors ``{name: (r, c, *trailing)}``.

    On a diagonal tile of a symmetric plan both arguments are the same tensor object, as in
    a monolithic call ``kernel_fn(x, x)``.
    """
    a = x1[plan.rows(bi)]
    if device is not None:
        a = a.to(device)
    if plan.symmetric and bi == bj:
        b = a  # the same object: kernel functions may treat K(a, a) as the symmetric case
    else:
        b = (x1 if x2 is None else x2)[plan.cols(bj)]
        b = b if device is None else b.to(device)
    blocks = as_blocks(kernel_fn(a, b))
    r, c = a.shape[0], b.shape[0]
    for name, block in blocks.items():
        if tuple(block.shape[:2]) != (r, c):
            raise ShapeError(
                f"`kernel_fn` returned {name!r} of shape {tuple(block.shape)} for blocks of "
                f"{r} and {c} inputs; expected ({r}, {c}, ...)"
            )
        if not bool(torch.isfinite(block).all()):
            rows, cols = plan.rows(bi), plan.cols(bj)
            raise NonFiniteError(
                f"`kernel_fn` returned {int((~torch.isfinite(block)).sum())} non-finite value(s) in "
                f"tile ({bi}, {bj}) of array {name!r} (rows {rows.start}:{rows.stop}, columns "
                f"{cols.start}:{cols.stop}); the tile is not stored"
            )
    return {name: block.detach().to("cpu") for name, block in blocks.items()}


# -- in-process ---------------------------------------------------------------------------------
def run_inprocess(
    tasks: Sequence[Tile],
    compute: Callable[[int, int], Mapping[str, torch.Tensor]],
    sink: Sink,
    *,
    background_writes: bool,
    progress: Any,
) -> None:
    """Compute ``tasks`` in order in this process; ``sink`` stores each tile.

    With ``background_writes`` one thread runs ``sink`` for tile k while tile k+1 is computed
    (at most one write in flight, so two tiles are alive at once).
    """
    if not background_writes:
        for bi, bj in tasks:
            sink(bi, bj, compute(bi, bj))
            progress.update(1)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="torchntk-tile-writer") as pool:
        pending = None
        for bi, bj in tasks:
            blocks = compute(bi, bj)
            if pending is not None:
                pending.result()
                progress.update(1)
            pending = pool.submit(sink, bi, bj, blocks)
        if pending is not None:
            pending.result()
            progress.update(1)


# -- Dask distributed -----------------------------------------------------------------------------
def _worker_device(device: str | None) -> torch.device | None:
    """The device for this Dask worker: ``"auto"`` is one GPU per worker when CUDA is present."""
    if device != "auto":
        return None if device is None else torch.device(device)
    if not torch.cuda.is_available():
        return None
    try:
        from dask.distributed import get_worker

        name = get_worker().name
        index = int(name) if str(name).isdigit() else abs(hash(str(name)))
    except (ImportError, ValueError):
        index = 0
    return torch.device("cuda", index % torch.cuda.device_count())


#: Stores opened by this worker process, keyed by their ``store_id`` (never by path: a store
#: deleted and created again at the same path is another store, with another layout).
_OPEN_STORES: dict[str, Any] = {}


def _worker_store(store_path: str, store_id: str | None) -> Any:
    """The store ``store_id`` at ``store_path``, opened once per worker process."""
    store = _OPEN_STORES.get(store_id)
    if store is None:
        store = KernelStore.open(store_path, verify=False)
        if store.store_id != store_id:
            raise StoreError(
                f"the kernel store at {store_path!r} is not the one this run writes "
                f"(store_id {store.store_id!r}, expected {store_id!r}): it was replaced meanwhile"
            )
        if store_id is not None:  # stores of format 1 have no identity: never cached
            _OPEN_STORES[store_id] = store
    return store


def _dask_tile_task(
    kernel_fn: Callable, x1: torch.Tensor, x2: torch.Tensor | None, plan: TilePlan, bi: int, bj: int,
    store: tuple[str, str | None] | None, device: str | None, threads: int | None,
) -> Any:
    """One Dask task: compute tile (bi, bj); write it to the store ``(path, store_id)``, or return it."""
    if threads:
        torch.set_num_threads(threads)
    blocks = compute_tile(kernel_fn, x1, x2, plan, bi, bj, _worker_device(device))
    if store is None:
        return {name: block.numpy() for name, block in blocks.items()}
    _worker_store(*store).write_tile(bi, bj, blocks)
    return None


def _default_workers() -> int:
    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, min(4, os.cpu_count() or 1))


@contextmanager
def dask_session(scheduler: str | Any | None, n_workers: int | None) -> Iterator[tuple[Any, int | None]]:
    """``(client, threads per task)`` for a Dask run, connected before any store is touched.

    ``scheduler``: None starts an embedded ``LocalCluster`` of ``n_workers`` single-threaded
    worker processes (default: one per GPU, else up to 4) and closes it at the end; an address
    string (``"tcp://host:8786"``) or a ``distributed.Client`` uses an existing cluster. An
    address that cannot be reached (within dask's ``distributed.comm.timeouts.connect``) raises
    an InvalidArgumentError naming ``scheduler``.
    """
    distributed = require_distributed()
    own_cluster = own_client = None
    try:
        if scheduler is None:
            n = n_workers or _default_workers()
            own_cluster = distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = own_client = distributed.Client(own_cluster)
            threads = max(1, (os.cpu_count() or 1) // n)
        elif isinstance(scheduler, str):
            try:
                client = own_client = distributed.Client(scheduler)
            except (OSError, ValueError, TypeError) as err:  # unreachable, timed out, malformed
                raise InvalidArgumentError(
                    f"`scheduler`: cannot connect to the Dask scheduler {scheduler!r} "
                    f"({type(err).__name__}: {err})"
                ) from None
            threads = None
        else:
            client, threads = scheduler, None
        yield client, threads
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()


def run_dask(
    tasks: Sequence[Tile],
    kernel_fn: Callable,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    plan: TilePlan,
    sink: Sink | None,
    *,
    store: tuple[str, str | None] | None,
    session: tuple[Any, int | None],
    device: str | None,
    progress: Any,
) -> None:
    """Compute ``tasks`` as one Dask task per tile on the ``session`` of :func:`dask_session`.

    With ``store = (path, store_id)`` the workers write their tiles into that store (which must
    be on a filesystem they all see) and only tile indices travel back; without it the tiles
    are gathered and passed to ``sink``.
    """
    distributed = require_distributed()
    client, threads = session
    fn_f = client.scatter(kernel_fn, broadcast=True, hash=False)
    x1_f = client.scatter(x1, broadcast=True, hash=False)
    x2_f = None if x2 is None else client.scatter(x2, broadcast=True, hash=False)
    run_id = uuid.uuid4().hex[:12]
    futures = [
        client.submit(
            _dask_tile_task, fn_f, x1_f, x2_f, plan, bi, bj, store, device, threads,
            key=f"torchntk-tile-{bi}-{bj}-{run_id}", pure=False, retries=3,
        )
        for bi, bj in tasks
    ]
    index = {f.key: t for f, t in zip(futures, tasks)}
    for future in distributed.as_completed(futures):
        result = future.result()
        if store is None and sink is not None:
            bi, bj = index[future.key]
            sink(bi, bj, {k: torch.from_numpy(v) for k, v in result.items()})
        future.release()
        progress.update(1)
