"""A closed-form FC-ReLU kernel function for the tests of torchntk.scale.

The infinite-width NNGP and NTK of ``depth`` x (Dense(W_std, b_std) -> ReLU) -> Dense, in the
recursion of CONVENTIONS section 2 (arc-cosine of degree 1, written with atan2)::

    Sigma0 = x . x' / n0,  Theta0 = 0
    Dense:  Sigma <- W_std^2 Sigma + b_std^2,   Theta <- W_std^2 Theta + Sigma
    ReLU:   s = sqrt(max(q11 q22 - q12^2, 0)),  t = atan2(s, q12)
            Sigma <- (s + (pi - t) q12) / (2 pi),   Theta <- Theta (pi - t) / (2 pi)

Neither BLAS products nor torch's elementwise kernels are position-invariant in the last bit
(the entry ``(i, j)`` of ``a @ b.T`` depends on the shapes of the call; a vectorized loop and
its scalar tail may round ``atan2`` differently). With ``block=B`` the whole computation runs
on ``B x B`` sub-blocks at offsets that are multiples of ``B`` (only the upper ones when
``b is a``, mirrored), so a tile whose offsets are multiples of ``B`` runs exactly the same
operations on the same data as the monolithic call: the tile equals the slice bit for bit.
``block=None`` is one plain computation (faster; the last bits may differ between tilings).
"""

from __future__ import annotations

import math
import time

import torch


class ReluFCKernel:
    """``(a (r, n0), b (c, n0)) -> {"nngp": (r, c), "ntk": (r, c)}`` float64 (see module doc).

    ``delay`` seconds are slept per call (tests use it to interrupt runs mid-way).
    """

    def __init__(self, depth: int = 5, W_std: float = 1.0, b_std: float = 0.1, delay: float = 0.0,
                 block: int | None = 64) -> None:
        self.depth, self.W_std, self.b_std, self.delay, self.block = depth, W_std, b_std, delay, block
        self.torchntk_identity = {"kind": "reference-relu-fc", "depth": depth, "W_std": W_std, "b_std": b_std}

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.delay:
            time.sleep(self.delay)
        sym, blk = b is a, self.block
        a = a.detach().to(torch.float64)
        b = a if sym else b.detach().to(torch.float64)
        if blk is None:
            return self._block(a, b)
        r, c = a.shape[0], b.shape[0]
        out = {k: torch.empty(r, c, dtype=a.dtype, device=a.device) for k in ("nngp", "ntk")}
        rows = [a[i : i + blk].clone() for i in range(0, r, blk)]
        cols = rows if sym else [b[j : j + blk].clone() for j in range(0, c, blk)]
        for bi, ai in enumerate(rows):
            for bj, cj in enumerate(cols):
                if sym and bj < bi:
                    continue
                part = self._block(ai, ai if sym and bi == bj else cj)
                i0, j0 = bi * blk, bj * blk
                for k, v in part.items():
                    out[k][i0 : i0 + v.shape[0], j0 : j0 + v.shape[1]] = v
                    if sym and bj > bi:
                        out[k][j0 : j0 + v.shape[1], i0 : i0 + v.shape[0]] = v.T
        return out

    def _block(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        n0 = a.shape[1]
        q12 = a @ b.T / n0
        q11 = (a * a).sum(1) / n0
        q22 = (b * b).sum(1) / n0
        return relu_fc_recursion(q11, q12, q22, self.depth, self.W_std, self.b_std)


def relu_fc_recursion(
    q11: torch.Tensor, q12: torch.Tensor, q22: torch.Tensor, depth: int, W_std: float, b_std: float
) -> dict[str, torch.Tensor]:
    """The recursion of the module doc from the input Gram ``q12 (r, c)``, ``q11 (r,)``, ``q22 (c,)``."""
    w2, b2 = W_std**2, b_std**2
    theta = torch.zeros_like(q12)
    sigma = q12
    for _ in range(depth):
        sigma = w2 * sigma + b2
        q11, q22 = w2 * q11 + b2, w2 * q22 + b2
        theta = w2 * theta + sigma
        prod = q11[:, None] * q22[None, :]
        s = torch.sqrt(torch.clamp(prod - sigma * sigma, min=0.0))
        t = torch.atan2(s, sigma)
        sdot = (math.pi - t) / (2 * math.pi)
        sigma = (s + (math.pi - t) * sigma) / (2 * math.pi)
        theta = theta * sdot
        q11, q22 = q11 / 2, q22 / 2
    sigma = w2 * sigma + b2
    theta = w2 * theta + sigma
    return {"nngp": sigma, "ntk": theta}


def assert_same_kernel(got: torch.Tensor, ref: torch.Tensor, *, symmetric: bool = True) -> None:
    """``got`` equals ``ref`` up to the rounding of two code paths (other tilings, processes,
    SIMD code paths or BLAS kernels computing the same recursion).

    The input Gram ``x . x' / n0`` is rounded differently by BLAS calls of other shapes (a few
    ulp of ``|x| |x'| / n0``); the recursion carries such a gap with a modest factor, except where
    the arc-cosine meets correlation 1 (the diagonal of a symmetric kernel): there
    ``s = sqrt(q11 q22 - q12^2)`` turns a relative gap ``delta ~ eps`` into ``sqrt(delta) ~ 1.5e-8``,
    which reaches Theta through ``Sdot = (pi - t) / (2 pi)``, ``t ~ s / q12``, once per layer.
    So: ``1e-12`` of the kernel's scale off the diagonal, ``1e-7`` on it.
    """
    assert got.shape == ref.shape and got.dtype == ref.dtype, (got.shape, ref.shape, got.dtype, ref.dtype)
    scale = float(ref.abs().max())
    if symmetric and got.ndim == 2 and got.shape[0] == got.shape[1]:
        off = ~torch.eye(got.shape[0], dtype=torch.bool)
        torch.testing.assert_close(got[off], ref[off], rtol=1e-12, atol=1e-12 * scale)
        torch.testing.assert_close(got.diagonal(), ref.diagonal(), rtol=1e-7, atol=1e-7 * scale)
    else:
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12 * scale)


