"""Matrix-free solvers on a :class:`~torchntk.scale.operator.KernelOperator`.

- :func:`top_eigh`: the ``k`` largest eigenpairs ``K q = lambda q`` (``eigsh``, Lanczos, or
  ``lobpcg``), descending.
- :func:`cg_solve`: ``(K + diag_reg I) alpha = y`` by conjugate gradients (scipy), optionally
  preconditioned by Jacobi (``diag(A)^{-1}``) or a randomized Nystrom approximation
  ``K ~ U diag(L) U^T`` of rank ``r``::

      P^{-1} = (L_r + mu) U (L + mu I)^{-1} U^T + (I - U U^T),   mu = diag_reg

  (Frangella, Tropp and Udell, 2023), which makes the spectrum of ``P^{-1} A`` cluster near
  ``L_r + mu``, so CG needs few iterations when the kernel's spectrum decays fast.
- :func:`kernel_regression`: ``f(x) = f0(x) + K(x, X) (K + mu I)^{-1} (y - f0(X))``, the
  t = infinity prediction of :func:`torchntk.dynamics.mse` (CONVENTIONS section 4) by CG, with
  its arguments and its ridge ``mu = diag_reg * s``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from scipy.linalg import cho_factor, solve_triangular
from scipy.sparse.linalg import LinearOperator, cg, eigsh, lobpcg

from .._checks import check_choice, renamed
from ..dynamics._kernels import ridge
from ..errors import ConvergenceWarning, InvalidArgumentError, ShapeError
from .operator import KernelOperator, as_operator, store_matmat
from .store import KernelStore


def top_eigh(kernel: Any, k: int, *, method: str = "eigsh", tol: float = 1e-10,
             seed: int = 0, maxiter: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenpairs of a symmetric kernel (tensor, store or operator).

    Returns ``(eigenvalues (k,) descending, eigenvectors (n, k) orthonormal columns)``.

    Example::

        >>> lam, Q = top_eigh(store, 20)                     # doctest: +SKIP
    """
    op = as_operator(kernel)
    n = op.shape[0]
    if not isinstance(k, int) or not 1 <= k < n:
        raise InvalidArgumentError(f"`k` must be an integer in [1, {n - 1}], got {k!r}")
    check_choice("method", method, ("eigsh", "lobpcg"))
    rng = np.random.default_rng(seed)
    if method == "eigsh":
        vals, vecs = eigsh(op, k=k, which="LA", tol=tol, v0=rng.standard_normal(n), maxiter=maxiter)
    else:
        x0 = rng.standard_normal((n, k))
        vals, vecs = lobpcg(op, x0, largest=True, tol=tol, maxiter=maxiter or 200)
    order = np.argsort(vals)[::-1]
    return vals[order], vecs[:, order]


def jacobi_preconditioner(op: KernelOperator) -> LinearOperator:
    """``diag(A)^{-1}`` as a LinearOperator."""
    d = op.diagonal()
    if np.any(d <= 0):
        raise InvalidArgumentError("the Jacobi preconditioner needs a positive diagonal; add diag_reg")
    inv = 1.0 / d
    return LinearOperator(op.shape, matvec=lambda v: inv * np.ravel(v),
                          matmat=lambda V: inv[:, None] * V, dtype=np.float64)


