"""Squared loss in closed form: predictions of a fixed-kernel network at any training time.

Cost (CONVENTIONS section 4): ``C(f) = (1/(2N)) sum_i ||f(x_i) - y_i||^2``. With the
(flattened) train NTK ``Theta = Q diag(lam) Q^T`` and the residual ``r = f - y``:

- gradient flow (``learning_rate=None``, ``t`` continuous):
  ``r_t = Q exp(-t lam / N) Q^T r_0``;
- gradient descent with step ``eta`` (``t`` counts steps):
  ``r_t = Q (1 - eta lam / N)^t Q^T r_0``; with heavy-ball momentum ``mu`` (as in
  ``torch.optim.SGD(momentum=mu)``) the per-mode three-term recursion is used instead;
- test points follow through the cross-kernel:
  ``f_t(x) = f_0(x) - Theta(x, X) Q diag((1 - e_t) / lam) Q^T r_0``, ``e_t`` the residual factor;
- ``t = inf`` is kernel regression, by a Cholesky solve:
  ``f(x) = f_0(x) + Theta(x, X) Theta^{-1} (y - f_0(X))`` (the fixed point of every rule;
  returned as such even for a gradient-descent step above ``2N / lam_max``, which never gets
  there). A singular kernel falls back to the pseudo-inverse: zero modes keep their residual.
- a gradient-descent step at or above :func:`~torchntk.dynamics.max_learning_rate` makes the
  finite-time predictions grow without bound: they are returned with a
  :class:`~torchntk.errors.StabilityWarning`.

neural-tangents' ``predict.gradient_descent_mse`` divides by ``N*O`` instead of ``N``:
its time is ``t_nt = O * t`` (and its learning rate ``eta_nt = O * eta``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._checks import renamed
from ..errors import InvalidArgumentError
from . import _kernels as K
from ._spectral import factors
from .learning_rate import warn_if_unstable

__all__ = ["mse", "MSEPredictor"]


def _check_rate(learning_rate: Any, momentum: Any) -> tuple[float | None, float | None]:
    if learning_rate is not None:
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) \
                or not math.isfinite(learning_rate) or learning_rate <= 0:
            raise InvalidArgumentError(
                f"`learning_rate` must be a finite float > 0 or None (gradient flow), "
                f"got {learning_rate!r}"
            )
        learning_rate = float(learning_rate)
    if momentum is not None:
        if not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise InvalidArgumentError(f"`momentum` must be a float in [0, 1), got {momentum!r}")
        if learning_rate is None:
            raise InvalidArgumentError(
                "`momentum` needs a `learning_rate` (heavy-ball gradient descent; t counts steps)"
            )
        momentum = float(momentum) or None
    return learning_rate, momentum


class MSEPredictor:
    """Predictions of squared-loss training with a fixed kernel; made by :func:`mse`.

    Call it as ``f_train, f_test = pred(t, ntk_test_train=None, f0_test=None)``.
    The eigendecomposition of the train kernel is computed once, on the first finite ``t``,
    and reused for every later call and test batch; the ``t = inf`` solve is cached too.

    Attributes:
        n: number of training samples N.
        o: number of outputs O.
        full: whether the train kernel is full ``(N, N, O, O)`` (else scalar ``(N, N)``).
        kernel: the (regularized, flattened) train kernel used for training, ``(D, D)`` with
            ``D = N`` (scalar) or ``N*O`` (full).
    """

    def __init__(
        self,
        kernel: K.TrainKernel,
        y: torch.Tensor,
        squeeze: bool,
        f0: torch.Tensor,
        learning_rate: float | None,
        momentum: float | None,
        block_size: int,
    ) -> None:
        self._kt = kernel
        self.kernel = kernel.matrix
        self.n = kernel.n
        self.o = y.shape[1]
        self.full = kernel.full
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.y = y
        self.f0 = f0
        self._squeeze = squeeze
        self._batch = int(block_size)
        # residual in the kernel's layout: (N, O) for scalar kernels, (N*O, 1) for full ones
        self._r0 = self._to_state(f0 - y)
        self._eig: tuple[torch.Tensor, torch.Tensor] | None = None
        self._coef: torch.Tensor | None = None
        self._alpha: torch.Tensor | None = None

    # -- layouts --------------------------------------------------------------------------
    def _to_state(self, f: torch.Tensor) -> torch.Tensor:
        return f.reshape(-1, 1) if self.full else f

    def _to_outputs(self, z: torch.Tensor, rows: int, keep_t: bool) -> torch.Tensor:
        """``(T, D', C) -> (T, rows, O)`` then drop the axes the caller did not ask for."""
        out = z.reshape(z.shape[0], rows, self.o)
        if self._squeeze:
            out = out[..., 0]
        return out if keep_t else out[0]

    # -- cached linear algebra ------------------------------------------------------------
    @property
    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues ``lam`` (D,) of the train kernel, ascending, round-off negatives at 0."""
        return self._decomposition()[0]

    @property
    def eigenvectors(self) -> torch.Tensor:
        """Orthonormal eigenvectors ``Q`` (D, D), columns in the order of :attr:`eigenvalues`."""
        return self._decomposition()[1]

    def _decomposition(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._eig is None:
            self._eig = K.eigh_psd("ntk_train_train", self.kernel, self._kt.source_dtype)
            self._coef = self._eig[1].T @ self._r0
        return self._eig

    def _solve(self) -> torch.Tensor:
        """``alpha = Theta^{-1} r_0`` by Cholesky; pseudo-inverse if the kernel is singular."""
        if self._alpha is None:
            chol, info = torch.linalg.cholesky_ex(self.kernel)
            if int(info) == 0:
                self._alpha = torch.cholesky_solve(self._r0, chol)
            else:
                lam, q = self._decomposition()
                self._alpha = q @ (K.pinv_eigenvalues(lam)[:, None] * self._coef)
        return self._alpha

    # -- prediction -----------------------------------------------------------------------
    def __call__(
        self,
        t: Any,
        ntk_test_train: Any = None,
        f0_test: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Train and test outputs at time(s) ``t``.

        Args:
            t: scalar or 1-D times (``>= 0``; ``inf`` allowed). Gradient flow: continuous time;
                gradient descent: the number of steps.
            ntk_test_train: ``(M, N)`` for a scalar train kernel or ``(M, N, O, O)`` for a full
                one, or None.
            f0_test: initial test outputs ``(M, O)`` (``(M,)`` for 1-D targets); zeros if None.

        Returns:
            ``f_train`` of shape ``(N, O)`` (``(T, N, O)`` for 1-D ``t``; ``O`` dropped for 1-D
            targets) and ``f_test`` of shape ``(M, O)`` likewise, or None without a test kernel.
        """
        ts, keep_t = K.times("t", t, integer=self.learning_rate is not None)
        dev, dt = self.kernel.device, self.kernel.dtype
        finite = torch.isfinite(ts)
        fin_idx = torch.nonzero(finite).flatten()
        inf_idx = torch.nonzero(~finite).flatten()
        n_t, d, c = ts.shape[0], self._r0.shape[0], self._r0.shape[1]

        e = g = None
        if fin_idx.numel():
            lam, q = self._decomposition()
            warn_if_unstable(self.learning_rate, self.momentum, float(lam[-1]), self.n, "mse")
            e, g = factors(lam, ts[fin_idx], self.n, self.learning_rate, self.momentum,
                           need_g=ntk_test_train is not None)
        alpha = self._solve() if inf_idx.numel() else None

        # train: r_t = Q (e * c)
        r = torch.empty(n_t, d, c, dtype=dt, device=dev)
        if e is not None:
            r[fin_idx.to(dev)] = self._apply_modes(self.eigenvectors, e)
        if alpha is not None:
            r[inf_idx.to(dev)] = self._r0 - self.kernel @ alpha
        y_state = self._to_state(self.y)
        f_train = self._to_outputs(y_state + r, self.n, keep_t)

        if ntk_test_train is None:
            if f0_test is not None:
                raise InvalidArgumentError("`f0_test` was given without `ntk_test_train`")
            return f_train, None
        kx = K.cross_kernel("ntk_test_train", ntk_test_train, self._kt, self.o, dtype=dt, device=dev)
        m = kx.shape[0] // (self.o if self.full else 1)
        f0x = (torch.zeros(m, self.o, dtype=dt, device=dev) if f0_test is None else
               K.outputs_like("f0_test", f0_test, m, self.o, dtype=dt, device=dev))
        f0x = self._to_state(f0x)
        out = torch.empty(n_t, kx.shape[0], c, dtype=dt, device=dev)
        w = None
        if g is not None:
            w = (g.T[:, :, None] * self._coef[:, None, :]).reshape(d, -1)  # (D, T_f * C)
            # two orders of the same product Theta(x, X) Q diag(g) Q^T r0: (K_x Q) w costs
            # M D^2 + M D TC, K_x (Q w) costs D^2 TC + M D TC; take the cheaper one
            if kx.shape[0] > w.shape[1]:
                w, project = self.eigenvectors @ w, False
            else:
                project = True
        for lo in range(0, kx.shape[0], self._batch):
            rows = kx[lo:lo + self._batch]
            if w is not None:
                a = rows @ self.eigenvectors if project else rows  # (b, D)
                out[fin_idx.to(dev), lo:lo + self._batch] = (
                    f0x[lo:lo + self._batch] - (a @ w).reshape(
                        rows.shape[0], -1, c).transpose(0, 1))
            if alpha is not None:
                out[inf_idx.to(dev), lo:lo + self._batch] = f0x[lo:lo + self._batch] - rows @ alpha
        return f_train, self._to_outputs(out, m, keep_t)

    def _apply_modes(self, q: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """``Q diag(factor_t) Q^T r_0`` for every time: ``(T, D) -> (T, D, C)``."""
        d, c = self._coef.shape
        w = factor.T[:, :, None] * self._coef[:, None, :]  # (D, T, C)
        return (q @ w.reshape(d, -1)).reshape(d, -1, c).transpose(0, 1)


def mse(
    ntk_train_train: Any,
    y_train: Any,
    *,
    f0_train: Any = None,
    learning_rate: float | None = None,
    diag_reg: float = 0.0,
    diag_reg_mode: str = "relative",
    momentum: float | None = None,
    block_size: int = 4096,
    dtype: torch.dtype = K.DEFAULT_DTYPE,
    test_batch_size: int | None = None,
) -> MSEPredictor:
    """Predictor of squared-loss training with a fixed kernel (gradient flow or descent).

    ``f_t - y = exp(-t Theta / N) (f_0 - y)`` (gradient flow) or ``(I - eta Theta/N)^t (f_0 - y)``
    (gradient descent, ``t`` steps); test points follow through ``Theta(x, X)``; ``t = inf``
    is kernel regression. See the module docstring for every formula.

    Args:
        ntk_train_train: scalar ``(N, N)`` kernel (applied to each output) or full
            ``(N, N, O, O)`` one; tensor or numpy array; must be symmetric PSD.
        y_train: targets ``(N, O)`` or ``(N,)``.
        f0_train: initial train outputs, same shape as ``y_train`` (zeros if None).
        learning_rate: None for gradient flow (continuous ``t``); a step ``eta`` for gradient
            descent (``t`` counts steps).
        diag_reg: ridge added to the train kernel: ``Theta + diag_reg * s * I``.
        diag_reg_mode: ``"relative"`` (``s`` = mean diagonal of Theta) or ``"absolute"``
            (``s = 1``).
        momentum: heavy-ball momentum ``mu`` in ``[0, 1)`` (needs ``learning_rate``), as in
            ``torch.optim.SGD(lr=eta, momentum=mu)``.
        block_size: test-kernel rows handled at once.
        dtype: computation dtype (float64 by default); the device is the kernel's.
        test_batch_size: deprecated name of ``block_size``.

    Eigenvalues down to ``-1e-7 * lam_max`` (``-1e-4 * lam_max`` for a float32 kernel) are
    round-off and are clamped to 0; more negative ones raise ``InvalidArgumentError``.

    Returns:
        An :class:`MSEPredictor`; ``f_train, f_test = pred(t, ntk_test_train=None, f0_test=None)``.

    Example:
        >>> x = torch.randn(20, 3, dtype=torch.float64)
        >>> ntk = x @ x.T / 3 + 1.0
        >>> pred = mse(ntk, torch.sin(x[:, :1]))
        >>> f_train, _ = pred(torch.linspace(0, 100, 5))
        >>> f_train.shape
        torch.Size([5, 20, 1])
    """
    learning_rate, momentum = _check_rate(learning_rate, momentum)
    block_size = renamed("block_size", block_size, "test_batch_size", test_batch_size, 4096)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise InvalidArgumentError(f"`block_size` must be an int >= 1, got {block_size!r}")
    kt = K.train_kernel("ntk_train_train", ntk_train_train, dtype=dtype)
    kt = K.TrainKernel(K.regularize(kt.matrix, diag_reg, diag_reg_mode), kt.n, kt.o, kt.full,
                       kt.source_dtype)
    dev = kt.matrix.device
    y, squeeze = K.targets("y_train", y_train, kt, dtype=dtype, device=dev)
    f0 = (torch.zeros_like(y) if f0_train is None else
          K.outputs_like("f0_train", f0_train, kt.n, y.shape[1], dtype=dtype, device=dev))
    return MSEPredictor(kt, y, squeeze, f0, learning_rate, momentum, block_size)
