"""The finite-width moments resummed: a second-moment closure of the layer-to-layer law.

The expansion of :mod:`torchntk.finite.moments` and :mod:`torchntk.finite.ntk_moments` keeps
the first order in ``1/n`` and evaluates every Gaussian expectation at the infinite-width kernel.
Its error is relative ``O((L - 1)/n)`` of the correction: the per-layer factors ``(1 + c/n)``
compound (for the ReLU NNGP exactly ``prod_l (1 + 5/n_l) - 1``), which the first order sums.

The closure propagates instead, layer by layer, the mean and covariance of the pair

    X^(l) = (G^(l), W^(l)),      W^(l) = E[Theta^(l)_jj | layer l - 1] = Omega_{l-1},

together with ``O_l = E[(Theta^(l)_jk)^2]`` (``j != k``, the off-diagonal NTK) without
truncating in ``1/n``. Given layer ``l - 1`` the units of layer ``l`` are independent, ``z_j ~
N(0, G^(l))``, and ``Theta^(l)_jj`` has mean ``W^(l)`` and variance ``2 O_l`` (plus the Stein
term ``2 C_W^2 h'(G) p`` of :mod:`~torchntk.finite.ntk_moments` in its correlation with
``z_j``). So, exactly given ``X^(l)``, with ``g, h, q4, r4, m22`` the Gaussian expectations of
:mod:`~torchntk.finite._gauss` at ``K = G^(l)`` and ``C_W, C_b`` of the next Dense layer:

    E[G' | X]      = C_b + C_W g
    E[W' | X]      = C_b + C_W (g + h W + 2 C_W^2 h' p)
    Var[G' | X]    = (C_W^2 / n) (q4 - g^2)
    Cov[G', W' | X] = (C_W^2 / n) (q4 - g^2 + (m22 - g h) W)
    Var[W' | X]    = (C_W^2 / n) (q4 + 2 m22 W + r4 (W^2 + 2 O) - (g + h W)^2)
    O'             = C_W^2 [ E[r4 (W^2 + 2 O)] / n + (1 - 1/n) E[h^2] O ]

and the laws of total mean and covariance give the next ``(E X', Cov X')``. The outer
expectations over ``X^(l)`` are the closure. ``W`` enters the rules at most quadratically, so it
is represented by its linear regression on ``G`` and a residual variance independent of ``G``;
``G`` by a log-normal law with its current mean and variance, integrated by a ``k``-node
Gauss-Hermite rule rescaled about its mean so that the discrete law has exactly that mean and
variance. Functions quadratic in ``(G, W)`` are therefore integrated exactly: for ReLU-family
activations ``g, q4, m22`` are ``c G``, ``c G^2``, ``c G`` and ``h, r4`` constants, and the NNGP
moments are the exact finite-width ones of :func:`~torchntk.finite.exact_nngp_moments` (to
rounding). For other activations the closure agrees with the expansion to ``O(1/n)`` and resums
the compounding; what it leaves out is of relative order ``1/n^2`` per layer: the shape of the
law of ``G`` beyond its variance, the dependence of ``W``'s residual on ``G``, the correlation of
``phi'`` with the off-diagonal ``Theta_jk`` and the fluctuation of the Stein term ``p``.

At the readout ``L``: ``E[f^2] = E G^(L)``, ``E[f^4] - 3 E[f^2]^2 = 3 Var G^(L)``,
``E[Theta] = E W^(L)``, ``Var[Theta] = Var W^(L) + 2 O_L``.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from ._gauss import moments
from ._spec import MLPLayout
from .moments import NNGPState, input_kernel
from .ntk_moments import NTKState

#: Gauss-Hermite nodes of the closure's law of ``G``.
NODES = 24


@cache
def _hermite_rule(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard normal: nodes ``(k,)`` and weights ``(k,)`` summing to 1."""
    xi, w = np.polynomial.hermite_e.hermegauss(k)
    return torch.tensor(xi, dtype=torch.float64), torch.tensor(w / w.sum(), dtype=torch.float64)