def nystrom(op: KernelOperator, rank: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Randomized Nystrom approximation ``K ~ U diag(L) U^T`` from one product ``K Omega``.

    Returns ``(L (r,) descending, U (n, r))``; costs one block product of ``rank`` columns.
    """
    n = op.shape[0]
    rank = min(rank, n)
    rng = np.random.default_rng(seed)
    omega, _ = np.linalg.qr(rng.standard_normal((n, rank)))
    y = op.shifted(0.0).matmat(omega)
    nu = np.sqrt(n) * np.finfo(np.float64).eps * np.linalg.norm(y, 2)
    y_nu = y + nu * omega
    c, _ = cho_factor(omega.T @ y_nu, lower=True)
    b = solve_triangular(c, y_nu.T, lower=True).T  # y_nu C^{-T}
    u, s, _ = np.linalg.svd(b, full_matrices=False)
    lam = np.maximum(s**2 - nu, 0.0)
    return lam, u


def nystrom_preconditioner(op: KernelOperator, rank: int, *, seed: int = 0) -> LinearOperator:
    """The Nystrom preconditioner ``P^{-1}`` of the module doc for ``A = K + mu I``."""
    mu = op.diag_reg
    if mu <= 0:
        raise InvalidArgumentError("the Nystrom preconditioner needs diag_reg > 0")
    lam, u = nystrom(op, rank, seed=seed)
    scale = (lam[-1] + mu) / (lam + mu)

    def apply(V: np.ndarray) -> np.ndarray:
        V = V.reshape(op.shape[0], -1)
        coef = u.T @ V
        return u @ (scale[:, None] * coef) + V - u @ coef

    return LinearOperator(op.shape, matvec=lambda v: apply(v).ravel(), matmat=apply, dtype=np.float64)


def cg_solve(kernel: Any, y: torch.Tensor | np.ndarray, *, diag_reg: float | None = None, rtol: float = 1e-6,
             maxiter: int | None = None, preconditioner: Any = None, rank: int = 100,
             seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
    """Solve ``(K + diag_reg I) alpha = y`` by (preconditioned) conjugate gradients.

    Args:
        kernel: a kernel tensor ``(N, N)``, a :class:`KernelStore` or a :class:`KernelOperator`.
        y: targets ``(N,)`` or ``(N, O)`` (one CG solve per column).
        diag_reg: ridge ``mu`` (None: the operator's own, 0 for a tensor or store); rtol: stop when ``||y - A alpha|| <= rtol ||y||`` per column.
        preconditioner: None, ``"jacobi"``, ``"nystrom"`` (of rank ``rank``) or a LinearOperator.

    Returns:
        ``alpha`` (shape of ``y``, float64 tensor) and ``info``: ``iterations`` (per column),
        ``relative_residual`` (per column, recomputed as ``||y - A alpha|| / ||y||``),
        ``converged`` (bool), ``products`` (kernel products used). A column that stops
        short of ``rtol`` (iteration limit or breakdown; or a recomputed residual above
        ``10 rtol``) also raises a :class:`~torchntk.errors.ConvergenceWarning`.

    Example::

        >>> alpha, info = cg_solve(store, y, diag_reg=1e-3, preconditioner="nystrom")  # doctest: +SKIP
    """
    op = as_operator(kernel, diag_reg)
    yn = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    yn = yn.astype(np.float64)
    if yn.ndim not in (1, 2) or yn.shape[0] != op.shape[0]:
        raise ShapeError(f"`y` must have shape ({op.shape[0]},) or ({op.shape[0]}, O), got {yn.shape}")
    Y = yn.reshape(op.shape[0], -1)
    if preconditioner is None:
        M = None
    elif isinstance(preconditioner, LinearOperator):
        M = preconditioner
    else:
        check_choice("preconditioner", preconditioner, ("jacobi", "nystrom"))
        M = jacobi_preconditioner(op) if preconditioner == "jacobi" else nystrom_preconditioner(op, rank, seed=seed)
    alpha = np.zeros_like(Y)
    iters, infos = [], []
    for j in range(Y.shape[1]):
        count = [0]

        def callback(_: np.ndarray) -> None:
            count[0] += 1

        sol, info = cg(op, Y[:, j], rtol=rtol, atol=0.0, maxiter=maxiter, M=M, callback=callback)
        alpha[:, j] = sol
        iters.append(count[0])
        infos.append(info)
    resid = np.linalg.norm(Y - op.matmat(alpha), axis=0) / np.maximum(np.linalg.norm(Y, axis=0), 1e-300)
    # scipy's flag, and the recomputed residual (scipy stops on its recursive residual, which
    # drifts from the true one; allow a factor 10 for that drift)
    short = [j for j, (i, r) in enumerate(zip(infos, resid)) if i != 0 or not r <= 10 * rtol]
    out = {
        "iterations": iters,
        "relative_residual": resid.tolist(),
        "converged": not short,
        "products": op.n_products,
    }
    if short:
        warnings.warn(
            f"cg_solve stopped short of rtol={rtol:g} on {len(short)} of {Y.shape[1]} column(s): "
            f"relative residual up to {float(np.max(resid[short])):.3g} after "
            f"{max(iters[j] for j in short)} iterations; raise `maxiter`, add `diag_reg` or a "
            "preconditioner (info['relative_residual'] has every column)",
            ConvergenceWarning,
            stacklevel=2,
        )
    return torch.from_numpy(alpha.reshape(yn.shape)), out


def kernel_regression(ntk_train_train: Any = None, y_train: torch.Tensor = None, ntk_test_train: Any = None, *,
                      f0_train: torch.Tensor | None = None, f0_test: torch.Tensor | None = None,
                      diag_reg: float | None = None, diag_reg_mode: str | None = None,
                      kernel_train: Any = None, kernel_test_train: Any = None,
                      **cg_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Kernel regression (t = infinity of :func:`torchntk.dynamics.mse`) by CG:
    ``f = f0 + Theta(x, X) alpha``, ``alpha = (Theta(X, X) + mu I)^{-1} (y - f0(X))``.

    Args:
        ntk_train_train: ``(N, N)`` or ``(N, N, O, O)`` tensor, a :class:`KernelStore` or a
            :class:`KernelOperator`.
        y_train: targets ``(N,)`` or ``(N, O)``; f0_train, f0_test: initial outputs (zeros).
        ntk_test_train: ``(N_test, N)`` tensor or a rectangular :class:`KernelStore`.
        diag_reg, diag_reg_mode: the ridge ``mu = diag_reg * s`` of :func:`torchntk.dynamics.mse`,
            ``s`` the mean diagonal (``"relative"``) or 1 (``"absolute"``). ``diag_reg=None``
            keeps an operator's own ridge (0 for a tensor or store). Without ``diag_reg_mode``
            the ridge is absolute, with a ``FutureWarning``: the default will become
            ``"relative"``, as in ``mse``.
        kernel_train, kernel_test_train: deprecated names of ``ntk_train_train``, ``ntk_test_train``.
        cg_kwargs: of :func:`cg_solve` (``rtol``, ``maxiter``, ``preconditioner``...).

    Returns ``(f_train (N, O), f_test (N_test, O) or None, info)``. ``f_test`` is ``mse``'s
    ``t = inf`` prediction; ``f_train`` is the ridge fit ``f0 + Theta alpha`` (equal to
    ``y - mu alpha``), where ``mse``, which trains with the kernel ``Theta + mu I``, returns ``y``.
    """
    ntk_train_train = renamed("ntk_train_train", ntk_train_train, "kernel_train", kernel_train)
    ntk_test_train = renamed("ntk_test_train", ntk_test_train, "kernel_test_train", kernel_test_train)
    if ntk_train_train is None or y_train is None:
        raise InvalidArgumentError("`ntk_train_train` and `y_train` are required")
    y = torch.as_tensor(y_train, dtype=torch.float64)
    y2 = y.reshape(y.shape[0], -1)
    f0 = torch.zeros_like(y2) if f0_train is None else torch.as_tensor(f0_train, dtype=torch.float64).reshape(y2.shape)
    op = as_operator(ntk_train_train, name="ntk_train_train")
    if diag_reg is not None:
        if diag_reg_mode is None:
            if diag_reg:
                warnings.warn("kernel_regression: pass diag_reg_mode='absolute' to keep an absolute ridge; "
                              "the default will become 'relative', as in torchntk.dynamics.mse",
                              FutureWarning, stacklevel=2)
            diag_reg_mode = "absolute"
        op = op.shifted(ridge(diag_reg, diag_reg_mode, lambda: float(np.mean(op.diagonal())) - op.diag_reg))
    alpha, info = cg_solve(op, y2 - f0, **cg_kwargs)
    f_train = y2 - op.diag_reg * alpha
    f_test = None
    if ntk_test_train is not None:
        if isinstance(ntk_test_train, KernelStore):
            kt = torch.from_numpy(store_matmat(ntk_test_train, ntk_test_train._default(None), alpha.numpy()))
        else:
            kt = torch.as_tensor(ntk_test_train, dtype=torch.float64) @ alpha
        f_test = kt if f0_test is None else torch.as_tensor(f0_test, dtype=torch.float64).reshape(kt.shape) + kt
        f_test = f_test.reshape((-1,) + tuple(y.shape[1:]))
    return f_train.reshape(y.shape), f_test, info
