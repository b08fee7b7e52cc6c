"""The arithmetic of :mod:`.attention` on position-flattened kernels (private).

Kernel tensors in the full spatial layout ``(lead..., S0, S0', S1, S1')`` are turned into
``(lead..., D, D')`` matrices over the ``D`` flattened positions (row-major) and back; the
attention weights, the positional-embedding covariance ``R`` and the closed form of the
``1 / sqrt(n_key)``-scaled identity attention act on those.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch

from ..._kernel_checks import check_eigenvalues
from ...errors import InvalidArgumentError, SpecError


def pos_emb_covariance(
    spatial: tuple[int, ...], p_norm: float, decay_fn: Callable[[torch.Tensor], torch.Tensor] | None, dtype: Any, device: Any
) -> torch.Tensor:
    """``R[p, a]`` ``(D, D)`` over the flattened positions (row-major): ``[p == a]`` without a
    decay function, else ``decay_fn(sum_axes |p - a|^p_norm)`` (a tensor function)."""
    d = math.prod(spatial)
    if decay_fn is None:
        return torch.eye(d, dtype=dtype, device=device)
    dist = _distances(spatial, p_norm, dtype, device)
    r = decay_fn(dist)
    if not isinstance(r, torch.Tensor) or r.shape != dist.shape:
        raise InvalidArgumentError(
            f"GlobalSelfAttention: `pos_emb_decay_fn` must map a tensor of distances {tuple(dist.shape)} to a tensor "
            f"of the same shape, got {type(r).__name__} {getattr(r, 'shape', '')}"
        )
    if not bool(torch.isfinite(r).all()):
        raise InvalidArgumentError("GlobalSelfAttention: `pos_emb_decay_fn` gave non-finite covariances")
    _check_psd(tuple(spatial), float(p_norm), decay_fn)
    return r.to(dtype)


@functools.lru_cache(maxsize=64)
def _check_psd(spatial: tuple[int, ...], p_norm: float, decay_fn: Callable) -> None:
    """Refuse a ``decay_fn`` whose ``R`` is not a covariance (not PSD) on these positions: the
    kernel would be indefinite (once per positions, norm and function; float64 eigenvalues)."""
    r = torch.as_tensor(decay_fn(_distances(spatial, p_norm, torch.float64, "cpu")), dtype=torch.float64)
    r = (r + r.T) / 2
    try:
        check_eigenvalues("pos_emb_decay_fn", torch.linalg.eigvalsh(r), torch.float64)
    except InvalidArgumentError as err:
        raise SpecError(
            f"GlobalSelfAttention: the covariance R[p, a] = pos_emb_decay_fn(|p - a|^{p_norm:g}) on the "
            f"{spatial} positions is not positive semi-definite ({err}), so no positional embedding "
            "has it and the kernel would be indefinite; use a positive-definite decay such as "
            "exp(-d) or a Gaussian of the distance"
        ) from None


def _distances(spatial: tuple[int, ...], p_norm: float, dtype: Any, device: Any) -> torch.Tensor:
    """``sum_axes |p - a|^p_norm`` ``(D, D)`` over the flattened positions (row-major)."""
    grids = torch.meshgrid(*[torch.arange(s, dtype=dtype, device=device) for s in spatial], indexing="ij")
    coords = torch.stack([g.reshape(-1) for g in grids], dim=1)  # (D, nsp)
    return (coords[:, None, :] - coords[None, :, :]).abs().pow(p_norm).sum(-1)


def attention_weights(logits: torch.Tensor, keep: torch.Tensor | None, mechanism: str) -> torch.Tensor:
    """Attention weights ``phi(logits)`` ``(..., D, D)`` over the last axis (the keys), with the
    masked keys (``keep`` False, ``(..., D)``) at weight 0."""
    if mechanism == "softmax":
        if keep is not None:
            logits = logits.masked_fill(~keep[..., None, :], torch.finfo(logits.dtype).min)
        return torch.softmax(logits, dim=-1)
    if mechanism == "abs":
        g = logits.abs()
    elif mechanism == "relu":
        g = torch.relu(logits)
    else:
        g = logits
    return g if keep is None else g * keep[..., None, :].to(g.dtype)


def symmetrize(t: torch.Tensor, diag: torch.Tensor | None = None) -> torch.Tensor:
    """``(t[i, j, p, q] + t[j, i, q, p]) / 2``, then ``t[i, i] = diag[i]`` if given."""
    t = 0.5 * (t + t.permute(1, 0, 3, 2))
    if diag is None:
        return t
    idx = torch.arange(t.shape[0], device=t.device)
    return t.index_put((idx, idx), diag)


def sqrt_identity(nngp, ntk, cov1, cov2, mixed, r, w_in, w_pe, keep1, keep2, val, scale, b2):  # type: ignore[no-untyped-def]
    """Identity attention with ``1 / sqrt(n_key)`` scaling and independent queries.

    The logits ``G[p, a]`` are then Gaussian with ``E[G(x)[p, a] G(x')[q, b]] = QK_std^2 S[p, q]
    S[a, b]`` (``S = S(x, x')``), so with ``<A, B> = sum_{a, b kept} A[a, b] B[a, b]``:

        Sigma' = QK^2 OV^2 <S, V> S + b^2
        Theta' = QK^2 OV^2 (c S + <S, V> (Theta_S + 4 S)) + b^2,
        c = 2 <S, Theta_S> (embeddings in the values, or none), else <S, Theta> + <Sigma, Theta_S>

    ``Theta_S = w_in Theta + w_pe R``; the 4: gradients of W_Q, W_K, W_V and W_out.
    """
    def pairs(t: torch.Tensor) -> torch.Tensor:
        return t if r is None else w_in * t + w_pe * r

    def dot(a: torch.Tensor, b: torch.Tensor, k1: Any, k2: Any) -> torch.Tensor:
        prod = a * b
        if k1 is not None:
            prod = prod * k1[..., :, None].to(prod.dtype)
        if k2 is not None:
            prod = prod * k2[..., None, :].to(prod.dtype)
        return prod.sum((-1, -2), keepdim=True)

    k1 = None if keep1 is None else keep1[:, None]
    k2 = None if keep2 is None else keep2[None, :]
    s12 = pairs(nngp)
    v12 = s12 if val else nngp
    d12 = dot(s12, v12, k1, k2)
    new_nngp = scale * d12 * s12 + b2
    new_ntk = None
    if ntk is not None:
        t12 = pairs(ntk)
        c = 2 * dot(s12, t12, k1, k2) if (val or r is None) else dot(s12, ntk, k1, k2) + dot(nngp, t12, k1, k2)
        new_ntk = scale * (c * s12 + d12 * (t12 + 4 * s12)) + b2

    def own(cv: torch.Tensor, keep: Any) -> torch.Tensor:
        s = mixed(cv)
        return scale * dot(s, s if val else cv, keep, keep) * s + b2

    return new_nngp, new_ntk, own(cov1, keep1), None if cov2 is None else own(cov2, keep2)
