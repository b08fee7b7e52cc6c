"""Validation, conversion and flattening of kernels and targets for :mod:`torchntk.dynamics` (private).

Two kernel layouts are accepted everywhere in :mod:`torchntk.dynamics` (CONVENTIONS section 3):

- a *scalar* kernel ``(N1, N2)``, applied to each of the ``O`` outputs independently
  (the full kernel is then ``Theta (x) I_O``);
- a *full* kernel ``(N1, N2, O, O)``, flattened sample-major to ``(N1*O, N2*O)`` with row
  ``i*O + a`` (:func:`torchntk.empirical.flatten_kernel`).

Targets ``y`` are ``(N, O)`` or ``(N,)`` (one output). Inputs may be torch tensors or numpy
arrays; they are converted to ``dtype`` (float64 by default) on the kernel's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .._checks import check_choice
from .._kernel_checks import as_tensor, check_eigenvalues, check_kernel, eigh_psd, eigvalsh_psd, pinv_eigenvalues
from ..empirical import flatten_kernel
from ..errors import InvalidArgumentError, ShapeError

# The kernel checks of the package's floor, used through this module by every dynamics function.
__all__ = ["DEFAULT_DTYPE", "TrainKernel", "as_tensor", "check_eigenvalues", "check_kernel", "cross_kernel",
           "eigh_psd", "eigvalsh_psd", "outputs_like", "pinv_eigenvalues", "regularize", "ridge", "targets", "times",
           "train_kernel"]

DEFAULT_DTYPE = torch.float64


@dataclass(frozen=True)
class TrainKernel:
    """A validated train-train kernel.

    ``matrix`` is ``(N, N)`` for a scalar kernel or the flattened ``(N*O, N*O)`` one for a
    full kernel; ``full`` tells which; ``n`` is the number of samples N and ``o`` the number
    of outputs of a full kernel (``None`` for a scalar kernel, which fits any O).
    """

    matrix: torch.Tensor
    n: int
    o: int | None
    full: bool
    source_dtype: torch.dtype = DEFAULT_DTYPE


def train_kernel(name: str, value: Any, *, dtype: torch.dtype | None = DEFAULT_DTYPE) -> TrainKernel:
    """Validate a train-train kernel ``(N, N)`` or ``(N, N, O, O)`` by
    :func:`torchntk._kernel_checks.check_kernel` (finite, symmetric, the O(N^2) conditions of
    PSD) on its 2-D form; the returned matrix is symmetrized."""
    k = as_tensor(name, value, dtype=None, finite=False)
    source_dtype = k.dtype
    if k.ndim == 2:
        n, o, full, mat = k.shape[0], None, False, k
    elif k.ndim == 4:
        if k.shape[0] != k.shape[1] or k.shape[2] != k.shape[3]:
            raise ShapeError(
                f"`{name}` must be a full (N, N, O, O) kernel, got shape {tuple(k.shape)}"
            )
        n, o, full, mat = k.shape[0], k.shape[2], True, flatten_kernel(k)
    else:
        raise ShapeError(
            f"`{name}` must be a scalar (N, N) or full (N, N, O, O) kernel, "
            f"got a {k.ndim}-D tensor of shape {tuple(k.shape)}"
        )
    if mat.numel() == 0:
        raise ShapeError(f"`{name}` is empty (shape {tuple(k.shape)})")
    mat = check_kernel(name, mat, dtype=dtype, source_dtype=source_dtype)
    return TrainKernel(mat, n, o, full, source_dtype)


def cross_kernel(
    name: str, value: Any, kt: TrainKernel, o: int, *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Validate a test-train kernel against the train kernel; return it 2-D.

    Scalar train kernels want ``(M, N)``; full ones want ``(M, N, O, O)``, returned flattened
    as ``(M*O, N*O)``.
    """
    k = as_tensor(name, value, dtype=dtype, device=device)
    if not kt.full:
        if k.ndim != 2 or k.shape[1] != kt.n:
            raise ShapeError(
                f"`{name}` must be a (M, N={kt.n}) kernel to match the scalar train kernel, "
                f"got shape {tuple(k.shape)}"
            )
        return k
    if k.ndim != 4 or k.shape[1] != kt.n or k.shape[2] != o or k.shape[3] != o:
        raise ShapeError(
            f"`{name}` must be a (M, N={kt.n}, O={o}, O={o}) kernel to match the full train "
            f"kernel, got shape {tuple(k.shape)}"
        )
    return flatten_kernel(k)


