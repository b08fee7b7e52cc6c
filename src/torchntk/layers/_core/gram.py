"""The inputs of the kernel driver and their kernel (private): checks and the input Gram.

``Sigma0 = x . x' / n0`` per pair of inputs (per pixel pair: the channel dot product over ``C``),
in the per-pixel or the full spatial layout (:mod:`torchntk.layers._spatial`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..._checks import check_finite, check_nonempty_batch, check_tensor
from ...errors import InvalidArgumentError, ShapeError
from .. import _spatial
from .kernel import Kernel



def _check_inputs(name: str, x: Any) -> torch.Tensor:
    x = check_tensor(name, x)
    check_nonempty_batch(name, x)
    if x.ndim not in (2, 3, 4):
        raise ShapeError(
            f"`{name}` must have shape (N, features), (N, C, L) or (N, C, H, W) (channels first); "
            f"got rank {x.ndim} with shape {tuple(x.shape)}"
        )
    if x.is_complex():
        raise InvalidArgumentError(f"`{name}` must be real, got {x.dtype}")
    return check_finite(name, x)




def input_kernel(x1: torch.Tensor, x2: torch.Tensor | None, *, full: bool) -> Kernel:
    """The kernel of the inputs: ``Sigma0 = x . x' / n0`` (per pixel pair: channel dot / C).

    ``x1``: ``(N1, n0)`` or ``(N1, C, *spatial)``; ``full`` selects the full spatial layout.
    ``Theta0 = 0``.
    """
    shape = tuple(x1.shape[1:])
    c = shape[0]
    nsp = len(shape) - 1
    xb = x1 if x2 is None else x2
    if nsp == 0:
        nngp = x1 @ xb.T / c
        cov1 = (x1 * x1).sum(1) / c
        cov2 = None if x2 is None else (x2 * x2).sum(1) / c
        full = False
    elif not full:
        sp = "hw"[:nsp]
        nngp = torch.einsum(f"ic{sp},jc{sp}->ij{sp}", x1, xb) / c
        cov1 = (x1 * x1).sum(1) / c
        cov2 = None if x2 is None else (x2 * x2).sum(1) / c
    else:
        nngp = _full_gram(x1, xb) / c
        cov1 = _self_full(x1) / c
        cov2 = None if x2 is None else _self_full(x2) / c
    if x2 is None:
        # Design note: a matmul's rounding differs with the block shape, and at correlation 1
        # the arc-cosine rules turn a last-bit gap between q12 and sqrt(q11 q22) into ~1e-8.
        # Making the input Gram exactly symmetric, with its diagonal equal to cov1 bit for bit,
        # makes every later layer symmetric and its diagonal independent of the blocking.
        nngp = 0.5 * (nngp + _spatial.transpose_pairs(nngp, full, nsp))
        idx = torch.arange(nngp.shape[0], device=nngp.device)
        nngp = nngp.index_put((idx, idx), cov1)
    return Kernel(
        nngp=nngp,
        ntk=torch.zeros_like(nngp),
        cov1=cov1,
        cov2=cov2,
        shape=shape,
        diagonal_spatial=not full,
        is_gaussian=False,
        is_input=True,
    )


def _full_gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(N1, C, *S), (N2, C, *S) -> (N1, N2, S0, S0', S1, S1')`` channel dot products."""
    nsp = a.ndim - 2
    n1, c, sp = a.shape[0], a.shape[1], a.shape[2:]
    n2 = b.shape[0]
    g = a.movedim(1, -1).reshape(-1, c) @ b.movedim(1, -1).reshape(-1, c).T  # (N1*S, N2*S)
    g = g.reshape(n1, *sp, n2, *sp)
    # axes: 0=N1, 1..nsp = S of a, nsp+1 = N2, nsp+2.. = S of b
    perm = [0, nsp + 1]
    for d in range(nsp):
        perm += [1 + d, nsp + 2 + d]
    return g.permute(perm).contiguous()


def _self_full(a: torch.Tensor) -> torch.Tensor:
    """``(N, C, *S) -> (N, S0, S0', S1, S1')``: every pixel pair of each input with itself."""
    nsp = a.ndim - 2
    flat = a.flatten(2)  # (N, C, D)
    g = flat.transpose(1, 2) @ flat  # (N, D, D)
    sp = a.shape[2:]
    g = g.reshape(a.shape[0], *sp, *sp)
    perm = [0]
    for d in range(nsp):
        perm += [1 + d, 1 + nsp + d]
    return g.permute(perm).contiguous()
