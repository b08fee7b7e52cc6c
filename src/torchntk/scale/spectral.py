"""Training dynamics from the top-k spectrum of the kernel, with a bound on what is left out.

Under gradient flow on ``C = (1/(2N)) sum_i ||f(x_i) - y_i||^2`` (CONVENTIONS section 4) the
train residual is ``r_t = f_t - y = exp(-t Theta / N) r_0``. With the top eigenpairs
``Theta Q = Q diag(lambda_1 >= ... >= lambda_k)`` and ``P = I - Q Q^T``, the approximation keeps
the top modes exact and freezes the rest::

    r~_t = Q exp(-t Lambda / N) Q^T r_0 + P r_0
    f~_t(x) = f_0(x) - Theta(x, X) Q diag((1 - exp(-t lambda / N)) / lambda) Q^T r_0   (test)

**Error bound.** The remaining eigenvalues ``mu`` lie in ``[0, lambda_k]`` (Theta is PSD and
``lambda_k`` is the smallest computed one), so, column by column of ``r``::

    ||r_t - r~_t|| = ||(exp(-t Theta_P / N) - I) P r_0|| <= (1 - exp(-t lambda_k / N)) ||P r_0||
    ||f_t(x) - f~_t(x)|| <= ||Theta(x, X) P||_2 * (t / N) * ||P r_0||       (since (1-e^{-s mu})/mu <= s)

For gradient descent with learning rate ``eta`` (``t`` counts steps), ``exp(-t lambda / N)``
becomes ``(1 - eta lambda / N)^t`` and the train factor is ``max |1 - x^t|`` over
``x in [1 - eta lambda_k / N, 1]``.

Example::

    >>> lam, Q = top_eigh(store, 50)                                   # doctest: +SKIP
    >>> dyn = SpectralDynamics(lam, Q, y_train)                        # f0 = 0
    >>> f_t, bound = dyn.train(torch.tensor([1.0, 10.0, 100.0]))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._checks import renamed
from ..dynamics._spectral import factors
from ..errors import InvalidArgumentError, ShapeError


class SpectralDynamics:
    """Train (and test) predictions from ``k`` eigenpairs, with the bound of the module doc.

    Args:
        eigenvalues: ``(k,)`` the largest eigenvalues of the train kernel (any order).
        eigenvectors: ``(N, k)`` orthonormal columns.
        y_train: ``(N,)`` or ``(N, O)``; f0_train: network outputs at t=0 (default zeros).
        learning_rate: None for gradient flow (``t`` continuous); a float for gradient
            descent (``t`` counts steps).
    """

    def __init__(self, eigenvalues: Any, eigenvectors: Any, y_train: Any, *, f0_train: Any = None,
                 learning_rate: float | None = None) -> None:
        lam = np.asarray(eigenvalues, dtype=np.float64)
        q = np.asarray(eigenvectors, dtype=np.float64)
        if lam.ndim != 1 or q.ndim != 2 or q.shape[1] != lam.shape[0]:
            raise ShapeError(f"eigenvalues (k,) and eigenvectors (N, k) expected, got {lam.shape} and {q.shape}")
        y = np.asarray(torch.as_tensor(y_train, dtype=torch.float64))
        if y.shape[0] != q.shape[0]:
            raise ShapeError(f"`y_train` has {y.shape[0]} rows but the eigenvectors {q.shape[0]}")
        if learning_rate is not None and learning_rate <= 0:
            raise InvalidArgumentError(f"`learning_rate` must be > 0 or None, got {learning_rate}")
        self._shape = y.shape
        y2 = y.reshape(y.shape[0], -1)
        f0 = np.zeros_like(y2) if f0_train is None else np.asarray(
            torch.as_tensor(f0_train, dtype=torch.float64)).reshape(y2.shape)
        order = np.argsort(lam)[::-1]
        self.eigenvalues, self.eigenvectors = np.maximum(lam[order], 0.0), q[:, order]
        self.n, self.learning_rate = q.shape[0], learning_rate
        self.y, self.f0 = y2, f0
        r0 = f0 - y2
        self._c = self.eigenvectors.T @ r0  # (k, O) top-mode coefficients
        self._rest = r0 - self.eigenvectors @ self._c  # P r0
        self.rest_norm = np.linalg.norm(self._rest, axis=0)  # (O,)

    def _factors(self, t: np.ndarray, lam: np.ndarray, need_g: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The residual and test factors ``e``, ``g`` of :mod:`torchntk.dynamics._spectral`, (T, len(lam))."""
        e, g = factors(torch.from_numpy(lam), torch.from_numpy(t), self.n, self.learning_rate, None,
                       need_g=need_g)
        return e.numpy(), None if g is None else g.numpy()

    def train_factor(self, t: Any) -> np.ndarray:
        """The bound's factor ``sup_{mu in [0, lambda_k]} |1 - e(mu)|`` per time, (T,)."""
        t = np.atleast_1d(np.asarray(t, dtype=np.float64))
        lam_k = self.eigenvalues[-1:]
        f = np.abs(1.0 - self._factors(t, lam_k, need_g=False)[0][:, 0])
        if self.learning_rate is None:
            return f
        return np.where(1.0 - self.learning_rate * lam_k[0] / self.n < 0, np.maximum(f, 1.0), f)

    def train(self, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f~_t on the train set, bound)``: shapes ``(*T, N[, O])`` and ``(*T[, O])``.

        ``bound`` bounds ``||f_t - f~_t||_2`` per output column.
        """
        scalar = np.ndim(t) == 0
        tt = np.atleast_1d(np.asarray(t, dtype=np.float64))
        d = self._factors(tt, self.eigenvalues, need_g=False)[0]  # (T, k)
        r = np.einsum("nk,tk,ko->tno", self.eigenvectors, d, self._c) + self._rest[None]
        f = r + self.y[None]
        bound = self.train_factor(tt)[:, None] * self.rest_norm[None, :]
        return self._out(f, bound, scalar)

    def test(self, t: Any, ntk_test_train: Any = None, f0_test: Any = None, *,
             kernel_test_train: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f~_t(x_test), bound)`` from ``Theta(x_test, X)`` ``(M, N)``; shapes ``(*T, M[, O])``.

        Gradient flow only (for gradient descent use ``t`` steps as time ``t * eta``).
        ``kernel_test_train`` is the deprecated name of ``ntk_test_train``.
        """
        ntk_test_train = renamed("ntk_test_train", ntk_test_train, "kernel_test_train", kernel_test_train)
        if self.learning_rate is not None:
            raise InvalidArgumentError("test predictions are implemented for gradient flow (learning_rate=None)")
        if ntk_test_train is None:
            raise InvalidArgumentError("`ntk_test_train` (M, N) is required")
        kxt = np.asarray(torch.as_tensor(ntk_test_train, dtype=torch.float64))
        if kxt.ndim != 2 or kxt.shape[1] != self.n:
            raise ShapeError(f"`ntk_test_train` must be (M, {self.n}), got {kxt.shape}")
        scalar = np.ndim(t) == 0
        tt = np.atleast_1d(np.asarray(t, dtype=np.float64))
        g = self._factors(tt, self.eigenvalues, need_g=True)[1]  # (T, k)
        kq = kxt @ self.eigenvectors  # (M, k)
        f0 = np.zeros((kxt.shape[0], self.y.shape[1])) if f0_test is None else np.asarray(
            torch.as_tensor(f0_test, dtype=torch.float64)).reshape(kxt.shape[0], -1)
        f = f0[None] - np.einsum("mk,tk,ko->tmo", kq, g, self._c)
        kp = kxt - kq @ self.eigenvectors.T  # Theta(x, X) P
        kp_norm = np.linalg.norm(kp, 2) if kp.size else 0.0
        bound = kp_norm * (tt[:, None] / self.n) * self.rest_norm[None, :]
        return self._out(f, bound, scalar)

    def _out(self, f: np.ndarray, bound: np.ndarray, scalar: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self._shape) == 1:
            f, bound = f[..., 0], bound[..., 0]
        if scalar:
            f, bound = f[0], bound[0]
        return torch.from_numpy(np.ascontiguousarray(f)), torch.from_numpy(np.ascontiguousarray(bound))
