"""The NTK-vector-product implementation: no Jacobian is ever materialized.

A column of the kernel is ``Theta(x1, x2) e_(j, b) = J(x1) (J(x2)^T e_(j, b))``: one
vector-Jacobian product on ``x2`` (reverse mode, ``torch.func.vjp``) gives a parameter-space
vector, one Jacobian-vector product on ``x1`` (forward mode, ``torch.func.jvp``) maps it back.
Columns are processed in chunks (``vmap`` over a chunk of basis cotangents); only one chunk of
parameter-space vectors (``chunk x P`` numbers) lives at a time.

Cost: ``N2 O`` columns, each one backward pass over ``x2`` and one forward-mode pass over ``x1``:
about ``N2 O (3 N2 + 3 N1) F`` flops for a model of ``F`` forward flops per example. It is the
slowest implementation in time but the leanest in memory (``chunk P`` plus activations).
"""

from __future__ import annotations

import torch
from torch.func import jvp, vjp, vmap

from ._functional import Functional
from ._modes import Accumulator


class NtvpBackend:
    """Blocked-kernel backend: features are the inputs; each tile is built from NTK-vector products."""

    name = "ntvp"

    def __init__(self, fm: Functional, out_dim: int, chunk: int | None = None) -> None:
        self.fm, self.out_dim = fm, out_dim
        self.chunk = chunk

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def take(self, f: torch.Tensor, rows: slice) -> torch.Tensor:
        return f[rows]

    def _columns(self, x1: torch.Tensor, x2: torch.Tensor, names: list[str]) -> torch.Tensor:
        """``C[j, b, i, a] = sum_{p in names} J_p(x1)[i, a] . J_p(x2)[j, b]`` as (N2, O, N1, O)."""
        o = self.out_dim
        n1, n2 = x1.shape[0], x2.shape[0]
        eye = torch.eye(n2 * o, dtype=fm_dtype(self.fm), device=x2.device)
        basis = eye.view(n2 * o, n2, o)
        chunk = self.chunk or n2 * o
        cols = [ntk_products(self.fm, x1, x2, basis[s : s + chunk], names) for s in range(0, n2 * o, chunk)]
        return torch.cat(cols).view(n2, o, n1, o)

    def contract(self, f1: torch.Tensor, f2: torch.Tensor, mode: str, acc: Accumulator) -> None:
        groups = [[n] for n in self.fm.params] if acc.per_layer else [list(self.fm.params)]
        for names in groups:
            c = acc.cast(self._columns(f1, f2, names))  # (N2, O_b, N1, O_a)
            if mode == "full":
                t = c.permute(3, 2, 1, 0)  # (O, N1, O, N2)
            else:
                d = torch.diagonal(c, dim1=1, dim2=3)  # (N2, N1, O)
                t = d.permute(2, 1, 0) if mode == "diagonal" else d.sum(-1).T
            acc.add(names[0] if acc.per_layer else "", t.contiguous())


def ntk_products(fm: Functional, x_out: torch.Tensor, x_in: torch.Tensor, cotangents: torch.Tensor,
                 names: list[str] | None = None, rows: int | None = None) -> torch.Tensor:
    """``J(x_out) (J(x_in)^T c)`` for each of ``m`` cotangents ``c``: ``(m, N_in, O) -> (m, N_out, O)``.

    ``J`` is the Jacobian in the parameters ``names`` (default: all of ``fm.params``); the others
    stay fixed. ``J(x_in)^T c`` is a vector-Jacobian product (``torch.func.vjp``) summed over
    blocks of ``rows`` inputs, ``J(x_out) t`` a Jacobian-vector product (``torch.func.jvp``) per
    block (``rows=None``: each batch at once); both are ``vmap``-ed over the ``m`` cotangents.
    The one NTK-vector-product engine: the ``"ntvp"`` implementation's kernel columns and
    ``scale.KernelOperator.from_model``'s products.
    """
    names = list(fm.params) if names is None else names
    rest = {n: t for n, t in fm.params.items() if n not in names}
    primal = {n: fm.params[n] for n in names}

    def call(p: dict, xb: torch.Tensor) -> torch.Tensor:
        return fm({**rest, **p}, xb)

    n_in, n_out = x_in.shape[0], x_out.shape[0]
    step_in, step_out = rows or max(n_in, 1), rows or max(n_out, 1)
    tangents = None
    for s in range(0, n_in, step_in):
        _, pull = vjp(lambda p, xb=x_in[s : s + step_in]: call(p, xb), primal)
        (g,) = vmap(pull)(cotangents[:, s : s + step_in])
        tangents = g if tangents is None else {k: tangents[k] + g[k] for k in tangents}
    parts = []
    for s in range(0, n_out, step_out):
        xb = x_out[s : s + step_out]

        def push(t: dict, xb: torch.Tensor = xb) -> torch.Tensor:
            return jvp(lambda p: call(p, xb), (primal,), (t,))[1]

        parts.append(vmap(push)(tangents))
    return torch.cat(parts, 1)


def fm_dtype(fm: Functional) -> torch.dtype:
    """The floating dtype of the model's parameters."""
    return next(iter(fm.params.values())).dtype
