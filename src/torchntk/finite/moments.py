"""The NNGP at finite width: the 1/n shift and the four-point vertex of an MLP (single input).

Network (CONVENTIONS section 1, NTK parameterization), with ``C_W = W_std^2``, ``C_b = b_std^2``
of each Dense layer and hidden widths ``n_l``:

    z^(1) = (W_std / sqrt(n_0)) W^(1) x + b_std b^(1),
    z^(l+1) = (W_std / sqrt(n_l)) W^(l+1) phi(z^(l)) + b_std b^(l+1).

Given layer ``l``, the units of ``z^(l+1)`` are independent centred Gaussians of the *stochastic
kernel*

    G^(l+1) = C_b + (C_W / n_l) sum_j phi(z_j^(l))^2,

and given ``G^(l)`` the ``z_j^(l)`` are independent ``N(0, G^(l))``. So ``E[f^2] = E[G^(L)]`` and
``E[f^4] - 3 E[f^2]^2 = 3 Var[G^(L)]`` exactly. Expanding in the fluctuation of ``G^(l)``
(``O(n^-1/2)``), with ``g(K) = E[phi(u)^2]``, ``u ~ N(0, K)`` at the infinite-width kernel
``K_l`` and ``chi_par = C_W g'(K_l)``:

    K_{l+1}     = C_b + C_W g(K_l)                                      (infinite width)
    v_{l+1}     = (C_W^2 / n_l) (E[phi^4] - g^2) + chi_par^2 v_l         (v_l = Var G^(l))
    delta_{l+1} = chi_par delta_l + (C_W / 2) g''(K_l) v_l               (delta_l = E G^(l) - K_l)

from ``v_1 = delta_1 = 0`` (``G^(1) = C_b + C_W x.x / n_0`` is not random), up to ``O(n^-2)``.
In the notation of Roberts, Yaida & Hanin (ch. 4-5) ``v_l = V^(l) / n_{l-1}`` (the four-point
vertex) and ``delta_l = G^{1}(l) / n`` (the 1/n shift). For ReLU ``g`` is linear, so
``delta = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._gauss import moments
from ._spec import MLPLayout


@dataclass
class LayerMoments:
    """One layer's Gaussian expectations at the infinite-width kernel ``K`` (tensors ``(N,)``):
    ``(E, dE/dK, d^2E/dK^2)`` of ``phi^2`` (``g``), ``phi'^2`` (``h``) and
    ``E[phi^4]``, ``E[phi'^4]``, ``E[phi^2 phi'^2]`` (``q4``, ``r4``, ``m22``)."""

    g: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    h: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    q4: torch.Tensor
    r4: torch.Tensor
    m22: torch.Tensor


@dataclass
class NNGPState:
    """After Dense layer ``l``: ``K`` (infinite width), ``v = Var G^(l)``, ``delta = E G^(l) - K``,
    and the Gaussian expectations of the activation that follows (``None`` at the readout)."""

    K: torch.Tensor
    v: torch.Tensor
    delta: torch.Tensor
    gauss: LayerMoments | None = None


def input_kernel(layout: MLPLayout, x: torch.Tensor) -> torch.Tensor:
    """``G^(1) = C_b + C_W x.x / n_0`` per input (float64 ``(N,)``)."""
    x = x.to(torch.float64).reshape(x.shape[0], -1)
    return layout.cb[0] + layout.cw[0] * (x * x).sum(1) / x.shape[1]


def nngp_recursion(layout: MLPLayout, x: torch.Tensor) -> list[NNGPState]:
    """The states after each Dense layer (``L`` of them) for the inputs ``x`` ``(N, n_0)``."""
    K = input_kernel(layout, x)
    zero = torch.zeros_like(K)
    states = [NNGPState(K, zero, zero)]
    for l, (act, n) in enumerate(zip(layout.activations, layout.widths)):
        s = states[-1]
        m = moments(act.fn, s.K)
        s.gauss = LayerMoments(m["g"], m["h"], m["q4"][0], m["r4"][0], m["m22"][0])
        cw, cb = layout.cw[l + 1], layout.cb[l + 1]
        g, g1, g2 = m["g"]
        chi = cw * g1
        states.append(
            NNGPState(
                K=cb + cw * g,
                v=cw * cw / n * (m["q4"][0] - g * g) + chi * chi * s.v,
                delta=chi * s.delta + 0.5 * cw * g2 * s.v,
            )
        )
    return states
