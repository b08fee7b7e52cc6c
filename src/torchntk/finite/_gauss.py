"""One-dimensional Gaussian expectations of an activation and of its derivative (private).

For ``u ~ N(0, K)`` and integrands built from ``phi(u)`` and ``phi'(u)`` (``phi'`` by autograd,
as the layers' quadrature does), :func:`moments` returns the expectations and their first two
derivatives in ``K``. The derivatives use the Gaussian score, so ``phi`` need not be smooth:

    d/dK  E[f(u)] = E[f(u) He_2(xi)] / (2 K),      d^2/dK^2 E[f(u)] = E[f(u) He_4(xi)] / (4 K^2)

with ``u = sqrt(K) xi``, ``He_2 = xi^2 - 1``, ``He_4 = xi^4 - 6 xi^2 + 3``.

The rule: ``E[f(u)] = int_0^inf (f(sqrt(K) z) + f(-sqrt(K) z)) p(z) dz`` for the standard
normal density ``p``, each half-line mapped by ``z = log(1 + e^s)`` and integrated with the
trapezoid rule in ``s``. The split at 0 puts the kink (ReLU, |x|) or jump of the activations
of :mod:`torchntk.layers` at an end of the integration range, where the mapped integrand
decays exponentially; the trapezoid rule then converges geometrically (to about 1e-15 with the
default nodes) for piecewise-analytic ``phi``.
"""

from __future__ import annotations

import math
from functools import cache

import torch

# the activation and its derivative at the nodes, as the layers' quadrature evaluates them
# (private import from torchntk.layers; to be updated if the layers' modules move)
from ..layers.activations._quadrature import _eval

#: Trapezoid nodes in s on [S_MIN, S_MAX]: z = log(1 + e^s) from about 1e-17 to 14.
S_MIN, S_MAX, NODES = -39.0, 14.0, 801

#: Names of the integrands: phi^2, phi^4, phi'^2, phi'^4, phi^2 phi'^2.
NAMES = ("g", "q4", "h", "r4", "m22")


@cache
def _rule(nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.linspace(S_MIN, S_MAX, nodes, dtype=torch.float64)
    z = torch.nn.functional.softplus(s)
    dz = torch.sigmoid(s)
    w = (S_MAX - S_MIN) / (nodes - 1) * dz * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    w[0] *= 0.5
    w[-1] *= 0.5
    return z, w


def moments(fn, K: torch.Tensor, *, nodes: int = NODES) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Expectations under ``u ~ N(0, K)`` and their ``K``-derivatives.

    Args:
        fn: the elementwise activation ``phi`` (a torch function).
        K: variances, any shape, float64, positive.

    Returns:
        ``{name: (E, dE/dK, d^2E/dK^2)}`` for the names of :data:`NAMES`
        (``g = E[phi^2]``, ``q4 = E[phi^4]``, ``h = E[phi'^2]``, ``r4 = E[phi'^4]``,
        ``m22 = E[phi^2 phi'^2]``), each tensor of ``K``'s shape.
    """
    z, w = _rule(nodes)
    z, w = z.to(K.device), w.to(K.device)
    xi = torch.cat([z, -z])  # both half-lines
    ww = torch.cat([w, w])
    root = torch.sqrt(K)[..., None]
    phi, dphi = _eval(fn, (root * xi).detach(), True)
    phi, dphi = phi.detach(), dphi.detach()
    p2, d2 = phi * phi, dphi * dphi
    integrands = {"g": p2, "q4": p2 * p2, "h": d2, "r4": d2 * d2, "m22": p2 * d2}
    x2 = xi * xi
    he2 = x2 - 1
    he4 = x2 * x2 - 6 * x2 + 3
    out = {}
    for name, f in integrands.items():
        fw = f * ww
        out[name] = (fw.sum(-1), (fw * he2).sum(-1) / (2 * K), (fw * he4).sum(-1) / (4 * K * K))
    return out
