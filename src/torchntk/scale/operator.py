"""The kernel as a matrix-free ``scipy.sparse.linalg.LinearOperator``.

:class:`KernelOperator` represents ``A = K + diag_reg * I`` for a symmetric positive
semi-definite kernel ``K`` of ``N`` rows, through its product with a block of vectors
``V (N, m) -> K V (N, m)`` (float64). Three sources:

- :meth:`KernelOperator.from_tensor`: a kernel in memory;
- :meth:`KernelOperator.from_store`: a :class:`~torchntk.scale.KernelStore`, streamed tile by
  tile (each computed tile is read once per product; the lower triangle of a symmetric store
  is applied through the transpose of the upper tiles), so memory stays one tile;
- :meth:`KernelOperator.from_model`: NTK-vector products of a network without ever storing
  Theta: ``Theta V = J (J^T V)``, a vector-Jacobian product (``torch.func.vjp``) then a
  Jacobian-vector product (``torch.func.jvp``), streamed over chunks of the inputs.

A full kernel ``(N, N, O, O)`` is used in its flattened form ``(N*O, N*O)``, row ``i*O + a``.

Example::

    >>> op = KernelOperator.from_store(KernelStore.open("k.zarr"), "ntk", diag_reg=1e-3)  # doctest: +SKIP
    >>> op.shape, (op @ np.ones(op.shape[0])).shape
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from .._checks import renamed
from .._kernel_checks import PSD_RTOL, check_kernel
from ..empirical import flatten_kernel
from ..errors import InvalidArgumentError, ShapeError
from ._ntvp import ModelNtvp
from .store import KernelStore

MatMat = Callable[[np.ndarray], np.ndarray]


class KernelOperator(LinearOperator):
    """``A = K + diag_reg I`` as a symmetric ``LinearOperator`` of shape ``(n, n)``, float64.

    Args:
        matmat: ``V (n, m) -> K V (n, m)`` (without the regularizer).
        n: size.
        diag_reg: the ridge added to the diagonal.
        diagonal: optional ``() -> diag(K) (n,)`` (used by the Jacobi preconditioner).
    """

    def __init__(self, matmat: MatMat, n: int, *, diag_reg: float = 0.0,
                 diagonal: Callable[[], np.ndarray] | None = None) -> None:
        if diag_reg < 0:
            raise InvalidArgumentError(f"`diag_reg` must be >= 0, got {diag_reg}")
        super().__init__(dtype=np.float64, shape=(n, n))
        self._kmatmat, self.diag_reg, self._diagonal = matmat, float(diag_reg), diagonal
        self.n_products = 0  # number of kernel-times-block products so far (columns counted)

    # -- LinearOperator protocol ------------------------------------------------------------
    def _matmat(self, V: np.ndarray) -> np.ndarray:
        V = np.asarray(V, dtype=np.float64)
        self.n_products += V.shape[1]
        out = self._kmatmat(V)
        if self.diag_reg:
            out = out + self.diag_reg * V
        return out

    def _matvec(self, v: np.ndarray) -> np.ndarray:
        return self._matmat(np.asarray(v).reshape(-1, 1)).reshape(-1)

    def _rmatvec(self, v: np.ndarray) -> np.ndarray:
        return self._matvec(v)

    def _adjoint(self) -> "KernelOperator":
        return self

    def shifted(self, diag_reg: float) -> "KernelOperator":
        """The same kernel with another ridge ``diag_reg``."""
        return KernelOperator(self._kmatmat, self.shape[0], diag_reg=diag_reg, diagonal=self._diagonal)

    def diagonal(self) -> np.ndarray:
        """``diag(A) = diag(K) + diag_reg`` (n,)."""
        if self._diagonal is None:
            raise InvalidArgumentError("this operator does not know its diagonal; use another preconditioner")
        return np.asarray(self._diagonal(), dtype=np.float64) + self.diag_reg

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def from_tensor(cls, kernel: torch.Tensor | np.ndarray, *, diag_reg: float = 0.0,
                    name: str = "kernel") -> "KernelOperator":
        """From a kernel ``(N, N)`` or a full ``(N, N, O, O)`` one (flattened) in memory, checked
        by :func:`torchntk._kernel_checks.check_kernel` (finite, symmetric, the O(N^2)
        conditions of PSD; errors name the argument ``name``) and symmetrized."""
        t = kernel.detach().cpu() if isinstance(kernel, torch.Tensor) else torch.as_tensor(np.asarray(kernel))
        if t.ndim not in (2, 4) or (t.ndim == 4 and t.shape[2] != t.shape[3]):
            raise ShapeError(f"`{name}` must be a kernel (N, N) or (N, N, O, O), got shape {tuple(t.shape)}")
        source = t.dtype if t.is_floating_point() else torch.float64
        flat = t if t.ndim == 2 else flatten_kernel(t)
        k = check_kernel(name, flat, dtype=torch.float64, source_dtype=source).numpy()
        return cls(lambda V: k @ V, k.shape[0], diag_reg=diag_reg, diagonal=lambda: np.diagonal(k).copy())

    @classmethod
    def from_store(cls, store: KernelStore | str, name: str | None = None, *,
                   diag_reg: float = 0.0) -> "KernelOperator":
        """From a complete square kernel store, streamed tile by tile for every product."""
        store = KernelStore.open(store) if not isinstance(store, KernelStore) else store
        name = store._default(name)
        if store.plan.n1 != store.plan.n2:
            raise ShapeError(f"the store's kernel is {store.plan.n1} x {store.plan.n2}; an operator needs a square one")
        missing = store.missing_tiles()
        if missing:
            raise InvalidArgumentError(f"the store {store.path!r} misses {len(missing)} tiles; resume it first")
        if not store.plan.symmetric:
            raise InvalidArgumentError(
                f"the store {store.path!r} holds a cross kernel K(x1, x2); an operator needs the "
                "symmetric train-train kernel K(x, x) (tiled_kernel with x2=None)")
        o = _outputs(store.shape(name))
        diag = _flat_diag(store.diagonal(name))
        if not np.all(np.isfinite(diag)) or diag.min() < -PSD_RTOL[torch.float64] * max(np.abs(diag).max(), 1e-300):
            raise InvalidArgumentError(
                f"the store's kernel {name!r} is not positive semi-definite: its diagonal (variances "
                f"K(x, x)) reaches {diag.min():.3g}")
        return cls(lambda V: store_matmat(store, name, V), store.plan.n1 * o, diag_reg=diag_reg,
                   diagonal=lambda: _flat_diag(store.diagonal(name)))

    @classmethod
    def from_model(cls, model: torch.nn.Module, x: torch.Tensor, *, mode: str = "full",
                   block_size: int = 1024, diag_reg: float = 0.0,
                   chunk: int | None = None) -> "KernelOperator":
        """The empirical NTK of ``model`` on ``x`` by NTK-vector products, never stored.

        ``mode="full"``: size ``N*O`` (flattened ``(N, N, O, O)`` kernel); ``mode="mean"``:
        size ``N``, ``(1/O) sum_a J_a J_a^T`` (O products per application). ``block_size``
        inputs are pushed through the model at a time (``chunk``: its deprecated name). The
        model should be in ``eval()`` mode.
        """
        block_size = renamed("block_size", block_size, "chunk", chunk, 1024)
        ntvp = ModelNtvp(model, x, mode=mode, chunk=block_size)
        return cls(ntvp.matmat, ntvp.size, diag_reg=diag_reg)


def store_matmat(store: KernelStore, name: str, V: np.ndarray) -> np.ndarray:
    """``K V`` for a (possibly rectangular, possibly symmetric) store, one tile at a time.

    ``V``: ``(N2*O, m)``; returns ``(N1*O, m)``. Each computed tile is read once (and checked
    against its checksum when the store verifies reads).
    """
    plan, o = store.plan, _outputs(store.shape(name))
    out = np.zeros((plan.n1 * o, V.shape[1]), dtype=np.float64)
    for bi, bj in plan.tiles():
        rows, cols = plan.rows(bi), plan.cols(bj)
        block = _flatten(store.read_tile(name, bi, bj)).astype(np.float64, copy=False)
        r = slice(rows.start * o, rows.stop * o)
        c = slice(cols.start * o, cols.stop * o)
        out[r] += block @ V[c]
        if plan.symmetric and bi != bj:
            out[c] += block.T @ V[r]
    return out


def _outputs(shape: tuple[int, ...]) -> int:
    if len(shape) == 2:
        return 1
    if len(shape) == 4 and shape[2] == shape[3]:
        return shape[2]
    raise ShapeError(f"an operator needs a kernel (N, N) or (N, N, O, O), got shape {shape}")


def _flatten(k: np.ndarray) -> np.ndarray:
    """``(r, c)`` as is; ``(r, c, O, O) -> (r*O, c*O)`` with row ``i*O + a``."""
    if k.ndim == 2:
        return k
    if k.ndim == 4:
        return flatten_kernel(torch.from_numpy(np.ascontiguousarray(k))).numpy()
    raise ShapeError(f"an operator needs a kernel (N, N) or (N, N, O, O), got shape {k.shape}")


def _flat_diag(d: np.ndarray) -> np.ndarray:
    """Diagonal of the flattened kernel from ``K[i, i, ...]`` ((N,) or (N, O, O))."""
    if d.ndim == 1:
        return d
    return np.diagonal(d, axis1=1, axis2=2).reshape(-1)


def as_operator(kernel: Any, diag_reg: float | None = None, name: str = "kernel") -> KernelOperator:
    """A tensor, array, store or operator as a :class:`KernelOperator` (ridge ``diag_reg``); a
    tensor is checked as :meth:`KernelOperator.from_tensor` does (errors naming ``name``)."""
    if isinstance(kernel, KernelOperator):
        return kernel if diag_reg is None else kernel.shifted(diag_reg)
    if isinstance(kernel, KernelStore):
        return KernelOperator.from_store(kernel, diag_reg=diag_reg or 0.0)
    if isinstance(kernel, (torch.Tensor, np.ndarray)):
        return KernelOperator.from_tensor(kernel, diag_reg=diag_reg or 0.0, name=name)
    raise InvalidArgumentError(
        f"expected a kernel tensor, a KernelStore or a KernelOperator, got {type(kernel).__name__}"
    )
