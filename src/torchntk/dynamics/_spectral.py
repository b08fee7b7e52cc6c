"""Per-mode time factors of linear (squared-loss) training (private).

With ``Theta = Q diag(lam) Q^T`` and ``r0 = f0(X) - y``, every linear training rule of
:mod:`torchntk.dynamics` is diagonal in the eigenbasis. For each eigenvalue ``lam`` and time ``t`` this
module returns two factors:

- ``e(lam, t)``: the residual's factor, ``Q^T r_t = e * Q^T r0``;
- ``g(lam, t)``: the test factor, ``f_t(x) = f0(x) - Theta(x, X) Q diag(g) Q^T r0``.
  For a stable rule ``g = (1 - e) / lam``; it is computed without dividing by ``lam`` so that
  zero modes (``g -> `` the time integral) are exact.

Three rules (``N`` samples, learning rate ``eta``, momentum ``mu``):

- gradient flow:          ``e = exp(-t lam / N)``,        ``g = -expm1(-t lam / N) / lam``
- gradient descent:       ``e = (1 - eta lam / N)^t``,     ``g = (1 - e) / lam``
- heavy-ball momentum:    ``u_{k+1} = mu u_k - eta grad C``, ``theta_{k+1} = theta_k + u_{k+1}``
  (``torch.optim.SGD(momentum=mu)``): per mode, with ``d`` the output velocity per unit residual,
  ``d_{k+1} = mu d_k + (eta/N) e_k``, ``e_{k+1} = e_k - lam d_{k+1}``, ``g_{k+1} = g_k + d_{k+1}``,
  evaluated as a 3x3 matrix power per mode.
"""

from __future__ import annotations

import torch


def factors(
    lam: torch.Tensor,
    t: torch.Tensor,
    n: int,
    learning_rate: float | None,
    momentum: float | None,
    *,
    need_g: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return ``e`` and ``g`` of shape ``(T, D)`` for eigenvalues ``lam`` (D,) and finite times
    ``t`` (T,), in ``lam``'s dtype and device."""
    tt = t.to(device=lam.device, dtype=lam.dtype)[:, None]
    lam_ = lam[None, :]
    if learning_rate is None:
        x = tt * lam_ / n
        e = torch.exp(-x)
        if not need_g:
            return e, None
        safe = torch.where(lam_ > 0, lam_, torch.ones_like(lam_))
        g = torch.where(lam_ > 0, -torch.expm1(-x) / safe, (tt / n).expand_as(x))
        return e, g
    if not momentum:
        a = learning_rate * lam_ / n
        e = torch.pow(1.0 - a, tt)
        if not need_g:
            return e, None
        safe = torch.where(lam_ > 0, lam_, torch.ones_like(lam_))
        small = a < 0.5
        # accurate 1 - (1 - a)^t for small a: -expm1(t * log1p(-a))
        a_small = torch.where(small, a, torch.zeros_like(a))
        one_minus_e = torch.where(small, -torch.expm1(tt * torch.log1p(-a_small)), 1.0 - e)
        g = torch.where(lam_ > 0, one_minus_e / safe, (tt * learning_rate / n).expand_as(one_minus_e))
        return e, g
    return _momentum_factors(lam, t, n, learning_rate, momentum)


def _momentum_factors(
    lam: torch.Tensor, t: torch.Tensor, n: int, lr: float, mu: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heavy-ball factors by a 3x3 matrix power per mode; state ``(e, d, g)``."""
    d_count = lam.shape[0]
    c = lr / n
    m = torch.zeros(d_count, 3, 3, dtype=lam.dtype, device=lam.device)
    # e' = e - lam d' = (1 - lam c) e - lam mu d;  d' = c e + mu d;  g' = g + c e + mu d
    m[:, 0, 0] = 1.0 - lam * c
    m[:, 0, 1] = -lam * mu
    m[:, 1, 0] = c
    m[:, 1, 1] = mu
    m[:, 2, 0] = c
    m[:, 2, 1] = mu
    m[:, 2, 2] = 1.0
    e = torch.empty(t.shape[0], d_count, dtype=lam.dtype, device=lam.device)
    g = torch.empty_like(e)
    for i, k in enumerate(t.tolist()):
        p = torch.linalg.matrix_power(m, int(k))
        # initial state (e, d, g) = (1, 0, 0): take the first column
        e[i] = p[:, 0, 0]
        g[i] = p[:, 2, 0]
    return e, g
