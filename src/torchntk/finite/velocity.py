"""The kernel's motion in training: the empirical dNTK of any model (``kernel_velocity``) and
its first-order integral over a gradient-flow run (``predict_kernel_change``).

Gradient flow on ``L(theta) = 1/2 sum_j ||r_j||^2``, ``r_j = f(x_j) - y_j`` (the training
residual), moves the parameters along ``d theta/dt = -g``, ``g = sum_j J(x_j)^T r_j``. The NTK
``Theta_ab(x1, x2) = J_a(x1) . J_b(x2)`` then moves at

    d Theta_ab(x1, x2)/dt = -[ J_b(x2)^T H_a(x1) g + J_a(x1)^T H_b(x2) g ]
                          = D_{-g} Theta_ab(x1, x2)

(``H_a(x)`` the Hessian of ``f_a(x)`` in the parameters): the derivative of the eNTK along the
flow direction, the contraction of the dNTK of Dyer & Gur-Ari and Huang & Yau with the residual.
``H_a(x) g`` is one Hessian-vector product per example and output, computed for a batch at once
by forward-mode differentiation of the per-example Jacobians (``torch.func.jvp`` of
``vmap(jacrev)``); no Hessian is formed.

Time convention. CONVENTIONS section 4 trains on ``C = L / N`` (``N`` training examples), so its
time ``t_C`` is ``N`` times this one: ``dTheta/dt_C = (1/N) dTheta/dt``; ``normalization="mean"``
returns that. Gradient descent with learning rate ``eta`` on the same cost reaches time
``t = eta k`` after ``k`` steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import jacrev, jvp, vjp, vmap

from .._checks import check_batches, check_finite, check_nonempty_batch, check_tensor
from ..empirical import empirical_ntk, flatten_kernel
from ..empirical._functional import (
    OutputSelector,
    ParamSelector,
    make_functional,
    plain_input,
)
from ..empirical._modes import MODES
from ..empirical.api import _choice  # choices in any case, as empirical_ntk
from ..errors import InvalidArgumentError, ShapeError

__all__ = ["kernel_velocity", "predict_kernel_change"]

NORMALIZATIONS = ("sum", "mean")


def _jacobian_fn(fm, x):
    """``params -> J (N, O, P)``: the per-example Jacobians of ``x``, flattened over the parameters."""
    names = list(fm.params)

    def jac_one(p, xi):
        return jacrev(fm.single)(p, xi)

    def jac(p):
        out = vmap(jac_one, in_dims=(None, 0))(p, x)
        return torch.cat([out[n].reshape(x.shape[0], out[n].shape[1], -1) for n in names], -1)

    return jac


def _jacobians(fm, directions, x):
    """``J (N, O, P)`` and its derivatives along each of the ``T`` stacked ``directions``,
    ``(T, N, O, P)``: ``H_a(x_i) v_t``, one Hessian-vector product per example, output and
    direction, by forward mode over the reverse-mode Jacobian (vectorized over the directions)."""
    jac = _jacobian_fn(fm, x)
    j = jac(fm.params)
    dj = vmap(lambda d: jvp(jac, (fm.params,), (d,))[1])(directions)
    return j, dj


def _reduce(full: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "full":
        return full
    diag = full.diagonal(dim1=-2, dim2=-1)
    return diag if mode == "diagonal" else diag.mean(-1)


def _setup(model, x, x2, x_train, residual, params, output, normalization):
    x, x2 = check_batches(x, x2)
    x_train = check_finite("x_train", check_nonempty_batch("x_train", check_tensor("x_train", x_train)))
    if x_train.shape[1:] != x.shape[1:]:
        raise ShapeError(f"`x_train` must be a batch of inputs like `x` {tuple(x.shape[1:])}, got {tuple(x_train.shape)}")
    residual = check_finite("residual", check_tensor("residual", residual))
    fm = make_functional(model, params, output)
    out_dim = fm.probe(x_train, "x_train")
    if residual.ndim == 1 and out_dim == 1:
        residual = residual[:, None]
    if tuple(residual.shape) != (x_train.shape[0], out_dim):
        raise ShapeError(
            f"`residual` must be (N_train, O) = {(x_train.shape[0], out_dim)} (f(x_train) - y), got {tuple(residual.shape)}"
        )
    return fm, plain_input(x), None if x2 is None else plain_input(x2), plain_input(x_train), residual


def _velocity(fm, x, x2, x_train, residuals, mode, scale):
    """The velocities for the ``T`` residuals ``(T, M, O)``: ``(T, *shape of mode)``."""
    params = fm.params
    _, pullback = vjp(lambda p: fm(p, x_train), params)
    (g,) = vmap(pullback)(residuals.to(fm.dtype))
    directions = {n: -scale * g[n] for n in params}
    j1, dj1 = _jacobians(fm, directions, x)
    j2, dj2 = (j1, dj1) if x2 is None else _jacobians(fm, directions, x2)
    # dTheta[t, i, j, a, b] = dJ1[t, i, a] . J2[j, b] + J1[i, a] . dJ2[t, j, b]
    full = torch.einsum("tiap,jbp->tijab", dj1, j2) + torch.einsum("iap,tjbp->tijab", j1, dj2)
    return _reduce(full, mode)


def kernel_velocity(
    model: nn.Module | Callable,
    x: torch.Tensor,
    x_train: torch.Tensor,
    residual: torch.Tensor,
    *,
    x2: torch.Tensor | None = None,
    mode: str = "full",
    normalization: str = "sum",
    params: ParamSelector = None,
    output: OutputSelector = None,
) -> torch.Tensor:
    """``dTheta(x, x2)/dt`` under gradient flow on ``1/2 sum_j ||residual_j||^2``.

    Args:
        model: any model :func:`torchntk.empirical_ntk` handles (``nn.Module`` or ``f(params, x)``).
        x: inputs ``(N1, ...)``; ``x2``: inputs ``(N2, ...)`` (default ``x``).
        x_train: training inputs ``(M, ...)``; residual: ``f(x_train) - y``, ``(M, O)`` (or ``(M,)``
            for one output), the residual at the current parameters.
        mode: ``"full"`` ``(N1, N2, O, O)``, ``"diagonal"`` ``(N1, N2, O)`` or ``"mean"`` ``(N1, N2)``
            (CONVENTIONS section 3).
        normalization: ``"sum"`` (the cost ``1/2 sum ||r||^2``) or ``"mean"`` (the cost
            ``1/(2M) sum ||r||^2`` of CONVENTIONS section 4: the velocity divided by ``M``).
        params, output: as :func:`torchntk.empirical_ntk`.

    Returns:
        ``-[J(x2)^T H(x) g + J(x)^T H(x2) g]`` with ``g = sum_j J(x_j)^T r_j``, in the dtype of the
        model; the derivative of the eNTK along the gradient-flow direction.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> x = torch.randn(4, 3)
        >>> kernel_velocity(net, x, x, net(x).detach() - 1.0, mode="mean").shape
        torch.Size([4, 4])
    """
    mode, normalization = _choice("mode", mode, MODES), _choice("normalization", normalization, NORMALIZATIONS)
    fm, x, x2, x_train, residual = _setup(model, x, x2, x_train, residual, params, output, normalization)
    scale = 1.0 if normalization == "sum" else 1.0 / x_train.shape[0]
    return _velocity(fm, x, x2, x_train, residual[None], mode, scale)[0]


def predict_kernel_change(
    model: nn.Module | Callable,
    x: torch.Tensor,
    x_train: torch.Tensor,
    residual: torch.Tensor,
    t: float | torch.Tensor,
    *,
    x2: torch.Tensor | None = None,
    mode: str = "full",
    normalization: str = "sum",
    params: ParamSelector = None,
    output: OutputSelector = None,
) -> torch.Tensor:
    """``Theta_t(x, x2) - Theta_0(x, x2)`` to first order in the kernel's motion.

    The residual follows the linearized flow ``r_s = exp(-s Theta_train) r_0`` (``Theta_train`` the
    flattened ``(M O, M O)`` eNTK at the current parameters; ``Theta_train / M`` for
    ``normalization="mean"``), and the velocity is linear in the residual, so

        Delta Theta(t) = int_0^t V[r_s] ds = V[ Q diag((1 - exp(-t lambda)) / lambda) Q^T r_0 ]

    with ``V`` :func:`kernel_velocity` at the current parameters and ``Theta_train = Q diag(lambda) Q^T``
    (``t`` for ``lambda = 0``). Valid while the kernel moves little (the first order of the dNTK
    expansion; the next order is the ddNTK of Roberts, Yaida & Hanin ch. 11).

    Args:
        t: a time (``>= 0``), or a 1-D tensor of times (a leading time axis is added).
        the others: as :func:`kernel_velocity` (``residual`` is ``f_0(x_train) - y``).
    """
    mode, normalization = _choice("mode", mode, MODES), _choice("normalization", normalization, NORMALIZATIONS)
    fm, x, x2, x_train, residual = _setup(model, x, x2, x_train, residual, params, output, normalization)
    times = torch.as_tensor(t, dtype=torch.float64)
    if times.ndim > 1 or not bool(torch.isfinite(times).all()) or bool((times < 0).any()):
        raise InvalidArgumentError(f"`t` must be a finite time >= 0 or a 1-D tensor of them, got {t!r}")
    scale = 1.0 if normalization == "sum" else 1.0 / x_train.shape[0]
    m, o = residual.shape
    theta = flatten_kernel(empirical_ntk(model, x_train, params=params, output=output)).to(torch.float64) * scale
    lam, q = torch.linalg.eigh(theta)
    lam = lam.clamp(min=0)
    r0 = q.T @ residual.reshape(-1).to(torch.float64)
    tl = times.reshape(-1, 1) * lam
    # (1 - exp(-t lambda)) / lambda, and its limit t (1 - t lambda / 2) for t lambda -> 0
    safe = torch.where(lam > 0, lam, torch.ones_like(lam))
    factor = torch.where(tl > 1e-12, -torch.expm1(-tl) / safe, times.reshape(-1, 1) * (1 - tl / 2))
    integrals = ((factor * r0) @ q.T).reshape(-1, m, o).to(residual.dtype)
    out = _velocity(fm, x, x2, x_train, integrals, mode, scale)
    return out if times.ndim == 1 else out[0]
