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

from .._spatial import from_positions, to_positions
from .._core.kernel import Kernel


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
    n1, n2 = k.nngp.shape[:2]
    per_pair = m1.ndim == 3 or m2.ndim == 3
    if per_pair:
        # per-sample maps: one copy of each side's maps per pair of samples, shared by nngp and
        # ntk, then two batched products (the map of x2 enters transposed, as a view)
        left = m1.unsqueeze(1) if m1.ndim == 3 else m1
        left = left.expand(n1, n2, *m1.shape[-2:]).reshape(n1 * n2, *m1.shape[-2:])
        right = m2.unsqueeze(0) if m2.ndim == 3 else m2
        right = right.expand(n1, n2, *m2.shape[-2:]).reshape(n1 * n2, *m2.shape[-2:]).transpose(1, 2)

    def finish(out: torch.Tensor, lead: int) -> torch.Tensor:
        if not out_spatial:
            return out.reshape(*out.shape[:lead])
        return from_positions(out, lead, out_spatial).contiguous()

    def pairs(t: torch.Tensor | None) -> torch.Tensor | None:
        """``m1 t m2^T`` for every pair of samples of ``t (N1, N2, ...)``."""
        if t is None:
            return None
        flat = to_positions(t, 2, nsp)
        if not per_pair:
            return finish(m1 @ flat @ m2.T, 2)
        p = flat.shape[-1]
        out = torch.bmm(torch.bmm(left, flat.reshape(n1 * n2, p, p)), right)
        return finish(out.view(n1, n2, *out.shape[1:]), 2)

    def own(t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``m t m^T`` for every sample of ``t (N, ...)``, with itself."""
        flat = to_positions(t, 1, nsp)
        if m.ndim == 3:
            return finish(torch.bmm(torch.bmm(m, flat), m.transpose(1, 2)), 1)
        return finish(m @ flat @ m.T, 1)

    nngp = pairs(k.nngp)
    ntk = nngp.clone() if _same_values(k.ntk, k.nngp) else pairs(k.ntk)  # Theta = Sigma: map once
    if k.same_inputs:
        # the kernel of each sample with itself is the diagonal of the square nngp: taken from
        # it, it equals that diagonal bit for bit (the ReLU rules amplify a last-bit gap there)
        cov1 = torch.diagonal(nngp, 0, 0, 1).movedim(-1, 0).contiguous()
    else:
        cov1 = own(k.cov1, m1)
    return k.replace(
        nngp=nngp,
        ntk=ntk,
        cov1=cov1,
        cov2=None if k.cov2 is None else own(k.cov2, m2),
        shape=(k.shape[0], *out_spatial),
        diagonal_spatial=not out_spatial,
        is_input=False,
    )
