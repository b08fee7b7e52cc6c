"""Kernel regression and training dynamics in feature space (``m x m`` instead of ``N x N``).

With train features ``Phi`` ``(N, D)`` the train kernel is ``Theta = Phi Phi^T``. Its nonzero
eigenvalues are those of the ``D x D`` Gram ``G = Phi^T Phi = V diag(lam) V^T`` (the
eigenvectors in sample space are ``Phi V diag(lam)^(-1/2)``), so every formula of
:func:`torchntk.dynamics.mse` (CONVENTIONS section 4) becomes, with ``r0 = f0(X) - y``,
``c = V^T Phi^T r0`` and the per-mode factors ``e(lam, t)``, ``g(lam, t) = (1 - e) / lam`` of
the training rule (gradient flow or descent):

    f_t(x)  = f0(x) - Phi(x) V diag(g(lam + c_reg, t)) c                    (test rows)
    r_t     = e(c_reg, t) r0 - Phi V diag((e(c_reg, t) - e(lam + c_reg, t)) / lam) c   (train)

where ``c_reg`` is the ridge ``diag_reg * s`` (``s`` the mean of ``diag Theta``, or 1). Without
a ridge the train rule is ``r_t = r0 - Phi V diag(g(lam, t)) c``; ``t = inf`` is kernel
regression (ridge, or the pseudo-inverse: zero modes keep their residual). Only ``G``,
``Phi^T r0`` (one streaming pass over the rows) and the rows asked for are ever formed: for
``N = 10^6`` rows and ``D = 8193`` features that is 0.5 GB, never an ``N x N`` matrix.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch

from .._checks import check_choice, check_finite
from .._kernel_checks import as_tensor, check_kernel, eigh_psd, pinv_cut, pinv_eigenvalues
from ..dynamics._kernels import ridge, times
from ..dynamics._spectral import factors
from ..errors import InvalidArgumentError, ShapeError
from .map import FeatureRows, rows_of

__all__ = ["FeatureGram", "gram", "FeatureMSE", "mse", "FeatureRidge", "ridge_regression"]


def _targets(name: str, y: Any, n: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, bool]:
    """``y`` (tensor or array, finite) as ``(n, O)`` in ``dtype`` on ``device``, and whether it was 1-D."""
    y = as_tensor(name, y, dtype=dtype, device=device)
    squeeze = y.ndim == 1
    y = y.reshape(-1, 1) if squeeze else y
    if y.ndim != 2 or y.shape[0] != n:
        raise ShapeError(f"`{name}` must have shape ({n},) or ({n}, O) to match the {n} feature rows, got {tuple(y.shape)}")
    return y, squeeze


class FeatureGram:
    """``G = Phi^T Phi`` ``(D, D)``, ``b = Phi^T t`` ``(D, O)`` and ``tr(Theta) = ||Phi||_F^2``.

    Accumulated in float64 over batches of rows (any feature dtype); made by :func:`gram`.
    """

    def __init__(self, matrix: torch.Tensor, rhs: torch.Tensor | None, n: int, trace: float) -> None:
        self.matrix, self.rhs, self.n, self.trace = matrix, rhs, n, trace

    @property
    def mean_diagonal(self) -> float:
        """``mean(diag Theta) = ||Phi||_F^2 / N`` (the scale of a relative ridge)."""
        return self.trace / self.n


@contextlib.contextmanager
def _bfloat16_products(on: bool) -> Iterator[None]:
    """Float32 matrix products with bfloat16 inputs and float32 sums (oneDNN's ``bf16`` math
    mode of the CPU) inside the block, when ``on``; the previous mode is restored after."""
    flags = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    if not on or flags is None or not hasattr(flags, "fp32_precision"):
        yield
        return
    old = flags.fp32_precision
    flags.fp32_precision = "bf16"
    try:
        yield
    finally:
        flags.fp32_precision = old


def gram(phi: Any, targets: Any = None, *, name: str = "phi") -> FeatureGram:
    """One streaming pass over the rows: ``Phi^T Phi`` and ``Phi^T targets`` (float64).

    Each batch's products are formed in the features' dtype and summed in float64. Rows of a
    ``FeatureMap(..., precision="bfloat16")`` in float32 on the CPU take bfloat16 inputs with
    float32 sums for ``Phi^T Phi`` (the Gram of the features rounded to 8-bit mantissas: still
    positive semi-definite, each entry within ``~2^-8 / sqrt(D)`` relative of the float32 one).

    Args:
        phi: :meth:`FeatureMap.rows` or a feature matrix ``(N, D)``.
        targets: ``(N,)`` or ``(N, O)`` or None.
        name: the argument's name in errors (a non-finite feature raises ``NonFiniteError``).
    """
    rows = rows_of(phi, name)
    acc = torch.float64
    g = torch.zeros(rows.dim, rows.dim, dtype=acc, device=rows.device)
    t = None
    if targets is not None:
        t, _ = _targets("targets", targets, rows.n, acc, rows.device)
    b = None if t is None else torch.zeros(rows.dim, t.shape[1], dtype=acc, device=rows.device)
    fast = (rows.fm is not None and rows.fm.precision == "bfloat16" and rows.dtype == torch.float32
            and rows.device.type == "cpu")
    buf = None
    for lo, hi, p in rows:
        check_finite(f"{name}[{lo}:{hi}]", p)
        if p.dtype != acc and (buf is None or buf.dtype != p.dtype):
            buf = p.new_empty(rows.dim, rows.dim)
        with _bfloat16_products(fast):
            _add_upper_gram(g, p, None if p.dtype == acc else buf)
        if b is not None:  # (D, O) in the features' dtype: no float64 copy of the batch
            b.add_((p.T @ t[lo:hi].to(p.dtype)).to(acc))
    g = torch.triu(g) + torch.triu(g, 1).T
    return FeatureGram(g, b, rows.n, float(torch.diagonal(g).sum()))


#: Column blocks of :func:`_add_upper_gram` (the lower blocks are skipped: ``(1 + 1/k) / 2`` of the flops).
_GRAM_BLOCKS = 8


def _add_upper_gram(g: torch.Tensor, p: torch.Tensor, buf: torch.Tensor | None) -> None:
    """``g += p^T p`` on the upper block triangle (and below it where that costs nothing): each
    block row ``p[:, block]^T p[:, block start:]`` in ``p``'s dtype into ``buf`` (reused between
    batches), then added to ``g`` (float64, cast on the fly)."""
    d = p.shape[1]
    if buf is None or d < 2 * _GRAM_BLOCKS * 64:
        g.add_(p.T @ p)
        return
    edges = [d * i // _GRAM_BLOCKS for i in range(_GRAM_BLOCKS + 1)]
    for lo, hi in zip(edges[:-1], edges[1:]):
        block = buf[lo:hi, lo:]
        torch.mm(p[:, lo:hi].T, p[:, lo:], out=block)
        g[lo:hi, lo:].add_(block)


def _gram_eigh(name: str, g: torch.Tensor, source_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``G = V diag(lam) V^T`` by dynamics' decomposition and PSD check: a Gram is PSD by
    construction, so a refusal means features the accumulation lost (non-finite rows)."""
    return eigh_psd(f"{name} (its Gram Phi^T Phi)", check_kernel(name, g, psd=False), source_dtype)