def targets(
    name: str, value: Any, kt: TrainKernel, *, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, bool]:
    """Validate ``y`` against the train kernel; return it as ``(N, O)`` and whether it was 1-D."""
    y = as_tensor(name, value, dtype=dtype, device=device)
    squeeze = y.ndim == 1
    if squeeze:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != kt.n:
        raise ShapeError(
            f"`{name}` must be (N={kt.n}, O) or (N={kt.n},) to match the kernel, "
            f"got shape {tuple(value.shape) if hasattr(value, 'shape') else '?'}"
        )
    if kt.full and y.shape[1] != kt.o:
        raise ShapeError(
            f"`{name}` has {y.shape[1]} output(s) but the full kernel has O={kt.o}"
        )
    return y, squeeze


def outputs_like(
    name: str, value: Any, rows: int, o: int, *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Validate initial outputs ``f0``: ``(rows, O)``, ``(rows,)`` when O = 1, or a scalar."""
    f = as_tensor(name, value, dtype=dtype, device=device)
    if f.ndim == 0:
        return f.expand(rows, o).clone()
    if f.ndim == 1 and o == 1 and f.shape[0] == rows:
        return f[:, None]
    if f.ndim == 2 and tuple(f.shape) == (rows, o):
        return f
    raise ShapeError(f"`{name}` must have shape ({rows}, {o}), got {tuple(f.shape)}")


def times(name: str, value: Any, *, integer: bool = False) -> tuple[torch.Tensor, bool]:
    """Validate times ``t`` (scalar or 1-D, >= 0, inf allowed); return float64 CPU 1-D and
    whether a time axis must be kept."""
    t = as_tensor(name, value, dtype=torch.float64, device="cpu", finite=False)
    if t.ndim > 1:
        raise ShapeError(f"`{name}` must be a scalar or a 1-D tensor of times, got {tuple(t.shape)}")
    if bool(torch.isnan(t).any()):
        raise InvalidArgumentError(f"`{name}` contains NaN")
    if bool((t < 0).any()):
        raise InvalidArgumentError(f"`{name}` must be >= 0 (times cannot be negative), got min "
                                   f"{float(t.min()):g}")
    if integer:
        finite = t[torch.isfinite(t)]
        if bool((finite != finite.round()).any()):
            raise InvalidArgumentError(
                f"`{name}` counts gradient-descent steps here and must hold whole numbers"
            )
    return t.reshape(-1), t.ndim == 1


def regularize(
    mat: torch.Tensor, diag_reg: float, diag_reg_mode: str
) -> torch.Tensor:
    """``K + diag_reg * s * I`` with ``s`` = mean diagonal ("relative") or 1 ("absolute")."""
    mu = ridge(diag_reg, diag_reg_mode, lambda: float(torch.diagonal(mat).mean()))
    if mu == 0:
        return mat
    return mat + mu * torch.eye(mat.shape[0], dtype=mat.dtype, device=mat.device)


def ridge(diag_reg: float, diag_reg_mode: str, mean_diagonal: Callable[[], float]) -> float:
    """The ridge ``diag_reg * s`` added to a kernel's diagonal, ``s`` as in :func:`regularize`.

    ``mean_diagonal`` is called only in ``"relative"`` mode with ``diag_reg > 0``.
    """
    diag_reg_mode = check_choice("diag_reg_mode", diag_reg_mode, ("relative", "absolute"), any_case=True)
    if isinstance(diag_reg, bool) or not isinstance(diag_reg, (int, float)) or not math.isfinite(diag_reg) \
            or diag_reg < 0:
        raise InvalidArgumentError(f"`diag_reg` must be a finite float >= 0, got {diag_reg!r}")
    if diag_reg == 0:
        return 0.0
    return diag_reg * (mean_diagonal() if diag_reg_mode == "relative" else 1.0)