class RecordingKernel:
    """``fn`` that keeps a copy of every block it returns, with where its rows and columns start
    in ``x`` (the blocks must be slices of ``x``, as :func:`torchntk.scale.tiled_kernel` passes
    them). A store's contents can then be compared bit for bit with the bytes computed for it
    (the same bytes), not with another run of the kernel (another code path: another rounding).
    """

    def __init__(self, fn, x: torch.Tensor) -> None:
        self.fn, self.x, self.calls = fn, x, []
        self.torchntk_identity = fn.torchntk_identity

    def _start(self, t: torch.Tensor) -> int:
        assert t.untyped_storage().data_ptr() == self.x.untyped_storage().data_ptr(), "not a slice of x"
        return (t.storage_offset() - self.x.storage_offset()) // self.x.stride(0)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.fn(a, b)
        self.calls.append((self._start(a), self._start(b), {k: v.clone() for k, v in out.items()}))
        return out

    def kernel(self) -> dict[str, torch.Tensor]:
        """The symmetric ``K(x, x)`` of the recorded blocks in call order (a later block overwrites
        an earlier one: the 2 x 2 probe comes first), each lower block the mirror of its upper
        one as a symmetric store reads it; entries no block covered are NaN."""
        n = self.x.shape[0]
        out: dict[str, torch.Tensor] = {}
        for i0, j0, blocks in self.calls:
            for name, v in blocks.items():
                k = out.setdefault(name, torch.full((n, n), float("nan"), dtype=v.dtype))
                r, c = v.shape
                k[i0:i0 + r, j0:j0 + c] = v
                if i0 != j0:
                    k[j0:j0 + c, i0:i0 + r] = v.T
        return out
