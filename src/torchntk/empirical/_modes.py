"""Output modes: Gram products in a matmul-friendly internal layout (private).

Every implementation reduces to sums of Gram products of per-output, per-example feature
vectors ``u1 (O, N1, F)`` and ``u2 (O, N2, F)`` (output-major: the layout in which a batched
backward pass returns cotangents). The accumulation happens in an internal layout chosen so
that each product is one (batched) matmul without copies:

=============  ==================  =========================================
mode           internal layout     entry
=============  ==================  =========================================
``"full"``      ``(O, N1, O, N2)``  ``sum_f u1[a, i, f] u2[b, j, f]``
``"diagonal"``  ``(O, N1, N2)``     ``sum_f u1[a, i, f] u2[a, j, f]``
``"mean"``      ``(N1, N2)``        ``sum_a sum_f u1[a, i, f] u2[a, j, f]`` (not yet / O)
=============  ==================  =========================================

:func:`finalize` turns it into the public shapes of CONVENTIONS section 3.
"""

from __future__ import annotations

import torch

#: The output reductions of a kernel (CONVENTIONS section 3), one constant for every entry point:
#: "full" (N1, N2, O, O), "diagonal" (N1, N2, O), "mean" (N1, N2).
MODES = ("full", "diagonal", "mean")


def gram(u1: torch.Tensor, u2: torch.Tensor, mode: str) -> torch.Tensor:
    """Gram product of ``u1 (O, N1, F)`` and ``u2 (O, N2, F)`` in the internal layout of ``mode``."""
    o, n1, _ = u1.shape
    n2 = u2.shape[1]
    if mode == "full":
        return (u1.reshape(o * n1, -1) @ u2.reshape(o * n2, -1).T).view(o, n1, o, n2)
    if mode == "diagonal":
        return torch.bmm(u1, u2.transpose(1, 2))
    if u1.numel() + u2.numel() <= SMALL_GRAM:  # one product over (output, feature) pairs
        return _flat(u1) @ _flat(u2).T
    out = u1[0] @ u2[0].T  # "mean": sum over outputs without an (O, N1, N2) temporary
    for a in range(1, o):
        out.addmm_(u1[a], u2[a].T)
    return out


#: Features of at most this many numbers (both sides) are copied into one ``(N, O F)`` matrix
#: for a "mean" Gram: one matrix product instead of ``O`` small ones, each of which waits for
#: every thread of the pool (milliseconds apiece when the cores are shared).
SMALL_GRAM = 1 << 22


def _flat(u: torch.Tensor) -> torch.Tensor:
    """``u (O, N, F)`` as ``(N, O F)``."""
    return u.transpose(0, 1).reshape(u.shape[1], -1)