class FeatureMSE:
    """Squared-loss training of the kernel ``Phi Phi^T`` in feature space; made by :func:`mse`.

    ``f_train, f_test = pred(t, phi_test=None, f0_test=None)`` with the shapes of
    :class:`torchntk.dynamics.MSEPredictor` (``f_train`` needs one more pass over the train rows).
    """

    def __init__(self, rows: FeatureRows, y: torch.Tensor, f0: torch.Tensor, squeeze: bool,
                 learning_rate: float | None, ridge: float, gram_: FeatureGram) -> None:
        self.rows, self.y, self.f0, self._squeeze = rows, y, f0, squeeze
        self.learning_rate, self.ridge, self.n = learning_rate, ridge, rows.n
        self.eigenvalues, self.eigenvectors = _gram_eigh("phi_train", gram_.matrix, rows.dtype)
        self._coef = self.eigenvectors.T @ gram_.rhs  # V^T Phi^T r0, (D, O)
        self._cut = pinv_cut(self.eigenvalues)

    def _factors(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per time and mode: test factor ``g``, train factor ``h`` (``(T, D)``) and ``e(c_reg)`` ``(T,)``."""
        lam, n = self.eigenvalues, self.n
        pos = lam > self._cut
        fin = torch.isfinite(t)
        tf = torch.where(fin, t, torch.zeros_like(t))
        shifted = lam + self.ridge
        e, g = factors(shifted, tf, n, self.learning_rate, None)
        e_c, _ = factors(lam.new_tensor([self.ridge]), tf, n, self.learning_rate, None, need_g=False)
        e_c = e_c[:, 0]
        if self.ridge > 0:
            safe = torch.where(pos, lam, torch.ones_like(lam))
            h = torch.where(pos, (e_c[:, None] - e) / safe, torch.zeros_like(e))
        else:
            h = g
        # t = inf: kernel regression; without a ridge, the pseudo-inverse (zero modes keep r0)
        inv = pinv_eigenvalues(shifted, cut=self._cut)
        g = torch.where(fin[:, None], g, inv[None, :])
        h_inf = torch.zeros_like(lam) if self.ridge > 0 else torch.where(pos, inv, torch.zeros_like(inv))
        h = torch.where(fin[:, None], h, h_inf[None, :])
        e_c = torch.where(fin, e_c, torch.zeros_like(e_c) if self.ridge > 0 else torch.ones_like(e_c))
        return g, h, e_c, fin

    def _apply(self, phi: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """``Phi V diag(factor_t) c`` for every time: ``(T, rows, O)``."""
        w = factor[:, :, None] * self._coef[None]  # (T, D, O)
        w = torch.einsum("ij,tjo->tio", self.eigenvectors, w)  # V (factor c), (T, D, O)
        return torch.einsum("nd,tdo->tno", phi.to(w.dtype), w)

    def __call__(self, t: Any, phi_test: Any = None, f0_test: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Train and test outputs at time(s) ``t`` (scalar or 1-D; ``inf``: kernel regression)."""
        ts, keep_t = times("t", t, integer=self.learning_rate is not None)
        ts = ts.to(dtype=self.eigenvalues.dtype, device=self.eigenvalues.device)
        g, h, e_c, _ = self._factors(ts)
        r0 = self.f0 - self.y
        parts = [e_c[:, None, None] * r0[lo:hi][None] - self._apply(p, h) for lo, hi, p in self.rows]
        f_train = self.y[None] + torch.cat(parts, dim=1)
        f_test = None
        if phi_test is not None:
            test = rows_of(phi_test, "phi_test")
            if test.dim != self.rows.dim:
                raise ShapeError(f"`phi_test` has {test.dim} features, the train rows {self.rows.dim}")
            f0x = torch.zeros(test.n, self.y.shape[1], dtype=self.y.dtype, device=self.y.device)
            if f0_test is not None:
                f0x, _ = _targets("f0_test", f0_test, test.n, self.y.dtype, self.y.device)
            f_test = torch.cat([f0x[lo:hi][None] - self._apply(p, g) for lo, hi, p in test], dim=1)
        elif f0_test is not None:
            raise InvalidArgumentError("`f0_test` was given without `phi_test`")
        return self._shape(f_train, keep_t), None if f_test is None else self._shape(f_test, keep_t)

    def _shape(self, f: torch.Tensor, keep_t: bool) -> torch.Tensor:
        f = f[..., 0] if self._squeeze else f
        return f if keep_t else f[0]


def mse(
    phi_train: Any,
    y_train: Any,
    *,
    f0_train: Any = None,
    learning_rate: float | None = None,
    diag_reg: float = 0.0,
    diag_reg_mode: str = "relative",
) -> FeatureMSE:
    """:func:`torchntk.dynamics.mse` for the kernel ``Phi Phi^T``, computed in feature space.

    Args:
        phi_train: train features: :meth:`FeatureMap.rows` (streamed) or a matrix ``(N, D)``.
        y_train: ``(N,)`` or ``(N, O)``; f0_train: same shape (zeros if None).
        learning_rate: None (gradient flow, continuous ``t``) or a step (gradient descent).
        diag_reg, diag_reg_mode: the ridge ``diag_reg * s`` added to the kernel's diagonal,
            ``s = mean(diag Theta)`` (``"relative"``) or 1 (``"absolute"``), as in dynamics.

    Returns:
        a :class:`FeatureMSE`: ``f_train, f_test = pred(t, phi_test=None, f0_test=None)``.

    Example:
        >>> phi = torch.randn(50, 8, dtype=torch.float64)
        >>> pred = mse(phi, torch.randn(50))
        >>> pred(1.0)[0].shape
        torch.Size([50])
    """
    rows = rows_of(phi_train, "phi_train")
    acc = torch.float64
    y, squeeze = _targets("y_train", y_train, rows.n, acc, rows.device)
    f0 = torch.zeros_like(y) if f0_train is None else _targets("f0_train", f0_train, rows.n, acc, rows.device)[0]
    if learning_rate is not None and (isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float))
                                      or not math.isfinite(learning_rate) or learning_rate <= 0):
        raise InvalidArgumentError(f"`learning_rate` must be a finite float > 0 or None, got {learning_rate!r}")
    g = gram(rows, f0 - y, name="phi_train")
    mu = ridge(diag_reg, diag_reg_mode, lambda: g.mean_diagonal)
    return FeatureMSE(rows, y, f0, squeeze, None if learning_rate is None else float(learning_rate), mu, g)


