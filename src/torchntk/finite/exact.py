"""Exact finite-width NNGP moments for positively homogeneous activations (ReLU family).

For ``phi(c z) = c phi(z)`` (``c > 0``: :class:`~torchntk.layers.Relu`, ``LeakyRelu``, ``Abs``,
``ABRelu``), ``phi(z_j)^2 = G^(l) phi(xi_j)^2`` with ``xi_j`` independent standard normals that
are independent of ``G^(l)``, so the stochastic kernel is a product of independent factors:

    G^(l+1) = C_b + C_W G^(l) Y_l,     Y_l = (1/n_l) sum_j phi(xi_j)^2,
    E[Y_l] = c_1 = (a^2 + b^2) / 2,    E[Y_l^2] = c_1^2 + (c_2 - c_1^2) / n_l,   c_2 = 3 (a^4 + b^4) / 2

for ``phi = a min(z, 0) + b max(z, 0)``. Its first two moments follow exactly, at any width:

    m1' = C_b + C_W c_1 m1,      m2' = C_b^2 + 2 C_b C_W c_1 m1 + C_W^2 E[Y^2] m2,

and ``E[f^2] = m1``, ``E[f^4] = 3 m2`` at the readout. For ReLU without bias
``E[f^4] / (3 E[f^2]^2) = prod_l (1 + 5 / n_l)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import layers
from .._checks import check_finite, check_nonempty_batch, check_tensor
from ..errors import SpecError
from ._spec import read_mlp
from .moments import input_kernel

__all__ = ["exact_nngp_moments"]


def exact_nngp_moments(
    spec: layers.Layer, x: torch.Tensor, *, width: int | Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E[f(x)^2], E[f(x)^4])`` exactly, at finite width, for an MLP of ``ABRelu``-family
    activations (tensors ``(N,)``, float64; arguments as :func:`~torchntk.finite.corrections`).

    Raises:
        SpecError: an activation is not positively homogeneous (not an ``ABRelu``).
    """
    x = check_finite("x", check_nonempty_batch("x", check_tensor("x", x)))
    layout = read_mlp(spec, width)
    m1 = input_kernel(layout, x)
    m2 = m1 * m1
    for l, (act, n) in enumerate(zip(layout.activations, layout.widths)):
        if not isinstance(act, layers.ABRelu):
            raise SpecError(f"exact moments need ReLU-family (ABRelu) activations, got {act!r}")
        a2, b2 = float(act.a) ** 2, float(act.b) ** 2
        c1, c2 = (a2 + b2) / 2, 3 * (a2 * a2 + b2 * b2) / 2
        cw, cb = layout.cw[l + 1], layout.cb[l + 1]
        ey2 = c1 * c1 + (c2 - c1 * c1) / n
        m1, m2 = cb + cw * c1 * m1, cb * cb + 2 * cb * cw * c1 * m1 + cw * cw * ey2 * m2
    return m1, 3 * m2
