"""The NTK at finite width: its 1/n mean shift and its variance at leading order (single input).

The diagonal NTK of unit ``i`` of layer ``l+1`` (NTK parameterization: the gradient with
respect to ``W^(l+1)_ij`` is ``sqrt(C_W / n_l) phi(z_j^(l))``, to ``b_i`` it is ``b_std``) is

    Theta^(l+1)_ii = G^(l+1) + (C_W / n_l) w_i^T M w_i,      M_jk = phi'(z_j) phi'(z_k) Theta^(l)_jk,

with ``w_i`` the unit's incoming standard-normal weights and ``G`` the stochastic NNGP kernel of
:mod:`torchntk.finite.moments`. Conditioning on layer ``l`` (``Omega_l = E[Theta^(l+1)_ii | layer l]
= G^(l+1) + (C_W / n_l) tr M``) splits the variance into ``Var(Omega_l) + 2 (C_W / n_l)^2 E tr M^2``,
and the shared ``w_i`` between ``z_i`` and ``Theta_ii`` gives the mean a term of Stein's lemma. With
``g = E[phi^2]``, ``h = E[phi'^2]`` at ``K_l``, ``chi_par = C_W g'``, ``chi_perp = C_W h``,
``kappa = chi_par + C_W h' Theta_l`` and the per-layer expectations ``E[.]`` under ``N(0, K_l)``:

    Theta_{l+1} = K_{l+1} + chi_perp Theta_l                                     (infinite width)
    d_{l+1} = (C_W^2/n_l) Cov(phi^2, phi^2 + Theta_l phi'^2) + chi_par (kappa v_l + chi_perp d_l)
    a_{l+1} = (C_W^2/n_l) Var(phi^2 + Theta_l phi'^2) + kappa^2 v_l + 2 kappa chi_perp d_l + chi_perp^2 a_l
    o_{l+1} = (C_W^2/n_l) E[phi'^4] Theta_l^2 + chi_perp^2 o_l
    eps_{l+1} = delta_{l+1} + C_W h' (Theta_l delta_l + d_l) + (C_W/2) h'' Theta_l v_l
                + chi_perp eps_l + 2 C_W^3 h' p_{l-1}
    p_l = E[phi^2 phi'^2] Theta_l / n_l + chi_par^2 p_{l-1}

with ``d_l = Cov(G^(l), Omega_{l-1})``, ``a_l = Var(Omega_{l-1})``, ``o_l = E[(Theta^(l)_ij)^2]``
(``i != j``), ``eps_l = E[Theta^(l)_ii] - Theta_l`` and ``p_l = phi^T M phi / n_l^2`` (the
correlation of a unit's kernel with its pre-activation); all start at 0 after the first layer
(``Theta^(1) = G^(1) I`` is not random), and ``p_0 = 0``. At the readout ``L``:

    E[Theta(x, x)] = Theta_L + eps_L,        Var[Theta(x, x)] = a_L + 2 o_L,

up to ``O(n^-2)``. In Roberts, Yaida & Hanin (ch. 8) ``a`` and ``o`` are the ``A/n`` and ``B/n``
tensors of the NTK variance (``Var = (A + 2B)/n`` on the diagonal) and ``d`` the NTK-preactivation
cross-correlation ``D/n``; their learning-rate tensors are ``lambda_W = C_W``, ``lambda_b = C_b``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._spec import MLPLayout
from .moments import NNGPState


@dataclass
class NTKState:
    """After Dense layer ``l``: ``theta`` (infinite width), ``eps`` (mean shift), ``a``, ``d``,
    ``o`` (see the module docstring), and ``p`` (of the activation after layer ``l - 1``)."""

    theta: torch.Tensor
    eps: torch.Tensor
    a: torch.Tensor
    d: torch.Tensor
    o: torch.Tensor
    p: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.theta + self.eps

    @property
    def variance(self) -> torch.Tensor:
        return self.a + 2 * self.o


def ntk_recursion(layout: MLPLayout, nngp: list[NNGPState]) -> list[NTKState]:
    """The NTK states after each Dense layer, from the NNGP states of
    :func:`~torchntk.finite.moments.nngp_recursion` (which hold the Gaussian expectations)."""
    zero = torch.zeros_like(nngp[0].K)
    states = [NTKState(nngp[0].K, zero, zero, zero, zero, zero)]
    for l, n in enumerate(layout.widths):
        s, q, nxt = states[-1], nngp[l], nngp[l + 1]
        m = q.gauss
        cw = layout.cw[l + 1]
        g, g1, _ = m.g
        h, h1, h2 = m.h
        th = s.theta
        chi_par, chi_perp = cw * g1, cw * h
        kappa = chi_par + cw * h1 * th
        y_mean = g + th * h
        cov_gy = m.q4 - g * g + th * (m.m22 - g * h)
        var_y = m.q4 + 2 * th * m.m22 + th * th * m.r4 - y_mean * y_mean
        c = cw * cw / n
        eps = (
            nxt.delta
            + cw * h1 * (th * q.delta + s.d)
            + 0.5 * cw * h2 * th * q.v
            + chi_perp * s.eps
            + 2 * cw**3 * h1 * s.p
        )
        states.append(
            NTKState(
                theta=nxt.K + chi_perp * th,
                eps=eps,
                a=c * var_y + kappa * kappa * q.v + 2 * kappa * chi_perp * s.d + chi_perp * chi_perp * s.a,
                d=c * cov_gy + chi_par * (kappa * q.v + chi_perp * s.d),
                o=c * m.r4 * th * th + chi_perp * chi_perp * s.o,
                p=m.m22 * th / n + chi_par * chi_par * s.p,
            )
        )
    return states