class FeatureRidge:
    """Kernel ridge regression ``w = (Phi^T Phi + c I)^(-1) Phi^T y`` for several ridges at once.

    Equal to ``Theta(x, X) (Theta + c I)^(-1) y`` with ``Theta = Phi Phi^T`` (the push-through
    identity). With more rows than features (the streaming case) it solves the ``D x D``
    primal system by Cholesky per ridge, at cost ``N D^2 + R D^3 / 3``; with fewer rows it
    decomposes the ``N x N`` dual ``Phi Phi^T`` once (``N^2 D + N^3``) and takes
    ``w = Phi^T V diag(1 / (lam + c)) V^T y``.

    Attributes: ``ridges`` (the absolute values ``c``), ``weights`` ``(R, D, O)``.
    """

    def __init__(self, rows: FeatureRows, y: torch.Tensor, ridges: list[float], squeeze: bool) -> None:
        self._squeeze, self.ridges = squeeze, ridges
        if rows.n > rows.dim:
            g = gram(rows, y, name="phi_train")
            self.trace = g.trace
            self.ridges = ridges = [r * (g.mean_diagonal if rel else 1.0) for r, rel in ridges]
            ws = []
            for c in ridges:
                a = g.matrix.clone()
                a.diagonal().add_(c)
                chol, info = torch.linalg.cholesky_ex(a)
                if int(info) == 0:
                    ws.append(torch.cholesky_solve(g.rhs, chol))
                else:  # singular without a ridge: the minimum-norm solution
                    ws.append(torch.linalg.lstsq(a, g.rhs).solution)
                del a, chol
            self.weights = torch.stack(ws)
            return
        phi = check_finite("phi_train", rows.materialize()).to(torch.float64)
        k = check_kernel("phi_train (its kernel Phi Phi^T)", phi @ phi.T, psd=False)
        mean_diag = float(torch.diagonal(k).mean())
        self.ridges = ridges = [r * (mean_diag if rel else 1.0) for r, rel in ridges]
        lam, v = eigh_psd("phi_train (its kernel Phi Phi^T)", k, rows.dtype)
        coef = v.T @ y
        c = torch.tensor(ridges, dtype=lam.dtype, device=lam.device)
        inv = pinv_eigenvalues(lam[None, :] + c[:, None], cut=pinv_cut(lam))
        alpha = torch.einsum("ij,rjo->rio", v, inv[:, :, None] * coef[None])  # (R, N, O)
        self.weights = torch.einsum("nd,rno->rdo", phi, alpha)

    def predict(self, phi: Any) -> torch.Tensor:
        """``Phi(x) w`` for every ridge: ``(R, M, O)`` (``(R, M)`` for 1-D targets)."""
        rows = rows_of(phi, "phi")
        if rows.dim != self.weights.shape[1]:
            raise ShapeError(f"`phi` has {rows.dim} features, the model {self.weights.shape[1]}")
        out = torch.cat([torch.einsum("nd,rdo->rno", p.to(self.weights.dtype), self.weights) for _, _, p in rows],
                        dim=1)
        return out[..., 0] if self._squeeze else out