def matched_nodes(mean: torch.Tensor, var: torch.Tensor, k: int = NODES) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``(N, k)`` and weights ``(k,)`` of a discrete law on ``(0, inf)`` with exactly the
    given means ``(N,)`` (positive) and variances ``(N,)``: a log-normal's Gauss-Hermite rule,
    rescaled about its mean onto those two moments."""
    xi, w = _hermite_rule(k)
    s2 = torch.log1p(var / (mean * mean))
    X = torch.exp(torch.log(mean)[:, None] - s2[:, None] / 2 + s2.sqrt()[:, None] * xi)
    m_d = (w * X).sum(-1, keepdim=True)
    v_d = (w * (X - m_d) ** 2).sum(-1, keepdim=True)
    scale = torch.where(v_d > 0, (var[:, None] / v_d.clamp_min(torch.finfo(torch.float64).tiny)).sqrt(), 0.0)
    return mean[:, None] + (X - m_d) * scale, w


def closure_recursion(layout: MLPLayout, x: torch.Tensor, nngp: list[NNGPState], ntk: list[NTKState],
                      k: int = NODES) -> dict[str, torch.Tensor]:
    """The readout's ``nngp_mean``, ``nngp_cumulant4``, ``ntk_mean``, ``ntk_variance`` (each
    ``(N,)``) by the closure; ``ntk`` supplies the Stein terms ``p`` of the expansion."""
    G1 = input_kernel(layout, x)
    N = G1.shape[0]
    mean = torch.stack([G1, G1], -1)  # Theta^(1) = G^(1) I: not random
    cov = torch.zeros(N, 2, 2, dtype=torch.float64)
    O = torch.zeros(N, dtype=torch.float64)
    for l, (act, n) in enumerate(zip(layout.activations, layout.widths)):
        cw, cb = layout.cw[l + 1], layout.cb[l + 1]
        # G on matched nodes; W enters the rules at most quadratically, so only its regression
        # on G (slope beta) and the residual variance s2 are needed: E[W|G], E[W^2|G] = E[W|G]^2 + s2
        G, w = matched_nodes(mean[:, 0], cov[:, 0, 0], k)
        beta = torch.where(cov[:, 0, 0] > 0, cov[:, 0, 1] / cov[:, 0, 0].clamp_min(torch.finfo(torch.float64).tiny), 0.0)
        s2 = (cov[:, 1, 1] - beta * cov[:, 0, 1]).clamp_min(0)[:, None]
        W = mean[:, 1:] + beta[:, None] * (G - mean[:, :1])
        W2 = W * W + s2
        m = moments(act.fn, G)
        g, h, h1 = m["g"][0], m["h"][0], m["h"][1]
        q4, r4, m22 = m["q4"][0], m["r4"][0], m["m22"][0]
        p = ntk[l].p[:, None]
        e_g = cb + cw * g
        e_w = e_g + cw * (h * W + 2 * cw * cw * h1 * p)
        c = cw * cw / n
        v_gg = c * (q4 - g * g)
        v_gw = v_gg + c * (m22 - g * h) * W
        v_ww = c * (q4 + 2 * m22 * W + r4 * (W2 + 2 * O[:, None]) - g * g - 2 * g * h * W - h * h * W2)
        v_ww = v_ww + cw * cw * h * h * s2  # the spread of E[W'|X] = ... + C_W h W at fixed G
        E = torch.stack([e_g, e_w], -1)
        new_mean = (w[:, None] * E).sum(-2)
        D = E - new_mean[:, None, :]
        within = torch.stack([torch.stack([v_gg, v_gw], -1), torch.stack([v_gw, v_ww], -1)], -2)
        cov = torch.einsum("k,nkij->nij", w, within) + torch.einsum("k,nki,nkj->nij", w, D, D)
        O = cw * cw * ((w * r4 * (W2 + 2 * O[:, None])).sum(-1) / n + (1 - 1 / n) * (w * h * h).sum(-1) * O)
        mean = new_mean
    return {
        "nngp_mean": mean[:, 0],
        "nngp_cumulant4": 3 * cov[:, 0, 0],
        "ntk_mean": mean[:, 1],
        "ntk_variance": cov[:, 1, 1] + 2 * O,
    }
