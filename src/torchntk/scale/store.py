"""The kernel store: a zarr group with one chunk per tile, a manifest, and done-markers.

Layout of ``path`` (a directory; on a cluster it must be on a filesystem every worker sees)::

    path/zarr.json            the group; its attribute "torchntk" is the manifest
    path/<name>/              one array per kernel (e.g. "nngp", "ntk"), shape (N1, N2, *trailing),
                              chunks (tile, tile, *trailing): tile (bi, bj) is chunk (bi, bj)
    path/_tiles/<bi>_<bj>     the tile's done-marker and checksum record: JSON
                              ``{"sha256": {name: hex digest of the tile's bytes}}``, created
                              (by atomic rename) only after every array of the tile is written

A ``kill -9`` at any moment therefore loses at most the tiles in flight: their markers do not
exist, so a resume recomputes exactly them. In the symmetric case only tiles with ``bi <= bj``
exist; reads of the lower triangle are served by mirroring (see :mod:`torchntk.scale.tiles`).

A store is data, never code: nothing it names is imported or executed. Damage is detected: the
checksum of a tile is the sha256 of its C-ordered bytes in the array's dtype, checked on every
read when ``verify=True`` (the default) and for every finished tile on resume; a tile whose chunk
was deleted, altered or truncated raises a :class:`~torchntk.errors.StoreError` naming it, and a
resume recomputes it. Each store has an identity, ``manifest["store_id"]`` (a random uuid drawn
at creation), which tells a recreated store from the old one at the same path. Creation and
resume hold the writer lock ``<path>.lock`` (see :mod:`torchntk.scale._lock`).

Example::

    >>> store = KernelStore.open("kernel.zarr")          # doctest: +SKIP
    >>> store.manifest["identity"], store.missing_tiles()
    >>> ntk = store.to_tensor("ntk")                      # (N1, N2) float64 tensor
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import InvalidArgumentError, StoreError
from ._optional import require_zarr
from .tiles import TilePlan, mirror

_FORMAT = "torchntk.kernel-store"
_FORMAT_VERSION = 2  # 2: tile checksums in the done-markers, store_id
_ATTR = "torchntk"


class KernelStore:
    """A (possibly partial) tiled kernel on disk. Create with :func:`tiled_kernel`, open with
    :meth:`KernelStore.open`.

    Attributes:
        path: the store directory.
        manifest: the identity of the computation (dict): ``kernel`` (spec/model hash),
            ``x1``/``x2`` (data hashes), ``symmetric``, ``arrays`` (name -> shape, dtype),
            ``tile``, ``versions``, ``store_id`` and the user's ``identity`` (e.g. the CLI request).
        plan: the :class:`TilePlan`.
        verify: check each tile's checksum when it is read (default True).
        last_run: after :func:`tiled_kernel`, ``{"computed": k, "skipped": m, "repaired": r}``
            tiles (``repaired``: finished tiles found damaged and computed again).
    """

    def __init__(self, path: str | os.PathLike, group: Any, manifest: dict[str, Any], *,
                 verify: bool = True) -> None:
        self.path = str(path)
        self._group = group
        self.manifest = manifest
        self.plan = TilePlan(
            n1=manifest["n1"], n2=manifest["n2"], tile=manifest["tile"], symmetric=manifest["symmetric"]
        )
        self._arrays = {name: group[name] for name in manifest["arrays"]}
        self.verify = bool(verify)
        self._verified: set[tuple[str, int, int]] = set()
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
        ``"zstd"`` or ``"blosc"`` trade time for space. The caller holds the writer lock
        (:func:`tiled_kernel` does). A fresh ``store_id`` is drawn.
        """
        zarr = require_zarr()
        if Path(path).exists():
            raise StoreError(f"cannot create the kernel store {str(path)!r}: the path already exists")
        manifest = dict(manifest, format=_FORMAT, format_version=_FORMAT_VERSION, store_id=uuid.uuid4().hex)
        compressors = _compressors(compressor)
        try:
            group = zarr.open_group(str(path), mode="w-")
        except Exception as err:  # zarr raises several types (ContainsGroupError, FileExistsError...)
            raise StoreError(f"cannot create the kernel store {str(path)!r}: {type(err).__name__}: {err}") from err
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
    def open(cls, path: str | os.PathLike, *, verify: bool = True) -> "KernelStore":
        """Open an existing store (read and resume); StoreError if it is not one or its manifest
        is corrupt.

        ``verify=True`` (the default) checks every tile against its recorded sha256 when it is
        read, so a damaged tile raises a StoreError naming it instead of giving wrong numbers;
        ``verify=False`` skips the check (faster reads of a trusted store). Nothing named in the
        store is imported or executed.
        """
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
        version = manifest.get("format_version", 0)
        if not isinstance(version, int) or version > _FORMAT_VERSION:
            raise StoreError(
                f"the kernel store {str(path)!r} has format version {version!r}; "
                f"this torchntk reads up to {_FORMAT_VERSION}: upgrade torchntk"
            )
        _check_manifest(manifest, group, str(path))
        return cls(path, group, manifest, verify=verify)

    @property
    def store_id(self) -> str | None:
        """The store's identity (a uuid drawn at creation; None for stores of format 1)."""
        return self.manifest.get("store_id")

    # -- tiles ---------------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """Names of the kernel arrays, e.g. ``("nngp", "ntk")``; ``("kernel",)`` for a tensor."""
        return tuple(self._arrays)

    def _marker(self, bi: int, bj: int) -> Path:
        return Path(self.path) / "_tiles" / f"{bi}_{bj}"

    def done_tiles(self) -> set[tuple[int, int]]:
        """The tiles whose every array is written (their done-marker exists)."""
        done = set()
        planned = set(self.plan.tiles())
        for entry in os.scandir(Path(self.path) / "_tiles"):
            parts = entry.name.split("_")
            if len(parts) == 2 and all(p.isdigit() for p in parts):
                tile = (int(parts[0]), int(parts[1]))
                if tile in planned:
                    done.add(tile)
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
        """Write tile ``(bi, bj)`` of every array, then its done-marker holding the sha256 of
        each array's tile (written to a temporary name and renamed: atomic)."""
        rows, cols = self.plan.rows(bi), self.plan.cols(bj)
        digests = {}
        for name, arr in self._arrays.items():
            block = blocks[name]
            if isinstance(block, torch.Tensor):
                block = block.detach().cpu().numpy()
            block = np.ascontiguousarray(block, dtype=arr.dtype)
            arr[rows, cols] = block
            digests[name] = _digest(block)
        marker = self._marker(bi, bj)
        tmp = marker.with_name(f".{marker.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps({"sha256": digests}))
        os.replace(tmp, marker)
        self._verified -= {(name, bi, bj) for name in self._arrays}

    def _recorded(self, si: int, sj: int) -> dict[str, str]:
        """The checksums recorded in the marker of tile ``(si, sj)`` (empty if none)."""
        try:
            record = json.loads(self._marker(si, sj).read_text())
            digests = record["sha256"]
            return {str(k): str(v) for k, v in digests.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def _read_stored(self, name: str, si: int, sj: int) -> np.ndarray:
        try:
            return self._array(name)[self.plan.rows(si), self.plan.cols(sj)]
        except InvalidArgumentError:
            raise
        except Exception as err:  # zarr/numpy decoding errors of a truncated or corrupt chunk
            raise StoreError(
                f"tile ({si}, {sj}) of array {name!r} in the kernel store {self.path!r} cannot be "
                f"read (its chunk is truncated or corrupt: {type(err).__name__}); resume the store "
                "to recompute it"
            ) from err

    def verify_tile(self, bi: int, bj: int) -> None:
        """Check every array of the stored tile ``(bi, bj)`` against its recorded sha256;
        StoreError naming the tile and the array if it is missing, unreadable or altered."""
        recorded = self._recorded(bi, bj)
        for name in self._arrays:
            block = self._read_stored(name, bi, bj)
            self._check_digest(name, bi, bj, block, recorded)
            self._verified.add((name, bi, bj))

    def _check_digest(self, name: str, si: int, sj: int, block: np.ndarray, recorded: Mapping[str, str]) -> None:
        want = recorded.get(name)
        if want is None:
            raise StoreError(
                f"tile ({si}, {sj}) of array {name!r} in the kernel store {self.path!r} has no "
                "recorded checksum (damaged marker, or a store of an older torchntk); resume the "
                "store to recompute it"
            )
        if _digest(block) != want:
            raise StoreError(
                f"tile ({si}, {sj}) of array {name!r} in the kernel store {self.path!r} is damaged: "
                "its bytes differ from the sha256 recorded when it was written (chunk deleted or "
                "altered); resume the store to recompute it"
            )

    def damaged_tiles(self) -> list[tuple[int, int]]:
        """The finished tiles that fail :meth:`verify_tile`, in plan order (reads every tile)."""
        bad = []
        done = self.done_tiles()
        for tile in self.plan.tiles():
            if tile in done:
                try:
                    self.verify_tile(*tile)
                except StoreError:
                    bad.append(tile)
        return bad

    def forget_tiles(self, tiles: Sequence[tuple[int, int]]) -> None:
        """Remove the done-markers of ``tiles`` so that a resume recomputes them."""
        for bi, bj in tiles:
            self._marker(bi, bj).unlink(missing_ok=True)
            self._verified -= {(name, bi, bj) for name in self._arrays}

    def read_tile(self, name: str, bi: int, bj: int) -> np.ndarray:
        """Tile ``(bi, bj)`` of array ``name`` as a NumPy array (mirrored from the upper
        triangle when symmetric); StoreError if it is not computed yet, or (``verify``) if it
        fails its checksum (each array's tile is checked once per opened store)."""
        si, sj, mirrored = self.plan.stored_tile(bi, bj)
        if not self._marker(si, sj).exists():
            raise StoreError(f"tile ({si}, {sj}) of {self.path!r} is not computed yet; resume the store")
        block = self._read_stored(name, si, sj)
        if self.verify and (name, si, sj) not in self._verified:
            self._check_digest(name, si, sj, block, self._recorded(si, sj))
            self._verified.add((name, si, sj))
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


def _digest(block: np.ndarray) -> str:
    """sha256 of a block's C-ordered bytes."""
    return hashlib.sha256(np.ascontiguousarray(block).view(np.uint8).reshape(-1).data).hexdigest()


def _check_manifest(manifest: Mapping[str, Any], group: Any, path: str) -> None:
    """StoreError unless the manifest has the fields a store needs, consistent with its arrays."""
    def bad(what: str) -> StoreError:
        return StoreError(f"the kernel store {path!r} has a corrupt manifest: {what}; "
                          "delete the store and compute it again")

    def count(key: str) -> int:
        value = manifest.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad(f"{key!r} must be a positive integer, got {value!r}")
        return value

    n1, n2 = count("n1"), count("n2")
    count("tile")
    if not isinstance(manifest.get("symmetric"), bool):
        raise bad(f"'symmetric' must be true or false, got {manifest.get('symmetric')!r}")
    if manifest["symmetric"] and n1 != n2:
        raise bad(f"a symmetric store needs n1 == n2, got {n1} and {n2}")
    arrays = manifest.get("arrays")
    if not isinstance(arrays, dict) or not arrays:
        raise bad(f"'arrays' must name the kernel arrays, got {arrays!r}")
    for name, meta in arrays.items():
        shape = meta.get("shape") if isinstance(meta, dict) else None
        if not isinstance(shape, list) or len(shape) < 2 or shape[:2] != [n1, n2]:
            raise bad(f"array {name!r} must have a shape [n1, n2, ...] = [{n1}, {n2}, ...], got {shape!r}")
        try:
            arr = group[name]
        except Exception:  # noqa: BLE001  (zarr raises KeyError or its own types)
            raise bad(f"the array {name!r} it names does not exist") from None
        if list(arr.shape) != shape:
            raise bad(f"array {name!r} has shape {list(arr.shape)} on disk but {shape} in the manifest")
    if not (Path(path) / "_tiles").is_dir():
        raise bad("the folder '_tiles' of done-markers is missing")


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
