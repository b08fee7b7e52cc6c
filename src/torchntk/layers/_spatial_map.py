"""Linear maps of the spatial positions, applied to full-layout kernels (private).

A layer that mixes positions linearly, the same way on every channel, ``y[c, o] = sum_i
M[o, i] x[c, i]`` (positions flattened row-major), maps the covariance of every pair of
positions as

    Sigma'[o, o'] = sum_{i, i'} M1[o, i] Sigma[i, i'] M2[o', i']

where ``M1`` is the map of the first input and ``M2`` of the second (they differ when the map
depends on the sample, as a graph's adjacency does). ``Theta`` transforms the same way (no
parameters). :func:`matrix_of` builds ``M`` from any linear function of the inputs by applying
it to the basis images.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .kernel import Kernel


def _unzip(t: torch.Tensor, lead: int, nsp: int) -> torch.Tensor:
    """``(lead..., S0, S0', S1, S1') -> (lead..., S0 * S1, S0' * S1')``."""
    perm = list(range(lead)) + [lead + 2 * a for a in range(nsp)] + [lead + 2 * a + 1 for a in range(nsp)]
    t = t.permute(perm)
    sizes = t.shape[lead : lead + nsp]
    return t.reshape(*t.shape[:lead], math.prod(sizes), math.prod(sizes))


def _zip(t: torch.Tensor, lead: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """``(lead..., P, P') -> (lead..., S0, S0', S1, S1')`` for ``P = prod(spatial)``."""
    nsp = len(spatial)
    t = t.reshape(*t.shape[:lead], *spatial, *spatial)
    perm = list(range(lead))
    for a in range(nsp):
        perm += [lead + a, lead + nsp + a]
    return t.permute(perm).contiguous()


def matrix_of(fn: Callable[[torch.Tensor], torch.Tensor], spatial: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """``M (P_out, P_in)`` of a linear, channel-wise map ``fn: (B, 1, *spatial) -> (B, 1, *out)``."""
    p_in = math.prod(spatial)
    basis = torch.eye(p_in, dtype=like.dtype, device=like.device).reshape(p_in, 1, *spatial)
    out = fn(basis)
    return out.reshape(p_in, -1).T


def _same_values(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    """Whether ``a`` holds the values of ``b`` (a scan that stops at the first difference);
    False while autograd records (equal values may still have different derivatives)."""
    if a is None or (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)):
        return False
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))


def apply_map(
    k: Kernel, m1: torch.Tensor, m2: torch.Tensor | None, out_spatial: tuple[int, ...]
) -> Kernel:
    """The kernel after the position map (full layout in and out).

    ``m1``: ``(P_out, P_in)`` or per sample ``(N1, P_out, P_in)``; ``m2`` likewise for ``x2``
    (``None``: ``m1``, which then must not be per sample unless ``x2`` is ``x1``).
    ``out_spatial``: the output's spatial sizes (``()`` for a flat output).
    """
    nsp = k.spatial_ndim
    m2 = m1 if m2 is None else m2

    def both(t: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, lead: int) -> torch.Tensor | None:
        if t is None:
            return None
        flat = _unzip(t, lead, nsp)
        if lead == 2:  # (N1, N2, P, P'): per-sample maps broadcast over the other batch axis
            a = a.unsqueeze(1) if a.ndim == 3 else a
            b = b.unsqueeze(0) if b.ndim == 3 else b
        out = a @ flat @ b.transpose(-1, -2)
        if not out_spatial:
            return out.reshape(*out.shape[:lead])
        return _zip(out, lead, out_spatial)

    nngp = both(k.nngp, m1, m2, 2)
    if _same_values(k.ntk, k.nngp):  # Theta = Sigma (after a first Dense layer): map it once
        ntk = nngp.clone()
    else:
        ntk = both(k.ntk, m1, m2, 2)
    return k.replace(
        nngp=nngp,
        ntk=ntk,
        cov1=both(k.cov1, m1, m1, 1),
        cov2=None if k.cov2 is None else both(k.cov2, m2, m2, 1),
        shape=(k.shape[0], *out_spatial),
        diagonal_spatial=not out_spatial,
        is_input=False,
    )
