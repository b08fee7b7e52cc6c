"""The kernel store: a zarr group with one chunk per tile, a manifest, and done-markers.

Layout of ``path`` (a directory; on a cluster it must be on a filesystem every worker sees)::

    path/zarr.json            the group; its attribute "torchntk" is the manifest
    path/<name>/              one array per kernel (e.g. "nngp", "ntk"), shape (N1, N2, *trailing),
                              chunks (tile, tile, *trailing): tile (bi, bj) is chunk (bi, bj)
    path/_tiles/<bi>_<bj>     an empty marker, created only after every array of the tile is
                              written (zarr writes each chunk by atomic rename)

A ``kill -9`` at any moment therefore loses at most the tiles in flight: their markers do not
exist, so a resume recomputes exactly them. In the symmetric case only tiles with ``bi <= bj``
exist; reads of the lower triangle are served by mirroring (see :mod:`torchntk.scale.tiles`).

Example::

    >>> store = KernelStore.open("kernel.zarr")          # doctest: +SKIP
    >>> store.manifest["identity"], store.missing_tiles()
    >>> ntk = store.to_tensor("ntk")                      # (N1, N2) float64 tensor
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import InvalidArgumentError, StoreError
from ._optional import require_zarr
from .tiles import TilePlan, mirror

_FORMAT = "torchntk.kernel-store"
_FORMAT_VERSION = 1
_ATTR = "torchntk"


class KernelStore:
    """A (possibly partial) tiled kernel on disk. Create with :func:`tiled_kernel`, open with
    :meth:`KernelStore.open`.

    Attributes:
        path: the store directory.
        manifest: the identity of the computation (dict): ``kernel`` (spec/model hash),
            ``x1``/``x2`` (data hashes), ``symmetric``, ``arrays`` (name -> shape, dtype),
            ``tile``, ``versions`` and the user's ``identity`` (e.g. the CLI request).
        plan: the :class:`TilePlan`.
        last_run: after :func:`tiled_kernel`, ``{"computed": k, "skipped": m}`` tiles.
    """

    def __init__(self, path: str | os.PathLike, group: Any, manifest: dict[str, Any]) -> None:
        self.path = str(path)
        self._group = group
        self.manifest = manifest
        self.plan = TilePlan(
            n1=manifest["n1"], n2=manifest["n2"], tile=manifest["tile"], symmetric=manifest["symmetric"]
        )
        self._arrays = {name: group[name] for name in manifest["arrays"]}
        self.last_run: dict[str, int] = {}

    # -- creation and opening ---------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        manifest: Mapping[str, Any],
        *,
        compressor: str | None = None,
    ) -> "KernelStore":
        """Create an empty store for ``manifest`` (which names arrays, shapes, dtypes, tile).

        ``compressor=None`` stores raw chunks (fastest; float kernels barely compress);
        ``"zstd"`` or ``"blosc"`` trade time for space.
        """
        zarr = require_zarr()
        if Path(path).exists():
            raise StoreError(f"cannot create the kernel store {str(path)!r}: the path already exists")
        manifest = dict(manifest, format=_FORMAT, format_version=_FORMAT_VERSION)
        compressors = _compressors(compressor)
        group = zarr.open_group(str(path), mode="w-")
        t = manifest["tile"]
        for name, meta in manifest["arrays"].items():
            shape = tuple(meta["shape"])
            group.create_array(
                name,
                shape=shape,
                chunks=(t, t) + shape[2:],
                dtype=meta["dtype"],
                fill_value=float("nan"),
                compressors=compressors,
            )
        (Path(path) / "_tiles").mkdir()
        group.attrs[_ATTR] = manifest  # last: a store without a manifest is not a store
        return cls(path, group, manifest)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "KernelStore":
        """Open an existing store (read and resume); StoreError if it is not one."""
        zarr = require_zarr()
        if not Path(path).is_dir():
            raise StoreError(f"no kernel store at {str(path)!r} (not a directory)")
        try:
            group = zarr.open_group(str(path), mode="r+")
            manifest = dict(group.attrs[_ATTR])
        except Exception as err:  # zarr raises several types for a broken group
            raise StoreError(
                f"{str(path)!r} is not a torchntk kernel store (no readable manifest: {err})"
            ) from err
        if manifest.get("format") != _FORMAT:
            raise StoreError(f"{str(path)!r} is not a torchntk kernel store (format {manifest.get('format')!r})")
        if manifest.get("format_version", 0) > _FORMAT_VERSION:
            raise StoreError(
                f"the kernel store {str(path)!r} has format version {manifest['format_version']}; "
                f"this torchntk reads up to {_FORMAT_VERSION}: upgrade torchntk"
            )
        return cls(path, group, manifest)

    # -- tiles ---------------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """Names of the kernel arrays, e.g. ``("nngp", "ntk")``; ``("kernel",)`` for a tensor."""
        return tuple(self._arrays)

    def _marker(self, bi: int, bj: int) -> Path:
        return Path(self.path) / "_tiles" / f"{bi}_{bj}"

    def done_tiles(self) -> set[tuple[int, int]]:
        """The tiles whose every array is written."""
        done = set()
        for entry in os.scandir(Path(self.path) / "_tiles"):
            parts = entry.name.split("_")
            if len(parts) == 2 and all(p.isdigit() for p in parts):
                done.add((int(parts[0]), int(parts[1])))
        return done

    def missing_tiles(self) -> list[tuple[int, int]]:
        """The tiles still to compute, in plan order."""
        done = self.done_tiles()
        return [t for t in self.plan.tiles() if t not in done]

    @property
    def is_complete(self) -> bool:
        """True when every tile of the plan is written."""
        return not self.missing_tiles()

    def write_tile(self, bi: int, bj: int, blocks: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        """Write tile ``(bi, bj)`` of every array, then its done-marker (atomically)."""
        rows, cols = self.plan.rows(bi), self.plan.cols(bj)
        for name, arr in self._arrays.items():
            block = blocks[name]
            if isinstance(block, torch.Tensor):
                block = block.detach().cpu().numpy()
            arr[rows, cols] = block
        marker = self._marker(bi, bj)
        tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
        tmp.touch()
        os.replace(tmp, marker)

    def read_tile(self, name: str, bi: int, bj: int) -> np.ndarray:
        """Tile ``(bi, bj)`` of array ``name`` as a NumPy array (mirrored from the upper
        triangle when symmetric); StoreError if it is not computed yet."""
        si, sj, mirrored = self.plan.stored_tile(bi, bj)
        if not self._marker(si, sj).exists():
            raise StoreError(f"tile ({si}, {sj}) of {self.path!r} is not computed yet; resume the store")
        block = self._array(name)[self.plan.rows(si), self.plan.cols(sj)]
        return np.ascontiguousarray(mirror(block)) if mirrored else block

    def _array(self, name: str) -> Any:
        if name not in self._arrays:
            raise InvalidArgumentError(f"unknown kernel array {name!r}; the store holds {list(self._arrays)}")
        return self._arrays[name]

    # -- whole arrays --------------------------------------------------------------------------
    def shape(self, name: str | None = None) -> tuple[int, ...]:
        """Shape ``(N1, N2, *trailing)`` of array ``name`` (default: the only or last one)."""
        return tuple(self._array(self._default(name)).shape)

    def _default(self, name: str | None) -> str:
        return self.names[-1] if name is None else name

    def to_numpy(self, name: str | None = None) -> np.ndarray:
        """Array ``name`` (default: the last, e.g. ``"ntk"``) assembled in memory."""
        name = self._default(name)
        out = np.empty(self.shape(name), dtype=self._array(name).dtype)
        gi, gj = self.plan.grid
        for bi in range(gi):
            for bj in range(gj):
                out[self.plan.rows(bi), self.plan.cols(bj)] = self.read_tile(name, bi, bj)
        return out

    def to_tensor(self, name: str | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """Array ``name`` as a torch tensor; with ``name="all"`` a dict of every array."""
        if name == "all":
            return {n: torch.from_numpy(self.to_numpy(n)) for n in self.names}
        return torch.from_numpy(self.to_numpy(name))

    def diagonal(self, name: str | None = None) -> np.ndarray:
        """Diagonal ``K[i, i, ...]`` of a square kernel, shape ``(N, *trailing)``."""
        name = self._default(name)
        if self.plan.n1 != self.plan.n2:
            raise InvalidArgumentError("`diagonal` needs a square kernel (N1 == N2)")
        parts = [np.diagonal(self.read_tile(name, b, b), axis1=0, axis2=1) for b in range(self.plan.grid[0])]
        return np.moveaxis(np.concatenate(parts, axis=-1), -1, 0)

    def __repr__(self) -> str:
        done = len(self.done_tiles())
        return (
            f"KernelStore({self.path!r}, arrays={list(self.names)}, shape={self.shape()}, "
            f"tile={self.plan.tile}, tiles={done}/{self.plan.n_tiles})"
        )


def _compressors(compressor: str | None) -> Any:
    if compressor is None:
        return None
    if compressor == "zstd":
        from zarr.codecs import ZstdCodec

        return [ZstdCodec(level=1)]
    if compressor == "blosc":
        from zarr.codecs import BloscCodec

        return [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")]
    raise InvalidArgumentError(f"unknown compressor={compressor!r}; expected None, 'zstd' or 'blosc'")
