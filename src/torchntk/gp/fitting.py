"""Fitting a spec's hyperparameters to data: maximum marginal likelihood or minimum
leave-one-out error, by L-BFGS-B in log-space with restarts; depth as a discrete choice.

The user describes the family of specs by a function ``build(**params) -> spec`` whose
arguments are the hyperparameters to fit, received as 0-dim float64 tensors (the kernel is
differentiable in them, :mod:`torchntk.layers`), plus ``depth=d`` when ``depths`` is given.
Each hyperparameter ``p > 0`` is optimized as ``log p``; so is the noise variance ``sigma^2``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from .._checks import check_choice, check_finite, check_hyper, check_tensor, value_of
from ..errors import InvalidArgumentError
from ..layers import Layer
from .likelihood import _as_targets, cholesky, log_marginal_likelihood, loo

__all__ = ["fit", "FitResult", "spec_kernel", "posterior"]

KINDS = ("nngp", "ntk")
OBJECTIVES = ("likelihood", "loo")
#: Up to this many training points the fit runs on one thread: every kernel operation is then
#: below torch's parallel grain (N^2 < 32768), and the LAPACK/BLAS calls on such small matrices
#: only lose time to thread start-up and, on a shared machine, to waiting for the other threads.
_ONE_THREAD_N = 181


@contextlib.contextmanager
def _threads_for(n: int):
    """One torch and BLAS thread for small problems (restored afterwards)."""
    if n > _ONE_THREAD_N:
        yield
        return
    before = torch.get_num_threads()
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(1))
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            pass
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def spec_kernel(spec: Layer, x1: torch.Tensor, x2: torch.Tensor | None = None, *, kind: str = "nngp") -> torch.Tensor:
    """The GP prior covariance of a spec: ``Sigma`` (``kind="nngp"``) or ``Theta`` (``"ntk"``), float64.

    ``x1`` ``(N1, ...)``, ``x2`` ``(N2, ...)`` or None; returns ``(N1, N2)``.
    """
    kind = check_choice("kind", str(kind).lower(), KINDS)
    if not isinstance(spec, Layer):
        raise InvalidArgumentError(f"`spec` must be a torchntk.layers spec, got {type(spec).__name__}")
    k = spec.kernel(x1, x2)
    out = k.nngp if kind == "nngp" else k.ntk
    if out is None:
        raise InvalidArgumentError("the spec has no NTK (a layer without a derivative rule): use kind='nngp'")
    if out.ndim != 2:
        raise InvalidArgumentError(
            f"the spec's output is still spatial (kernel shape {tuple(out.shape)}): end it with Flatten or "
            "GlobalAvgPool and a Dense layer"
        )
    return out


def posterior(
    spec: Layer,
    x_train: torch.Tensor,
    y_train: Any,
    x_test: torch.Tensor,
    *,
    kind: str = "nngp",
    noise: float = 0.0,
    full_cov: bool = True,
) -> Any:
    """GP posterior of the spec's kernel at ``x_test``: :func:`torchntk.dynamics.gp_posterior`
    with ``k = Sigma`` or ``Theta`` and ``diag_reg = sigma^2`` (absolute).

    ``kind="nngp"`` is the ``t = inf`` ensemble of readout-trained networks; ``kind="ntk"`` is the
    NTK-GP, whose mean ``Theta(x, X) (Theta + sigma^2 I)^{-1} y`` is the ``t = inf`` ensemble
    mean of fully trained networks. Returns a :class:`torchntk.dynamics.Gaussian` (``covariance``
    ``(M, M)`` of the latent function, or None when ``full_cov`` is False).
    """
    from ..dynamics import gp_posterior

    k = spec_kernel(spec, x_train, kind=kind)
    kx = spec_kernel(spec, x_test, x_train, kind=kind)
    kxx = spec_kernel(spec, x_test, kind=kind) if full_cov else None
    return gp_posterior(k, y_train, kx, kxx, diag_reg=float(noise), diag_reg_mode="absolute")


@dataclass
class FitResult:
    """What :func:`fit` found.

    Attributes:
        params: fitted hyperparameters (floats).
        noise: fitted (or fixed) noise variance ``sigma^2`` (absolute, also with ``relative_noise``).
        depth: the chosen depth (None when ``depths`` was not given).
        spec: ``build(**params)`` (with ``depth``) at the fitted values (float hyperparameters).
        kind: ``"nngp"`` or ``"ntk"``; objective: ``"likelihood"`` or ``"loo"``.
        log_marginal_likelihood: at the fitted values (sum over outputs).
        loo_mse: the closed-form leave-one-out mean squared error at the fitted values.
        jitter: diagonal jitter the final factorization needed (0 normally).
        by_depth: best objective value (log likelihood, or minus the LOO MSE) per depth tried.
        evaluations: objective evaluations in total.
    """

    params: dict[str, float]
    noise: float
    depth: int | None
    spec: Layer
    kind: str
    objective: str
    log_marginal_likelihood: float
    loo_mse: float
    jitter: float
    by_depth: dict = field(default_factory=dict)
    evaluations: int = 0

    def posterior(self, x_train: torch.Tensor, y_train: Any, x_test: torch.Tensor, *, full_cov: bool = True) -> Any:
        """:func:`posterior` with the fitted spec, kind and noise."""
        return posterior(self.spec, x_train, y_train, x_test, kind=self.kind, noise=self.noise, full_cov=full_cov)


def _positive(name: str, value: Any) -> float:
    """A number (or 0-dim tensor's value) > 0, as float."""
    return float(value_of(check_hyper(name, value, minimum=0.0, strict=True)))


def fit(
    build: Callable[..., Layer],
    x: torch.Tensor,
    y: Any,
    init: Mapping[str, float],
    *,
    kind: str = "nngp",
    noise: float | None = None,
    fit_noise: bool = True,
    relative_noise: bool = False,
    objective: str = "likelihood",
    depths: Iterable[int] | None = None,
    restarts: int = 2,
    bounds: float = 1e3,
    max_iter: int = 200,
    tol: float = 1e-12,
    seed: int = 0,
) -> FitResult:
    """Fit the hyperparameters of a family of specs to data ``(x, y)``.

    Args:
        build: ``build(**params)`` (and ``depth=d`` when ``depths`` is given) returning a spec;
            ``params`` are the keys of ``init``, passed as 0-dim float64 tensors.
        x: training inputs ``(N, ...)``; y: targets ``(N,)`` or ``(N, O)`` (one-hot columns for
            classes), each column an independent draw of the GP.
        init: initial values ``> 0`` of the hyperparameters to fit (the others are whatever
            ``build`` fixes).
        kind: ``"nngp"`` (prior ``Sigma``) or ``"ntk"`` (the NTK-GP, prior ``Theta``).
        noise: (initial) noise variance ``sigma^2``; None: ``0.1 mean(y^2)``.
        fit_noise: whether ``sigma^2`` is fitted too (else fixed at ``noise``).
        relative_noise: if True, ``noise`` is the ratio ``sigma^2 / mean(diag K)`` (the
            ``diag_reg`` of :func:`torchntk.dynamics.mse`), initially 0.1 when None.
        objective: ``"likelihood"`` (maximize ``log p(y)``) or ``"loo"`` (minimize the
            closed-form leave-one-out MSE; blind to an overall scale of ``K`` and ``sigma^2``).
        depths: depths to try (each fitted separately; the best objective wins).
        restarts: extra starts from random log-normal perturbations (std 1) of ``init``.
        bounds: each log-parameter stays within ``log(init / bounds), log(init * bounds)``.
        max_iter: L-BFGS-B iterations per start; tol: its relative tolerance on the objective
            (``ftol``; the projected-gradient tolerance is ``1e-2 sqrt(tol)``).
        seed: of the restarts. Depths after the first start from the best point found so far
            (plus the random restarts).

    Returns:
        :class:`FitResult`.

    Example:
        >>> from torchntk import layers as L
        >>> x = torch.randn(40, 3, dtype=torch.float64); y = torch.sin(x[:, 0])
        >>> build = lambda W_std, b_std: L.serial(L.Dense(1, W_std=W_std, b_std=b_std), L.Relu(),
        ...                                       L.Dense(1, W_std=W_std, b_std=b_std))
        >>> res = fit(build, x, y, {"W_std": 1.0, "b_std": 0.1})
        >>> sorted(res.params)
        ['W_std', 'b_std']
    """
    if not callable(build):
        raise InvalidArgumentError(f"`build` must be a callable returning a spec, got {build!r}")
    x = check_finite("x", check_tensor("x", x))  # else every start fails in spec.kernel, unexplained
    if not isinstance(init, Mapping) or not (init or fit_noise):
        raise InvalidArgumentError(f"`init` must be a dict name -> initial value (non-empty unless the noise is fitted), got {init!r}")
    init = {str(k): _positive(f"init[{k!r}]", v) for k, v in init.items()}
    kind = check_choice("kind", str(kind).lower(), KINDS)
    objective = check_choice("objective", str(objective).lower(), OBJECTIVES)
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0:
        raise InvalidArgumentError(f"`restarts` must be an int >= 0, got {restarts!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise InvalidArgumentError(f"`max_iter` must be a positive int, got {max_iter!r}")
    bounds = _positive("bounds", bounds)
    tol = _positive("tol", tol)
    x = x.to(torch.float64)
    y_t, _ = _as_targets(y, x.shape[0], x.device)
    scale = float((y_t**2).mean()) or 1.0
    if noise is None:
        noise = 0.1 if relative_noise else 0.1 * scale
    noise = float(noise)
    if fit_noise:
        noise = _positive("noise", noise)
    elif not (math.isfinite(noise) and noise >= 0):
        raise InvalidArgumentError(f"`noise` must be a finite variance >= 0, got {noise!r}")
    if depths is None:
        depth_list: list[int | None] = [None]
    else:
        depth_list = list(depths)
        if not depth_list or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in depth_list):
            raise InvalidArgumentError(f"`depths` must be positive ints, got {depths!r}")

    names = list(init)
    start = [math.log(init[n]) for n in names]
    box = [(s - math.log(bounds), s + math.log(bounds)) for s in start]
    if fit_noise:
        start.append(math.log(noise))
        ref = 1.0 if relative_noise else scale
        box.append((math.log(1e-9 * ref), math.log(10.0 * ref)))
    rng = np.random.default_rng(seed)
    starts = [np.array(start)] + [
        np.clip(np.array(start) + rng.normal(size=len(start)), [b[0] for b in box], [b[1] for b in box])
        for _ in range(restarts)
    ]

    def make(theta: torch.Tensor, depth: int | None) -> tuple[Layer, Any]:
        vals = theta.exp()
        params = {n: vals[i] for i, n in enumerate(names)}
        spec = build(**params) if depth is None else build(depth=depth, **params)
        return spec, (vals[-1] if fit_noise else noise)

    def loss(theta: torch.Tensor, depth: int | None) -> torch.Tensor:
        spec, nz = make(theta, depth)
        k = spec_kernel(spec, x, kind=kind)
        if relative_noise:
            nz = nz * torch.diagonal(k).mean()
        if objective == "likelihood":
            return -log_marginal_likelihood(k, y_t, nz) / y_t.numel()
        return loo(k, y_t, nz).mse

    count = [0]
    with _threads_for(x.shape[0]):
        best: tuple[float, np.ndarray, int | None] | None = None
        by_depth: dict = {}
        from scipy.optimize import minimize

        for depth in depth_list:

            def value_and_grad(theta: np.ndarray, depth: int | None = depth) -> tuple[float, np.ndarray]:
                count[0] += 1
                t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
                try:
                    out = loss(t, depth)
                    (g,) = torch.autograd.grad(out, t)
                except (InvalidArgumentError, RuntimeError):  # left the region where K_y is a covariance
                    return 1e300, np.zeros_like(theta)
                v = float(out.detach())
                if not math.isfinite(v) or not bool(torch.isfinite(g).all()):
                    return 1e300, np.zeros_like(theta)
                return v, g.numpy()

            depth_best: tuple[float, np.ndarray] | None = None
            first = starts if best is None else [best[1]] + starts[1:]
            for s0 in first:
                res = minimize(value_and_grad, s0, jac=True, method="L-BFGS-B", bounds=box,
                               options={"maxiter": max_iter, "ftol": tol, "gtol": 1e-2 * math.sqrt(tol)})
                if depth_best is None or res.fun < depth_best[0]:
                    depth_best = (float(res.fun), np.asarray(res.x))
            assert depth_best is not None
            by_depth[depth] = -depth_best[0] * (y_t.numel() if objective == "likelihood" else 1)
            if best is None or depth_best[0] < best[0]:
                best = (depth_best[0], depth_best[1], depth)
        assert best is not None
        if best[0] >= 1e300:
            raise InvalidArgumentError("no start gave a positive-definite kernel: check `init` and `noise`")

        theta = torch.tensor(best[1], dtype=torch.float64)
        params = {n: float(theta[i].exp()) for i, n in enumerate(names)}
        depth = best[2]
        nz = float(theta[-1].exp()) if fit_noise else noise
        spec = build(**params) if depth is None else build(depth=depth, **params)
        with torch.no_grad():
            k = spec_kernel(spec, x, kind=kind)
            if relative_noise:
                nz = nz * float(torch.diagonal(k).mean())
            lml = float(log_marginal_likelihood(k, y_t, nz))
            loo_mse = float(loo(k, y_t, nz).mse)
            _, jitter = cholesky(k, nz)
        return FitResult(params, nz, depth, spec, kind, objective, lml, loo_mse, jitter,
                         by_depth if depths is not None else {}, count[0])
