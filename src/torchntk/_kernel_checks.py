"""The one validation of kernel matrices, used by every consumer of a kernel (private floor).

A *kernel matrix* here is a square ``(D, D)`` train-train kernel: an NNGP ``Sigma`` or an NTK
``Theta`` on N inputs (``D = N``), or the flattened ``(N*O, N*O)`` form of a full kernel. Every
consumer (``dynamics``, ``gp``, the ``scale`` solvers, the feature solvers, the CLI) calls
:func:`check_kernel` on it, so a kernel is refused with the same error and message everywhere:

- **shape**: 2-D, square, non-empty (``ShapeError``);
- **finite**: no NaN or Inf (``NonFiniteError``);
- **symmetric**: ``max |K - K^T| <= SYM_RTOL * max |K|`` (``InvalidArgumentError``). The bound is
  relative to the precision the kernel was computed in: kernels built tile by tile are mirrored
  exactly, and entries ``(i, j)`` and ``(j, i)`` computed separately differ by the rounding of
  their sums (a few ulp, amplified to about ``sqrt(eps) max |K|`` where the arc-cosine rules meet
  correlation 1), far below 1e-6 in float64 and 1e-5 in float32; a genuinely non-symmetric
  matrix is off by O(1). The returned matrix is ``(K + K^T) / 2``.
- **positive semi-definite**, within ``PSD_RTOL`` of the kernel's scale (``InvalidArgumentError``):
  :func:`check_kernel` tests the necessary conditions that cost ``O(D^2)``, a non-negative
  diagonal and the 2 x 2 minors ``K_ij^2 <= K_ii K_jj`` (Cauchy-Schwarz), each to
  ``PSD_RTOL * max diag K``; consumers that decompose the kernel anyway (:func:`eigh_psd`,
  :func:`check_eigenvalues`) test every eigenvalue: ``lam_min >= -PSD_RTOL * lam_max``.
  By Weyl's inequality a perturbation ``E`` of the entries moves the eigenvalues by at most
  ``||E||_2``; the rounding of a float64 kernel, including the ``sqrt(eps) ~ 1.5e-8`` relative
  error of the arc-cosine rules at duplicate inputs, stays below ``1e-7 lam_max``, while an
  indefinite kernel has eigenvalues O(1) of ``lam_max`` below zero. Eigenvalues in
  ``[-PSD_RTOL lam_max, 0)`` are round-off and are set to 0.

The pseudo-inverse of a PSD kernel keeps the modes above ``lam_max * D * eps``
(:func:`pinv_eigenvalues`), the rank cut of ``numpy.linalg.pinv``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._checks import check_finite
from .errors import InvalidArgumentError, ShapeError

__all__ = ["SYM_RTOL", "PSD_RTOL", "as_tensor", "check_kernel", "check_eigenvalues", "eigh_psd",
           "eigvalsh_psd", "pinv_cut", "pinv_eigenvalues"]

DEFAULT_DTYPE = torch.float64

#: Largest tolerated ``max |K - K^T| / max |K|``, by the dtype the kernel was computed in
#: (lower precisions: 1e-2).
SYM_RTOL = {torch.float64: 1e-6, torch.float32: 1e-5}
#: Largest tolerated ``-lam_min / lam_max`` (and the same for the O(D^2) conditions, relative to
#: the largest diagonal entry), by the dtype the kernel was computed in (lower precisions: 1e-2).
PSD_RTOL = {torch.float64: 1e-7, torch.float32: 1e-4}
_LOW_PRECISION_RTOL = 1e-2


def _rtol(table: dict, dtype: torch.dtype) -> float:
    return table.get(dtype, _LOW_PRECISION_RTOL)


def as_tensor(
    name: str,
    value: Any,
    *,
    dtype: torch.dtype | None = DEFAULT_DTYPE,
    device: torch.device | str | None = None,
    finite: bool = True,
) -> torch.Tensor:
    """Convert ``value`` (tensor, numpy array, list or number) to a floating tensor.

    The tensor keeps its device unless ``device`` is given; it is cast to ``dtype``
    (``None`` keeps a floating dtype, and casts integers to float64). ``finite=True`` raises
    ``NonFiniteError`` naming ``name`` on NaN or Inf.
    """
    if isinstance(value, torch.Tensor):
        out = value
    elif isinstance(value, (np.ndarray, np.generic, list, tuple, int, float)):
        try:
            out = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as err:
            raise InvalidArgumentError(f"`{name}` could not be converted to a tensor: {err}")
    else:
        raise InvalidArgumentError(
            f"`{name}` must be a torch.Tensor or a numpy array, got {type(value).__name__}"
        )
    if out.is_complex():
        raise InvalidArgumentError(f"`{name}` must be real, got dtype {out.dtype}")
    target = dtype if dtype is not None else (
        out.dtype if out.is_floating_point() else DEFAULT_DTYPE
    )
    out = out.to(device=device if device is not None else out.device, dtype=target)
    if finite:
        check_finite(name, out)
    return out


def check_kernel(
    name: str,
    value: Any,
    *,
    dtype: torch.dtype | None = DEFAULT_DTYPE,
    source_dtype: torch.dtype | None = None,
    psd: bool = True,
) -> torch.Tensor:
    """Validate a square train-train kernel matrix; return it symmetrized, ``(K + K^T) / 2``.

    Args:
        name: the argument's name, used in every message.
        value: ``(D, D)`` tensor or numpy array (any real dtype).
        dtype: the dtype of the returned matrix (float64 by default; ``None`` keeps a floating
            dtype).
        source_dtype: the precision the kernel was computed in, which sets the tolerances
            (default: ``value``'s own floating dtype).
        psd: also test the ``O(D^2)`` necessary conditions of positive semi-definiteness (a
            non-negative diagonal, ``K_ij^2 <= K_ii K_jj``), within ``PSD_RTOL`` (module doc).

    Raises:
        ShapeError: not 2-D, not square, or empty. NonFiniteError: NaN or Inf entries.
        InvalidArgumentError: not symmetric, or not PSD, within the tolerances of the module doc.
    """
    k = as_tensor(name, value, dtype=None, finite=False)
    src = source_dtype or k.dtype
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ShapeError(f"`{name}` must be a square (N, N) kernel matrix, got shape {tuple(k.shape)}")
    if k.shape[0] == 0:
        raise ShapeError(f"`{name}` is empty (shape {tuple(k.shape)})")
    check_finite(name, k)
    k = k.to(dtype if dtype is not None else k.dtype)
    kd = k.detach()
    scale = float(kd.abs().max())
    asym = float((kd - kd.T).abs().max())
    tol = _rtol(SYM_RTOL, src)
    if asym > tol * scale and asym > 0:
        raise InvalidArgumentError(
            f"`{name}` must be a symmetric kernel: max |K - K^T| = {asym:.3g} is more than "
            f"{tol:g} x max |K| = {scale:.3g}"
        )
    sym = 0.5 * (k + k.T)
    if psd:
        _check_minors(name, sym.detach(), _rtol(PSD_RTOL, src))
    return sym


def _check_minors(name: str, k: torch.Tensor, rtol: float) -> None:
    """The diagonal and the 2 x 2 principal minors of a PSD matrix are >= 0 (to ``rtol``)."""
    diag = torch.diagonal(k)
    top = float(diag.max())
    slack = rtol * max(abs(top), float(k.abs().max()), 1e-300)
    low = float(diag.min())
    if low < -slack:
        i = int(diag.argmin())
        raise InvalidArgumentError(
            f"`{name}` is not positive semi-definite: diagonal entry {i} is {low:.3g} "
            f"(a kernel's diagonal K(x, x) is a variance, >= 0)"
        )
    root = diag.clamp_min(0).sqrt()
    excess = k.abs() - root[:, None] * root[None, :]
    worst = float(excess.max())
    if worst > slack:
        flat = int(excess.argmax())
        i, j = divmod(flat, k.shape[1])
        raise InvalidArgumentError(
            f"`{name}` is not positive semi-definite: |K[{i}, {j}]| = {float(k[i, j].abs()):.3g} "
            f"exceeds sqrt(K[{i}, {i}] K[{j}, {j}]) = {float(root[i] * root[j]):.3g} (Cauchy-Schwarz)"
        )


def check_eigenvalues(name: str, lam: torch.Tensor, source_dtype: torch.dtype) -> torch.Tensor:
    """Ascending eigenvalues ``lam`` of a kernel with round-off negatives set to 0.

    Raises ``InvalidArgumentError`` naming ``name`` when ``lam_min < -PSD_RTOL * lam_max``
    (1e-7 for a kernel computed in float64, 1e-4 in float32; module doc).
    """
    top = float(lam[-1]) if lam.numel() else 0.0
    rtol = _rtol(PSD_RTOL, source_dtype)
    low = float(lam[0]) if lam.numel() else 0.0
    if low < -rtol * max(abs(top), 1e-300):
        raise InvalidArgumentError(
            f"`{name}` is not positive semi-definite: smallest eigenvalue {low:.3g}, "
            f"largest {top:.3g} (tolerated: -{rtol:g} x largest)"
        )
    return lam.clamp_min(0.0)


def eigh_psd(name: str, mat: torch.Tensor, source_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigendecomposition ``mat = Q diag(lam) Q^T`` of a symmetric kernel, ``lam`` ascending,
    checked by :func:`check_eigenvalues` (round-off negatives set to 0).

    On the CPU the decomposition is LAPACK's divide-and-conquer ``syevd`` through
    ``scipy.linalg.eigh`` (measured 1.2-2x faster than ``torch.linalg.eigh`` on an AMD CPU,
    where torch's MKL build is slow); elsewhere (GPU) it is ``torch.linalg.eigh``.
    """
    if mat.device.type == "cpu" and mat.dtype in (torch.float32, torch.float64) and not mat.requires_grad:
        import scipy.linalg

        w, v = scipy.linalg.eigh(mat.numpy(), driver="evd", check_finite=False)
        lam, q = torch.from_numpy(w), torch.from_numpy(v)
    else:
        lam, q = torch.linalg.eigh(mat)
    return check_eigenvalues(name, lam, source_dtype), q


def eigvalsh_psd(name: str, mat: torch.Tensor, source_dtype: torch.dtype) -> torch.Tensor:
    """Ascending eigenvalues of a symmetric kernel ``mat`` (no eigenvectors), checked by
    :func:`check_eigenvalues` (round-off negatives set to 0)."""
    return check_eigenvalues(name, torch.linalg.eigvalsh(mat.detach()), source_dtype)


def pinv_eigenvalues(lam: torch.Tensor, cut: float | None = None) -> torch.Tensor:
    """``1 / lam`` on the modes of the pseudo-inverse, 0 on the others, shape of ``lam``.

    ``lam`` (D,) are the eigenvalues of a PSD kernel in ascending order; a mode is kept when
    ``lam > lam_max * D * eps`` (``eps`` of ``lam``'s dtype), the rank cut of ``numpy.linalg.pinv``
    (:func:`pinv_cut`). ``cut`` replaces that threshold (e.g. the cut of the unshifted
    eigenvalues for ``lam + ridge``, of any shape).
    """
    cut = pinv_cut(lam) if cut is None else cut
    return torch.where(lam > cut, 1.0 / lam.clamp_min(cut or 1e-300), torch.zeros_like(lam))


def pinv_cut(lam: torch.Tensor) -> float:
    """The rank cut ``lam_max * D * eps`` of :func:`pinv_eigenvalues` (0 for no eigenvalues)."""
    if lam.numel() == 0:
        return 0.0
    return float(lam[-1]) * lam.shape[0] * torch.finfo(lam.dtype).eps