def sym_chunks(m: int, f: int | None = None) -> list[slice]:
    """Row chunks of a symmetric ``m x m`` Gram of ``f``-wide rows: only the upper block
    triangle is multiplied (``(k + 1) / (2 k)`` of the flops for ``k`` chunks). Small Grams are
    not split (the saving would not pay for the smaller matmuls). The chunks depend on ``m``
    only through this rule, so :func:`mirror` (which does not know ``f``) must agree: ``f`` only
    decides between ``k = 1`` and the ``m``-based ``k``; :func:`mirror` on an unsplit block is a
    no-op apart from symmetrizing it."""
    if m < 128 or (f is not None and m * m * f < 20_000_000):
        k = 1
    else:
        k = min(4, max(2, m // 320))
    b = -(-m // k)
    return [slice(s, min(s + b, m)) for s in range(0, m, b)]


def _upper_mm(out: torch.Tensor, u: torch.Tensor, beta: float) -> None:
    """``out = beta out + u u^T`` on the upper block triangle of :func:`sym_chunks`.

    ``beta = 0`` ignores the old content of ``out`` (even NaN), so ``out`` may be uninitialized.
    """
    ch = sym_chunks(u.shape[0], u.shape[1])
    for bi, r in enumerate(ch):
        for c in ch[bi:]:
            out[r, c].addmm_(u[r], u[c].T, beta=beta)


def gram_sym(u: torch.Tensor, mode: str) -> torch.Tensor:
    """``gram(u, u, mode)``, valid on the upper block triangle only (see :func:`mirror`).

    The rows of the symmetric matrix are the flattened ``(a, i)`` pairs in ``"full"`` mode and
    the examples ``i`` in the other modes. The lower blocks are left uninitialized: only
    elementwise operations may touch them before :func:`mirror` overwrites them.
    """
    o, n, _ = u.shape
    if mode == "full":
        out = u.new_empty(o * n, o * n)
        _upper_mm(out, u.reshape(o * n, -1), 0.0)
        return out.view(o, n, o, n)
    if mode == "mean" and u.numel() <= SMALL_GRAM // 2:
        return gram(u, u, mode)
    out = u.new_empty(o, n, n) if mode == "diagonal" else u.new_empty(n, n)
    for a in range(o):
        _upper_mm(out[a] if mode == "diagonal" else out, u[a], 0.0 if (a == 0 or mode == "diagonal") else 1.0)
    return out


def mirror(t: torch.Tensor, mode: str) -> torch.Tensor:
    """Make a symmetric tile exactly symmetric: copy the upper block triangle onto the lower
    one and replace each diagonal block ``D`` by ``(D + D^T) / 2``."""
    t = t.contiguous()
    if mode == "full":
        o, n = t.shape[:2]
        mats = [t.view(o * n, o * n)]
    elif mode == "diagonal":
        mats = list(t)
    else:
        mats = [t]
    for m in mats:
        ch = sym_chunks(m.shape[0])
        for bi, r in enumerate(ch):
            d = m[r, r]
            d.copy_((d + d.T).mul_(0.5))
            for c in ch[bi + 1:]:
                m[c, r] = m[r, c].T
    return t


def pair_view(m: torch.Tensor, mode: str) -> torch.Tensor:
    """View an example-pair factor ``m (N1, N2)`` so it broadcasts against the internal layout."""
    if mode == "full":
        return m[None, :, None, :]
    if mode == "diagonal":
        return m[None]
    return m


def finalize(t: torch.Tensor, mode: str, out_dim: int) -> torch.Tensor:
    """Internal layout -> public shape: (N1, N2, O, O), (N1, N2, O) or (N1, N2)."""
    if mode == "full":
        return t.permute(1, 3, 0, 2)
    if mode == "diagonal":
        return t.permute(1, 2, 0)
    return t / out_dim


def transpose(t: torch.Tensor, mode: str) -> torch.Tensor:
    """Swap the roles of x1 and x2 in a public-shape kernel (Theta(x2, x1))."""
    if mode == "full":
        return t.permute(1, 0, 3, 2)
    return t.transpose(0, 1)


def out_shape(n1: int, n2: int, out_dim: int, mode: str) -> tuple[int, ...]:
    """Public shape of a kernel block."""
    return {"full": (n1, n2, out_dim, out_dim), "diagonal": (n1, n2, out_dim), "mean": (n1, n2)}[mode]


class Accumulator:
    """Sums the parts of one kernel block, or keeps them apart (``per_layer=True``).

    On a symmetric tile (``symmetric=True``) the parts need only be valid on the upper block
    triangle of :func:`sym_chunks`; :func:`mirror` completes them. ``add(name, t, factor)`` adds
    ``t * factor`` (``factor`` a number or a tensor broadcasting
    against ``t``; default 1), the part of parameter ``name`` in the internal layout. The
    accumulator may keep and modify ``t``: pass a fresh tensor.
    """

    def __init__(self, per_layer: bool, dtype: torch.dtype | None, symmetric: bool = False) -> None:
        self.per_layer, self.dtype, self.symmetric = per_layer, dtype, symmetric
        self.parts: dict[str, torch.Tensor] = {}

    def add(self, name: str, t: torch.Tensor, factor: float | torch.Tensor | None = None) -> None:
        if self.dtype is not None and t.dtype != self.dtype:
            t = t.to(self.dtype)
        key = name if self.per_layer else ""
        cur = self.parts.get(key)
        if cur is None:
            self.parts[key] = t if factor is None else t.mul_(factor)
        elif factor is None:
            cur.add_(t)
        elif isinstance(factor, torch.Tensor):
            cur.addcmul_(t, factor)
        else:
            cur.add_(t, alpha=factor)

    @property
    def total(self) -> torch.Tensor | None:
        """The sum of all parts (``per_layer=False``)."""
        return self.parts.get("")

    def gram(self, u1: torch.Tensor, u2: torch.Tensor, mode: str) -> torch.Tensor:
        """:func:`gram` of the features of a tile; on a symmetric tile (``x1`` block against
        itself) only the upper block triangle is computed, and the tiling mirrors it."""
        if self.symmetric:
            return gram_sym(u1, mode)
        return gram(u1, u2, mode)

    def cast(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in the accumulation dtype (features are cast before their products)."""
        return t if self.dtype is None or t.dtype == self.dtype else t.to(self.dtype)