def ridge_regression(phi_train: Any, y_train: Any, ridges: Any = (1e-3,), *, mode: str = "relative") -> FeatureRidge:
    """Kernel ridge regression on features, for one or several ridges.

    Args:
        phi_train: train features (:meth:`FeatureMap.rows`, streamed, or ``(N, D)``).
        y_train: ``(N,)`` or ``(N, O)``.
        ridges: a number or a sequence; each is ``c / mean(diag Theta)`` (``mode="relative"``,
            default: scale-free, the convention of ``dynamics.mse(diag_reg=...)``) or ``c``
            itself (``"absolute"``).

    Returns:
        a :class:`FeatureRidge` (``predict(phi) -> (R, M, O)``).
    """
    rows = rows_of(phi_train, "phi_train")
    y, squeeze = _targets("y_train", y_train, rows.n, torch.float64, rows.device)
    values = [ridges] if isinstance(ridges, (int, float)) else list(ridges)
    if not values:
        raise InvalidArgumentError("`ridges` must hold at least one value")
    if not isinstance(mode, str):
        raise InvalidArgumentError(f"`mode` must be 'relative' or 'absolute', got {mode!r}")
    rel = check_choice("mode", mode.lower(), ("relative", "absolute")) == "relative"
    for r in values:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r < 0:
            raise InvalidArgumentError(f"`ridges` must be finite numbers >= 0, got {r!r}")
    return FeatureRidge(rows, y, [(float(r), rel) for r in values], squeeze)
