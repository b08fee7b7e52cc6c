"""Infinite ensembles (Lee et al. 2019): the Gaussian process of trained wide networks.

At initialization an infinitely wide network's outputs are a centred Gaussian process with the
NNGP kernel ``K``; trained by squared-loss gradient flow with the (deterministic) NTK ``Theta``
it stays linear in ``f_0``:

    f_t(x) = T_t(x) y + f_0(x) - T_t(x) f_0(X),   T_t(x) = Theta(x, X) Theta^{-1} (I - exp(-t Theta/N))

so over the ensemble of initializations ``f_t(x)`` is Gaussian with

    mean  = T_t(x) y
    cov   = K(x, x') - T_t(x) K(X, x') - K(x, X) T_t(x')^T + T_t(x) K(X, X) T_t(x')^T

(gradient descent: ``(I - eta Theta/N)^t``). ``kind="nngp"`` replaces Theta by K everywhere (only
the readout layer trained); at ``t = inf`` it is the exact GP posterior
``K(x, X) K^{-1} y``, ``K(x, x') - K(x, X) K^{-1} K(X, x')``. ``kind="ntk"`` at ``t = inf`` is
the NTK-GP of the same paper (mean ``Theta(x, X) Theta^{-1} y``).

Computed in ``Theta``'s eigenbasis (``Theta = Q diag(lam) Q^T``): ``T_t(x) = A diag(g_t) Q^T``
with ``A = Theta(x, X) Q`` and ``g_t = (1 - e_t) / lam`` (``1/lam`` at ``t = inf``, 0 on zero
modes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._checks import check_choice, renamed
from ..empirical import flatten_kernel
from ..errors import InvalidArgumentError, ShapeError
from . import _kernels as K
from ._spectral import factors
from .closed_form import _check_rate

__all__ = ["ensemble", "gp_posterior", "EnsemblePredictor", "Gaussian"]


@dataclass(frozen=True)
class Gaussian:
    """Mean and covariance of the ensemble's outputs.

    Scalar kernels: ``mean`` (M, O) and ``covariance`` (M, M), the same for every output
    (outputs are independent). Full kernels: ``mean`` (M, O), ``covariance`` (M, M, O, O).
    A leading time axis is added for 1-D ``t``; ``O`` is dropped for 1-D targets.
    """

    mean: torch.Tensor
    covariance: torch.Tensor | None


class EnsemblePredictor:
    """Mean and covariance of infinitely many trained networks; made by :func:`ensemble`."""

    def __init__(self, nngp, ntk, y, squeeze, learning_rate, diag_reg, diag_reg_mode):
        self._nngp, self._ntk = nngp, ntk
        self.y, self._squeeze = y, squeeze
        self.n, self.o, self.full = ntk.n, y.shape[1], ntk.full
        self.learning_rate = learning_rate
        self._reg = (diag_reg, diag_reg_mode)
        self._eig: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._prior_checked = False

    def _dyn(self, get: str) -> torch.Tensor:
        base = self._ntk.matrix if get == "ntk" else self._nngp.matrix
        return K.regularize(base, *self._reg)

    def _check_prior(self) -> None:
        """The NNGP prior of the covariance must be PSD (its eigenvalues, once)."""
        if not self._prior_checked:
            K.eigvalsh_psd("nngp_train_train", self._nngp.matrix, self._nngp.source_dtype)
            self._prior_checked = True

    def _decomp(self, get: str):
        if get not in self._eig:
            src = (self._ntk if get == "ntk" else self._nngp).source_dtype
            self._eig[get] = K.eigh_psd(f"{get}_train_train", self._dyn(get), src)
        return self._eig[get]

    def __call__(
        self,
        t: Any,
        *,
        kind: str | None = None,
        nngp_test_train: Any = None,
        ntk_test_train: Any = None,
        nngp_test_test: Any = None,
        compute_cov: bool = True,
        get: str | None = None,
    ) -> Gaussian:
        """The ensemble's Gaussian at time(s) ``t`` on the test points (train points if no test
        kernels are given).

        Args:
            t: scalar or 1-D times (``inf`` allowed); steps when a learning rate was given.
            kind: ``"ntk"`` (default: all layers trained) or ``"nngp"`` (readout only; Theta := K),
                in any case; the same name as in :mod:`torchntk.gp` and :mod:`torchntk.features`.
            nngp_test_train: ``K(x, X)``, (M, N) or (M, N, O, O).
            ntk_test_train: ``Theta(x, X)``, same shape (not needed for ``kind="nngp"``).
            nngp_test_test: ``K(x, x)``, (M, M) or (M, M, O, O); needed for the covariance.
            compute_cov: False for the mean only.
            get: deprecated name of ``kind`` (neural-tangents' name), kept for one release.
        """
        kind = renamed("kind", kind, "get", get)
        get = check_choice("kind", "ntk" if kind is None else kind, ("ntk", "nngp"), any_case=True)
        ts, keep = K.times("t", t, integer=self.learning_rate is not None)
        kxx_train = self._nngp.matrix
        dev, dt = kxx_train.device, kxx_train.dtype
        if nngp_test_train is None and ntk_test_train is None and nngp_test_test is None:
            k_x = kxx_train                       # K(x, X) with x = X
            th_x = self._dyn(get)                 # the dynamics kernel on x = X
            k_xx = kxx_train if get == "ntk" else th_x
            m = self.n
        else:
            if nngp_test_train is None:
                raise InvalidArgumentError("`nngp_test_train` is needed for test predictions")
            k_x = K.cross_kernel("nngp_test_train", nngp_test_train, self._nngp, self.o,
                                 dtype=dt, device=dev)
            if get == "ntk":
                if ntk_test_train is None:
                    raise InvalidArgumentError("`ntk_test_train` is needed for kind='ntk'")
                th_x = K.cross_kernel("ntk_test_train", ntk_test_train, self._ntk, self.o,
                                      dtype=dt, device=dev)
            else:
                th_x = k_x
            if th_x.shape != k_x.shape:
                raise ShapeError("`ntk_test_train` and `nngp_test_train` disagree in shape")
            m = k_x.shape[0] // (self.o if self.full else 1)
            k_xx = None
            if compute_cov:
                if nngp_test_test is None:
                    raise InvalidArgumentError("`nngp_test_test` is needed for the covariance "
                                               "(or pass compute_cov=False)")
                k_xx = K.as_tensor("nngp_test_test", nngp_test_test, dtype=None, device=dev)
                want = (m, m, self.o, self.o) if self.full else (m, m)
                if tuple(k_xx.shape) != want:
                    raise ShapeError(f"`nngp_test_test` must have shape {want}, got "
                                     f"{tuple(k_xx.shape)}")
                k_xx = K.check_kernel("nngp_test_test", flatten_kernel(k_xx) if self.full else k_xx,
                                      dtype=dt)
        lam, q = self._decomp(get)
        fin = torch.isfinite(ts)
        g = torch.empty(ts.shape[0], lam.shape[0], dtype=dt, device=dev)
        if bool(fin.any()):
            g[fin.to(dev)] = factors(lam, ts[fin], self.n, self.learning_rate, None)[1]
        if bool((~fin).any()):
            g[(~fin).to(dev)] = K.pinv_eigenvalues(lam)
        y_state = self.y.reshape(-1, 1) if self.full else self.y
        a = th_x @ q                                  # (M', D)
        ag = a[None] * g[:, None, :]                  # (T, M', D)
        mean = ag @ (q.T @ y_state)                   # (T, M', C)
        mean = mean.reshape(ts.shape[0], m, self.o)
        if self._squeeze:
            mean = mean[..., 0]
        cov = None
        if compute_cov:
            if get == "ntk":
                self._check_prior()  # (kind="nngp" decomposes it above)
            k_prior = self._nngp.matrix if get == "ntk" else self._dyn(get)
            b = q.T @ k_x.T                           # (D, M')
            c = q.T @ k_prior @ q                     # (D, D)
            tk = ag @ b                               # T_t(x) K(X, x)
            cov = k_xx[None] - tk - tk.transpose(1, 2) + ag @ c @ ag.transpose(1, 2)
            cov = 0.5 * (cov + cov.transpose(1, 2))
            if self.full:
                cov = cov.reshape(ts.shape[0], m, self.o, m, self.o).permute(0, 1, 3, 2, 4)
        if not keep:
            mean = mean[0]
            cov = None if cov is None else cov[0]
        return Gaussian(mean, cov)


def ensemble(
    nngp_train_train: Any,
    ntk_train_train: Any,
    y_train: Any,
    *,
    learning_rate: float | None = None,
    diag_reg: float = 0.0,
    diag_reg_mode: str = "relative",
    dtype: torch.dtype = K.DEFAULT_DTYPE,
) -> EnsemblePredictor:
    """Predictor of the output distribution of infinitely many networks trained for time t.

    Args:
        nngp_train_train: NNGP kernel ``K(X, X)``, (N, N) or (N, N, O, O).
        ntk_train_train: NTK ``Theta(X, X)``, same layout.
        y_train: (N, O) or (N,) targets.
        learning_rate: None for gradient flow; a step for gradient descent (t counts steps).
        diag_reg, diag_reg_mode: ridge on the dynamics kernel, as in :func:`mse`.

    Returns:
        An :class:`EnsemblePredictor`:
        ``pred(t, kind="ntk", nngp_test_train=..., ntk_test_train=..., nngp_test_test=...)``
        returns a :class:`Gaussian`.

    Example:
        >>> x = torch.randn(8, 2, dtype=torch.float64)
        >>> k = x @ x.T / 2 + 0.1
        >>> pred = ensemble(k, 2 * k, torch.randn(8))
        >>> g = pred(torch.tensor([0.0, 1.0, float("inf")]))
        >>> g.mean.shape, g.covariance.shape
        (torch.Size([3, 8]), torch.Size([3, 8, 8]))
    """
    learning_rate, _ = _check_rate(learning_rate, None)
    ntk = K.train_kernel("ntk_train_train", ntk_train_train, dtype=dtype)
    nngp = K.train_kernel("nngp_train_train", nngp_train_train, dtype=dtype)
    if (nngp.n, nngp.o, nngp.full) != (ntk.n, ntk.o, ntk.full):
        raise ShapeError("`nngp_train_train` and `ntk_train_train` must have the same shape")
    nngp = K.TrainKernel(nngp.matrix.to(ntk.matrix.device), nngp.n, nngp.o, nngp.full,
                         nngp.source_dtype)
    y, squeeze = K.targets("y_train", y_train, ntk, dtype=dtype, device=ntk.matrix.device)
    K.regularize(ntk.matrix[:1, :1], diag_reg, diag_reg_mode)  # validate early
    return EnsemblePredictor(nngp, ntk, y, squeeze, learning_rate, diag_reg, diag_reg_mode)


def gp_posterior(
    kernel_train_train: Any,
    y_train: Any,
    kernel_test_train: Any,
    kernel_test_test: Any = None,
    *,
    diag_reg: float = 0.0,
    diag_reg_mode: str = "relative",
    dtype: torch.dtype = K.DEFAULT_DTYPE,
) -> Gaussian:
    """Exact GP posterior with prior kernel ``k``: ``k(x,X) k_reg^{-1} y`` and
    ``k(x,x) - k(x,X) k_reg^{-1} k(X,x)``, ``k_reg = k(X,X) + diag_reg * s * I`` (Cholesky).

    With the NNGP kernel this is the ``kind="nngp"``, ``t = inf`` ensemble.
    """
    kt = K.train_kernel("kernel_train_train", kernel_train_train, dtype=dtype)
    dev = kt.matrix.device
    y, squeeze = K.targets("y_train", y_train, kt, dtype=dtype, device=dev)
    o = y.shape[1]
    kx = K.cross_kernel("kernel_test_train", kernel_test_train, kt, o, dtype=dtype, device=dev)
    reg = K.regularize(kt.matrix, diag_reg, diag_reg_mode)
    chol, info = torch.linalg.cholesky_ex(reg)
    if int(info) != 0:
        K.eigvalsh_psd("kernel_train_train", reg, kt.source_dtype)
        raise InvalidArgumentError("`kernel_train_train` is singular: add `diag_reg` > 0")
    m = kx.shape[0] // (o if kt.full else 1)
    y_state = y.reshape(-1, 1) if kt.full else y
    sol = torch.cholesky_solve(kx.T, chol)            # k_reg^{-1} k(X, x)
    mean = (sol.T @ y_state).reshape(m, o)
    if squeeze:
        mean = mean[..., 0]
    cov = None
    if kernel_test_test is not None:
        kxx = K.as_tensor("kernel_test_test", kernel_test_test, dtype=None, device=dev)
        want = (m, m, o, o) if kt.full else (m, m)
        if tuple(kxx.shape) != want:
            raise ShapeError(f"`kernel_test_test` must have shape {want}, got {tuple(kxx.shape)}")
        kxx = K.check_kernel("kernel_test_test", flatten_kernel(kxx) if kt.full else kxx, dtype=dtype)
        cov = kxx - kx @ sol
        cov = 0.5 * (cov + cov.T)
        if kt.full:
            cov = cov.reshape(m, o, m, o).permute(0, 2, 1, 3)
    return Gaussian(mean, cov)
