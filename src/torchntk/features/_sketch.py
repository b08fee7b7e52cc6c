"""Random projections used by the feature maps (private).

Every projection ``P`` here maps vectors on the last axis, ``(..., d_in) -> (..., d_out)``, and
is drawn once (by the feature map) from a ``torch.Generator``:

- :class:`Srht` (subsampled randomized Hadamard transform): ``S x = (H D x)[rows] / sqrt(d_out)``
  with ``D`` random signs and ``H`` the unnormalized Walsh-Hadamard matrix (entries +-1) of the
  next power of two ``d_p >= d_in``, in independent blocks when ``d_out > d_p``. It is an
  unbiased sketch of inner products, ``E[<S x, S x'>] = <x, x'>``, costs ``O(d_p log d_p)``
  per vector, and its rows are orthogonal within a block (less variance than Gaussian rows).
- :class:`GaussianProjection`: ``W x`` with ``W`` of i.i.d. ``N(0, 1)`` rows, so
  ``(w . x, w . x')`` is exactly Gaussian with covariance ``[[|x|^2, x.x'], [x.x', |x'|^2]]``:
  the arc-cosine and every other activation feature is then an unbiased estimate.
- :class:`StructuredProjection` (structured orthogonal random features): the rows of
  ``H D1 H D2 H D3 / d_p``, with ``E[w w^T] = I`` exactly and ``w . x`` Gaussian only up to
  ``O(1/d_p)`` (a central-limit approximation), at the cost of three Hadamard transforms.

The Walsh-Hadamard transform of length ``d = d1 * d2`` is applied as ``H_d = H_d1 (x) H_d2``:
two matrix products with small Hadamard matrices, ``O(d (d1 + d2))`` flops that run at BLAS
speed (faster on a CPU than the ``log d`` butterfly passes for the sizes used here). A width
just past a power of two (``2^k + r``, ``r <= 64``: the bias column) keeps the length ``2^k``
and gives its last ``r`` columns independent Gaussian rows (still unbiased: the two parts'
cross terms have mean zero).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

Tensor = torch.Tensor


def next_pow2(d: int) -> int:
    """The smallest power of two ``>= d`` (``>= 1``)."""
    return 1 << max(0, (int(d) - 1).bit_length())


@lru_cache(maxsize=64)
def _hadamard_matrix(k: int, dtype: torch.dtype, device: str) -> Tensor:
    """The ``2^k x 2^k`` Sylvester Hadamard matrix (entries +-1)."""
    h = torch.ones(1, 1, dtype=dtype, device=device)
    base = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=dtype, device=device)
    for _ in range(k):
        h = torch.kron(h, base)
    return h


def hadamard(x: Tensor) -> Tensor:
    """``x @ H`` on the last axis (length a power of two), ``H`` unnormalized (``H H = d I``)."""
    d = x.shape[-1]
    k = d.bit_length() - 1
    if d != 1 << k:
        raise ValueError(f"hadamard needs a power-of-two length, got {d}")
    if d == 1:
        return x.clone()
    k1 = k // 2
    d1, d2 = 1 << k1, 1 << (k - k1)
    dev = str(x.device)
    h2 = _hadamard_matrix(k - k1, x.dtype, dev)
    lead = x.shape[:-1]
    y = x.reshape(-1, d2) @ h2  # index i = i1 * d2 + i2: transform along i2
    if d1 > 1:
        h1 = _hadamard_matrix(k1, x.dtype, dev)
        y = y.reshape(-1, d1, d2).transpose(1, 2).reshape(-1, d1) @ h1  # along i1
        y = y.reshape(-1, d2, d1).transpose(1, 2)
    return y.reshape(*lead, d)


def _signs(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randint(0, 2, shape, generator=gen, dtype=torch.int8).to(torch.float64).mul_(2).sub_(1)


def _pad(x: Tensor, d: int) -> Tensor:
    return x if x.shape[-1] == d else torch.nn.functional.pad(x, (0, d - x.shape[-1]))


#: Columns past a power of two handled by a small Gaussian block instead of doubling the
#: Hadamard length (the bias column makes widths such as ``2^k + 1``).
_TAIL = 64


def _split(d_in: int) -> tuple[int, int]:
    """``(d_h, tail)``: the Hadamard length and the columns left to a Gaussian block."""
    low = 1 << (max(1, d_in).bit_length() - 1)
    if d_in - low <= _TAIL and low >= 4 * _TAIL:
        return low, d_in - low
    return next_pow2(d_in), 0


#: ``precision="bfloat16"`` turns a projection into a dense matrix only up to this many entries
#: (``8193 x 4096`` fits; a conv window's ``9 m x m`` compression keeps its fast transform).
DENSE_MAX_ENTRIES = 2**25 + 2**13


class Projection:
    """A drawn linear map on the last axis; ``to(dtype, device, precision)`` casts it (cached)."""

    d_in: int
    d_out: int

    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _tensors(self) -> dict[str, Tensor]:
        return {}

    def matrix(self, dtype: torch.dtype = torch.float32, chunk: int = 2048) -> Tensor:
        """The map as a matrix ``(d_in, d_out)`` of ``dtype`` (``x -> x @ matrix``): its action
        on the identity, a chunk of rows at a time (float32 holds the +-1 Hadamard sums exactly
        up to ``2^24``; the matrix is rounded to bfloat16 afterwards anyway)."""
        cast = Projection.to(self, dtype, torch.device("cpu"))
        out = torch.empty(self.d_in, self.d_out, dtype=dtype)
        for lo in range(0, self.d_in, chunk):
            n = min(chunk, self.d_in - lo)
            eye = torch.zeros(n, self.d_in, dtype=dtype)
            eye[:, lo:lo + n] = torch.eye(n, dtype=dtype)
            out[lo:lo + n] = cast(eye)
        return out

    def to(self, dtype: torch.dtype, device: torch.device, precision: str = "full") -> "Projection":
        """The projection for features of ``dtype`` on ``device``; ``precision="bfloat16"``: as
        a :class:`DenseProjection` (the same draws) when it has at most ``DENSE_MAX_ENTRIES``."""
        if precision == "bfloat16" and self.d_in * self.d_out <= DENSE_MAX_ENTRIES:
            return DenseProjection(self.matrix(), device)
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        for name, t in self._tensors().items():
            setattr(out, name, t.to(dtype=dtype, device=device))
        return out


class DenseProjection(Projection):
    """``x -> x @ M`` in bfloat16 (inputs and ``M`` rounded to 8-bit mantissas, products summed
    in float32 by the BLAS); the result stays bfloat16: the next step's products round their
    inputs to bfloat16 anyway, and the feature map casts its output to its ``dtype``.

    Every entry is the full-precision projection's up to a relative ``~2^-8`` rounding,
    independent between entries, so inner products of ``D`` such outputs move by about
    ``2^-8 / sqrt(D)`` relative: far below the Monte Carlo error ``~ D^(-1/2)`` of the draws.
    Matrix units with bfloat16 products (CPUs with AMX, GPUs) run it several times faster
    than a float32 product, and faster than the ``O(d log d)`` Hadamard passes at these sizes.
    """

    def __init__(self, m: Tensor, device: torch.device) -> None:
        self.d_in, self.d_out = int(m.shape[0]), int(m.shape[1])
        self.m = m.to(dtype=torch.bfloat16, device=device)

    def _tensors(self) -> dict[str, Tensor]:
        return {"m": self.m}

    def matrix(self, dtype: torch.dtype = torch.float32, chunk: int = 2048) -> Tensor:
        return self.m.to(dtype)

    def to(self, dtype: torch.dtype, device: torch.device, precision: str = "full") -> "Projection":
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.m = self.m.to(device=device)
        return out

    def __call__(self, x: Tensor) -> Tensor:
        return x.to(torch.bfloat16) @ self.m


class Srht(Projection):
    """Unbiased inner-product sketch ``(..., d_in) -> (..., d_out)`` (see the module docstring)."""

    def __init__(self, d_in: int, d_out: int, gen: torch.Generator) -> None:
        self.d_in, self.d_out = int(d_in), int(d_out)
        self.d_p, tail = _split(self.d_in)
        blocks = -(-self.d_out // self.d_p)
        self.signs = _signs(gen, blocks, self.d_p)
        self.tail = torch.randn(tail, self.d_out, generator=gen, dtype=torch.float64) if tail else None
        rows = []
        for b in range(blocks):
            take = min(self.d_p, self.d_out - b * self.d_p)
            rows.append(torch.randperm(self.d_p, generator=gen)[:take])
        self.rows = rows

    def _tensors(self) -> dict[str, Tensor]:
        return {"signs": self.signs} if self.tail is None else {"signs": self.signs, "tail": self.tail}

    def __call__(self, x: Tensor) -> Tensor:
        xp = _pad(x[..., : self.d_p], self.d_p)
        parts = []
        for b, rows in enumerate(self.rows):
            y = hadamard(xp * self.signs[b])
            parts.append(y[..., rows.to(y.device)])
        y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        if self.tail is not None:  # independent Gaussian rows for the columns past d_p
            y = y + x[..., self.d_p:] @ self.tail
        return y * (1.0 / math.sqrt(self.d_out))


class GaussianProjection(Projection):
    """``x -> x @ W``, ``W`` of shape ``(d_in, d_out)`` with i.i.d. ``N(0, 1)`` entries."""

    def __init__(self, d_in: int, d_out: int, gen: torch.Generator) -> None:
        self.d_in, self.d_out = int(d_in), int(d_out)
        self.w = torch.randn(self.d_in, self.d_out, generator=gen, dtype=torch.float64)

    def _tensors(self) -> dict[str, Tensor]:
        return {"w": self.w}

    def __call__(self, x: Tensor) -> Tensor:
        return x @ self.w


class StructuredProjection(Projection):
    """``x -> W x`` with rows of ``H D1 H D2 H D3 / d_p`` (``E[w w^T] = I``), blocks of ``d_p``."""

    def __init__(self, d_in: int, d_out: int, gen: torch.Generator) -> None:
        self.d_in, self.d_out = int(d_in), int(d_out)
        self.d_p, tail = _split(self.d_in)
        blocks = -(-self.d_out // self.d_p)
        self.signs = _signs(gen, blocks, 3, self.d_p)
        self.tail = torch.randn(tail, self.d_out, generator=gen, dtype=torch.float64) if tail else None

    def _tensors(self) -> dict[str, Tensor]:
        return {"signs": self.signs} if self.tail is None else {"signs": self.signs, "tail": self.tail}

    def __call__(self, x: Tensor) -> Tensor:
        xp = _pad(x[..., : self.d_p], self.d_p)
        parts = []
        left = self.d_out
        for s in self.signs:
            y = hadamard(xp * s[2])
            y = hadamard(y.mul_(s[1]))
            y = hadamard(y.mul_(s[0]))
            parts.append(y[..., : min(left, self.d_p)])
            left -= self.d_p
        y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        y = y * (1.0 / self.d_p)
        if self.tail is not None:  # Gaussian rows for the columns past d_p (the bias)
            y = y + x[..., self.d_p:] @ self.tail
        return y


#: Structured rows are Gaussian only up to O(1/d_p): below this input width the (cheap) Gaussian
#: rows are used instead, so that the bias stays far below the Monte Carlo error.
STRUCTURED_MIN_INPUT = 512


def projection(kind: str, d_in: int, d_out: int, gen: torch.Generator) -> Projection:
    """The activation projection of ``kind`` ``"gaussian"`` or ``"structured"`` (structured
    only from ``STRUCTURED_MIN_INPUT`` input columns on)."""
    structured = kind == "structured" and d_in >= STRUCTURED_MIN_INPUT
    cls = StructuredProjection if structured else GaussianProjection
    return cls(d_in, d_out, gen)


class GaussianSketch(GaussianProjection):
    """``x @ W / sqrt(d_out)``: the Gaussian unbiased inner-product sketch, ``E[<P x, P x'>] = <x, x'>``."""

    def __call__(self, x: Tensor) -> Tensor:
        return (x @ self.w) * (1.0 / math.sqrt(self.d_out))


#: Largest Gaussian sketch matrix (entries) that :func:`sketch` takes when it is the cheaper one.
_GAUSSIAN_ENTRIES = 1 << 22


def sketch(d_in: int, d_out: int, gen: torch.Generator) -> Projection:
    """An unbiased inner-product sketch ``(..., d_in) -> (..., d_out)``: an :class:`Srht`, or
    Gaussian rows when the matrix is small (at most ``2^22`` entries) and either the output is
    wider than one Hadamard block (an SRHT would loop over many small blocks) or its
    ``d_in * d_out`` multiply-adds cost less than the transform's ``2 d_p sqrt(d_p)``."""
    d_p = _split(int(d_in))[0]
    blocks = -(-int(d_out) // d_p)
    entries = int(d_in) * int(d_out)
    if entries <= _GAUSSIAN_ENTRIES and (blocks > 1 or entries <= d_p * 2 * math.isqrt(d_p)):
        return GaussianSketch(d_in, d_out, gen)
    return Srht(d_in, d_out, gen)


class TensorSrht(Projection):
    """TensorSRHT: an unbiased sketch of the tensor product ``x (x) y`` to ``d_out`` columns.

    ``T(x, y) = sqrt(d_out) * S1(x) * S2(y)`` (entrywise) with ``S1``, ``S2`` independent
    :func:`sketch` draws (SRHTs, or Gaussian rows where cheaper), so ``E[<T(x, y), T(x', y')>] = <x, x'> <y, y'>`` without forming the
    ``d1 * d2`` columns of ``x (x) y`` (Zandieh et al. 2021; Ahle et al. 2020). Shapes:
    ``x`` ``(..., d1)``, ``y`` ``(..., d2)`` -> ``(..., d_out)``.
    """

    def __init__(self, d1: int, d2: int, d_out: int, gen: torch.Generator) -> None:
        self.d_in, self.d_out = int(d1) * int(d2), int(d_out)
        self.s1, self.s2 = sketch(d1, d_out, gen), sketch(d2, d_out, gen)

    def to(self, dtype: torch.dtype, device: torch.device, precision: str = "full") -> "TensorSrht":
        # the Hermite steps' sketches stay in ``dtype`` at every precision
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.s1, out.s2 = self.s1.to(dtype, device), self.s2.to(dtype, device)
        return out

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        return self.s1(x) * self.s2(y) * math.sqrt(self.d_out)


def held_bytes(obj: object) -> int:
    """Bytes of the tensors held by ``obj``, a feature map's steps and projections (their
    attributes, lists, tuples and dicts, walked once; a storage shared by several tensors is
    counted once). Objects from outside ``torchntk.features`` (the spec's layers) are not walked."""
    seen, storages, total = set(), set(), 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, Tensor):
            storage = o.untyped_storage()
            key = (storage.data_ptr(), str(o.device))
            if key not in storages:
                storages.add(key)
                total += storage.nbytes()
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif type(o).__module__.startswith("torchntk.features") and hasattr(o, "__dict__"):
            stack.extend(vars(o).values())
    return total
