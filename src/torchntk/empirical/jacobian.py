"""The Jacobian implementation: per-example Jacobians, contracted one parameter at a time.

For every differentiated parameter tensor ``theta_p`` the per-example Jacobian
``J_p (N, O, *theta_p.shape)`` comes from ``torch.func.vmap(torch.func.jacrev(f_i))``; the kernel
is the sum over parameter tensors of the Gram products

    Theta[i, j, a, b] = sum_p  <J_p[i, a], J_p[j, b]>,

accumulated tensor by tensor: the Jacobians are never concatenated into one ``P``-wide matrix.
Cost: about ``O`` backward passes per example, plus ``2 N1 N2 O^2 P`` flops for the products
(``2 N1 N2 O P`` in the ``"diagonal"`` and ``"mean"`` modes); memory ``(N1 + N2) O P`` numbers,
bounded by blocking over the examples.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.func import jacrev, vmap

from ._functional import Functional
from ._modes import Accumulator


def jacobians(fm: Functional, x: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Per-example Jacobians ``{name: (N, O, *shape)}`` of ``fm`` at ``x (N, ...)``.

    Only the parameters in ``names`` (default: all of ``fm.params``) are differentiated.
    """
    names = list(fm.params) if names is None else list(names)
    if not names:
        return {}
    chosen = {n: fm.params[n] for n in names}
    rest = {n: t for n, t in fm.params.items() if n not in chosen}

    def single(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return fm.single({**rest, **p}, xi)

    return vmap(jacrev(single), in_dims=(None, 0))(chosen, x)


def contract_jacobians(
    j1: dict[str, torch.Tensor], j2: dict[str, torch.Tensor], mode: str, acc: Accumulator
) -> None:
    """Add ``sum_p <J1_p[i, a], J2_p[j, b]>`` to ``acc``, one part per parameter name."""
    for name, a in j1.items():
        b = j2[name]
        u1 = acc.cast(a.reshape(a.shape[0], a.shape[1], -1).transpose(0, 1))
        u2 = acc.cast(b.reshape(b.shape[0], b.shape[1], -1).transpose(0, 1))
        acc.add(name, acc.gram(u1, u2, mode))


class JacobianBackend:
    """Blocked-kernel backend: features are per-example Jacobians."""

    name = "jacobian"

    def __init__(self, fm: Functional, out_dim: int) -> None:
        self.fm, self.out_dim = fm, out_dim

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return jacobians(self.fm, x)

    def contract(self, f1: dict, f2: dict, mode: str, acc: Accumulator) -> None:
        contract_jacobians(f1, f2, mode, acc)

    def take(self, f: dict, rows: slice) -> dict:
        """The features of the examples ``rows`` (features are per example)."""
        return {k: v[rows] for k, v in f.items()}
