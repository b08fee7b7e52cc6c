"""``FeatureMap``: random features of a spec's infinite-width NNGP and NTK.

``fm = FeatureMap(spec, n_features, seed=0)`` draws, once per per-sample input shape, the
random projections of every layer (see :mod:`torchntk.features._steps` for the rules), so that

    fm(x1).nngp @ fm(x2).nngp.T  ~  spec.kernel(x1, x2).nngp        (N1, N2)
    fm(x1).ntk  @ fm(x2).ntk.T   ~  spec.kernel(x1, x2).ntk

are random-feature estimates (Monte Carlo / arc-cosine features, unbiased with Gaussian rows, or
Hermite-expansion features for smooth activations, unbiased up to a truncation tail within
``hermite_tolerance``) whose relative error falls like ``n_features^(-1/2)``
(``docs/features.md``). The draws belong to the map: two calls, on any inputs, use the same
ones, so cross kernels come from separate calls.
"""

from __future__ import annotations

import warnings

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from .._checks import check_choice, check_finite, check_int, renamed
from .._memory import DEFAULT_MEMORY, format_memory, memory_budget
from ..errors import InvalidArgumentError, ShapeError, SpecError
from ..layers import Layer
from ..layers._core.gram import _check_inputs
from . import _hermite
from . import _steps as S
from ._compile import Context, compile_spec
from ._sketch import held_bytes

__all__ = ["FeatureMap", "Features", "FeatureRows", "METHODS", "PRECISIONS"]

#: Rules of the nonlinearities: ``"auto"`` (Hermite features for the smooth activations, Monte
#: Carlo / arc-cosine features for the ReLU family), ``"hermite"`` (Hermite features for every
#: nonlinearity), ``"monte_carlo"`` (Monte Carlo features everywhere), and the Monte Carlo
#: projection kinds ``"gaussian"`` (exact Gaussian rows: unbiased, ``O(d m)`` per row and layer)
#: and ``"structured"`` (orthogonal rows: ``O(d log d)``, Gaussian up to ``O(1/d)``), which
#: also mean Monte Carlo features everywhere.
METHODS = ("auto", "hermite", "monte_carlo", "gaussian", "structured")
#: ``"auto"`` takes the structured rows from this width on.
STRUCTURED_FROM = 1024
#: Arithmetic of the map's projections and of the solvers' Gram products (see ``FeatureMap``).
PRECISIONS = ("full", "bfloat16")
# Live feature-sized tensors per entry of the widest step (inputs, projections, outputs...).
_WORK_FACTOR = 9


@dataclass
class Features:
    """Feature vectors of a batch of inputs: ``nngp`` ``(N, D_s)`` and ``ntk`` ``(N, D_t)``.

    ``nngp @ nngp.T`` estimates the NNGP kernel and ``ntk @ ntk.T`` the NTK; ``ntk`` is None
    when the spec has no NTK (a nonlinearity without a derivative, such as ``Sign`` with NTK
    dropped, has zero NTK features instead).
    """

    nngp: torch.Tensor
    ntk: torch.Tensor | None

    def __getitem__(self, kind: str) -> torch.Tensor:
        return self.nngp if kind == "nngp" else self.ntk


class FeatureMap:
    """A random feature map of the NNGP and NTK of a :mod:`torchntk.layers` spec.

    Args:
        spec: the architecture (a flat output: end with Dense, Flatten or GlobalAvgPool).
        n_features: ``m``, the width of every random layer of the map: the NNGP features of a
            spec ending in ``Dense`` have ``m + 1`` columns (``+1``: the bias), its NTK features
            ``2 m + 1`` (the sketched ``Theta`` part and the NNGP part side by side).
        seed: seeds the draws (the same seed and input shape give the same map).
        method: the rule of the nonlinearities, any case. ``"auto"`` (default): Hermite
            features (``docs/features.md``) for activations with a smooth Hermite expansion
            (``Erf``, ``Gelu``, ``Sin``, ``Cos``, ``Exp``, polynomials, ``Elementwise(fn)``...)
            when it meets ``hermite_tolerance`` within degree 32 on the calibration rows, Monte
            Carlo features otherwise (the arc-cosine features of the ReLU family);
            ``"hermite"``: Hermite features for every nonlinearity (an error when the expansion
            misses the tolerance); ``"monte_carlo"``: Monte Carlo features everywhere. Their
            rows are Gaussian below ``m = 1024`` and structured from there on;
            ``"gaussian"`` / ``"structured"`` force that kind (and Monte Carlo features).
        dtype: of the features (float64 by default); the device is the inputs'.
        memory: budget of the map: its random draws plus the working set of one batch of
            rows, in bytes or a size such as ``"1GiB"`` (``None``: the package default,
            ``torchntk._memory.DEFAULT_MEMORY``). The rows per batch are chosen within it; a map
            whose draws and single row do not fit raises ``InvalidArgumentError`` with the
            budget it needs (before drawing).
        output_features: None (default) or a number of columns ``c``: the NTK (and NNGP)
            features wider than ``c`` are compressed by a last SRHT to ``c`` columns (unbiased;
            it adds about one random layer's error and divides the solvers' ``D^2`` cost by
            ``(2m / c)^2``).
        hermite_tolerance: the largest relative truncation tail of a Hermite expansion
            (``sum_{k > K} a_k(q)^2 / E[a(sqrt(q) z)^2]``, and the same for ``a'``) at the
            calibration rows; it fixes each expansion's degree ``K``. Default (None):
            ``max(1e-3, 4 / n_features)``, at most 0.5 (below ``4 / m`` the sampling error
            dominates the tail).
        calibration: inputs ``(n, *input shape)`` whose pre-activation variances the Hermite
            expansions are fitted to (degree and column split), drawn from the data the map will
            see; default: constant inputs with ``|x[p]|^2 / C`` in ``(0.5, 1, 2)``. Rows whose
            truncation tail exceeds 10 tolerances warn (``AccuracyWarning``).
        precision: ``"full"`` (default: every product in ``dtype``) or ``"bfloat16"``: the
            projections (random rows, sketches; those of at most ``2^25`` entries) are applied as
            dense matrices in bfloat16 products summed in float32, and the solvers' ``Phi^T Phi``
            of float32 features takes bfloat16 inputs with float32 sums on the CPU (oneDNN). The
            draws are the same as at full precision; each feature moves by a relative ``~2^-8``
            rounding (and ``a'(u)`` flips where ``|u|`` is within a rounding of 0), which moves
            the kernel estimate by under a tenth of its Monte Carlo error (``docs/features.md``).
            Several times faster where bfloat16 products run on matrix units (CPUs with AMX,
            GPUs); slow elsewhere. Meant for ``dtype=torch.float32``.

    Example:
        >>> from torchntk import layers as L
        >>> spec = L.serial(L.Dense(512, b_std=0.1), L.Relu(), L.Dense(1, b_std=0.1))
        >>> fm = FeatureMap(spec, 256, seed=0)
        >>> f = fm(torch.randn(5, 3, dtype=torch.float64))
        >>> f.nngp.shape, f.ntk.shape
        (torch.Size([5, 257]), torch.Size([5, 513]))
    """

    def __init__(
        self,
        spec: Layer,
        n_features: int,
        *,
        seed: int = 0,
        method: str = "auto",
        dtype: torch.dtype = torch.float64,
        memory: int | float | str | None = None,
        output_features: int | None = None,
        hermite_tolerance: float | None = None,
        calibration: Any = None,
        precision: str = "full",
    ) -> None:
        if not isinstance(spec, Layer):
            raise InvalidArgumentError(f"`spec` must be a torchntk.layers spec, got {type(spec).__name__}")
        if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)) or n_features < 2:
            raise InvalidArgumentError(f"`n_features` must be an int >= 2, got {n_features!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise InvalidArgumentError(f"`seed` must be an int, got {seed!r}")
        if not isinstance(method, str):
            raise InvalidArgumentError(f"`method` must be one of {METHODS}, got {method!r}")
        method = check_choice("method", method.lower(), METHODS)
        if not isinstance(precision, str):
            raise InvalidArgumentError(f"`precision` must be one of {PRECISIONS}, got {precision!r}")
        self.precision = check_choice("precision", precision.lower(), PRECISIONS)
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise InvalidArgumentError(f"`dtype` must be a floating torch.dtype, got {dtype!r}")
        # a fixed default: the rows per batch (and so the rounding) are the same on every machine
        memory = memory_budget(DEFAULT_MEMORY if memory is None else memory)
        self.spec, self.n_features, self.seed = spec, int(n_features), int(seed)
        self.width = self.n_features
        if hermite_tolerance is None:
            hermite_tolerance = _hermite.default_tolerance(self.width)
        if isinstance(hermite_tolerance, bool) or not isinstance(hermite_tolerance, (int, float)) \
                or not 0 < hermite_tolerance < 1:
            raise InvalidArgumentError(f"`hermite_tolerance` must be a number in (0, 1), got {hermite_tolerance!r}")
        self.hermite_tolerance = float(hermite_tolerance)
        self.calibration = None if calibration is None else self._check(calibration, "calibration")
        self.nonlinear = method if method in ("auto", "hermite") else "monte_carlo"
        if method not in ("gaussian", "structured"):
            method = "structured" if self.width >= STRUCTURED_FROM else "gaussian"
        if output_features is not None and (isinstance(output_features, bool) or
                                            not isinstance(output_features, (int, np.integer)) or output_features < 1):
            raise InvalidArgumentError(f"`output_features` must be a positive int or None, got {output_features!r}")
        self.output_features = None if output_features is None else int(output_features)
        self.method, self.dtype, self.memory = method, dtype, float(memory)
        self._plans: dict[tuple, tuple[S.Step, S.Dims, int]] = {}
        self._held: dict[tuple, int] = {}  # bytes of each plan's draws (and their cast copy)
        self._cast: dict[tuple, S.Step] = {}

    def __repr__(self) -> str:
        method = self.method if self.nonlinear == "monte_carlo" else self.nonlinear
        extra = "" if self.precision == "full" else f", precision={self.precision!r}"
        return (f"FeatureMap({self.spec!r}, n_features={self.n_features}, seed={self.seed}, "
                f"method={method!r}{extra})")

    # -- the draws --------------------------------------------------------------------------
    def _plan(self, shape: tuple[int, ...]) -> tuple[S.Step, S.Dims, int]:
        if shape not in self._plans:
            out = self.spec.output_shape(shape)
            if isinstance(out, list):
                raise SpecError(f"the spec ends with {len(out)} branches; add a FanInSum/FanInConcat")
            if len(out) != 1:
                raise SpecError(
                    f"the spec's output has per-sample shape {out}; feature maps need a flat output "
                    "(end the spec with Flatten, GlobalAvgPool or Dense on flat features)"
                )
            gen = torch.Generator().manual_seed(self.seed)
            ctx = Context(gen, self.width, self.method, self.nonlinear, self.hermite_tolerance,
                          budget=lambda entries: self._fits(0, entries))
            step, dims = compile_spec(self.spec, shape, ctx)
            if self.output_features is not None:
                step, dims = S.output_sketch(step, dims, self.output_features, gen)
            if ctx.hermite:  # fit the Hermite steps: the calibration rows at once, in float64
                rows = self._calibration_rows(shape)
                self._fits(held_bytes(step), ctx.peak * rows.shape[0] * 64 // torch.finfo(self.dtype).bits,
                           f"the {rows.shape[0]} calibration rows of the Hermite steps (float64)")
                with torch.no_grad():
                    step(S.input_state(rows))
            held = held_bytes(step)
            if self.dtype != torch.float64:  # the cast copy the calls use (of ``dtype``)
                held += held * torch.finfo(self.dtype).bits // 64
            self._fits(held, ctx.peak)
            self._plans[shape] = (step, dims, ctx.peak)
            self._held[shape] = held
        return self._plans[shape]

    def _row_bytes(self, entries: int) -> int:
        """The working set of one input whose widest step holds ``entries`` feature entries."""
        return max(1, int(entries)) * (torch.finfo(self.dtype).bits // 8) * _WORK_FACTOR

    def _fits(self, held: int, entries: int, what: str = "one input's features") -> None:
        """Raise when the draws (``held`` bytes) and one row (``entries``) do not fit ``memory``."""
        need = held + self._row_bytes(entries)
        if need > self.memory:
            draws = f"the random draws ({format_memory(held)}) and " if held else ""
            raise InvalidArgumentError(
                f"FeatureMap(n_features={self.n_features}): {draws}{what} "
                f"({format_memory(self._row_bytes(entries))}) need at least "
                f"memory={format_memory(need, round_up=True)!r}, more than the budget "
                f"memory={format_memory(self.memory)!r}; "
                "give a larger `memory` or a smaller `n_features`"
            )

    def _calibration_rows(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The inputs the Hermite expansions are fitted to (float64, CPU)."""
        if self.calibration is None:
            scale = torch.tensor(_hermite.REFERENCE_VARIANCES, dtype=torch.float64).sqrt()
            return scale.reshape(-1, *[1] * len(shape)) * torch.ones(1, *shape, dtype=torch.float64)
        if tuple(self.calibration.shape[1:]) != shape:
            raise ShapeError(
                f"`calibration` has per-sample shape {tuple(self.calibration.shape[1:])}, the inputs {shape}"
            )
        return self.calibration.to(device="cpu", dtype=torch.float64)

    def _step(self, shape: tuple[int, ...], device: torch.device) -> S.Step:
        key = (shape, str(device))
        if key not in self._cast:
            self._cast[key] = self._plan(shape)[0].to(self.dtype, device, self.precision)
        return self._cast[key]

    def dims(self, input_shape: Any) -> tuple[int, int | None]:
        """``(D_s, D_t)``: the numbers of NNGP and NTK features for a per-sample input shape."""
        shape = (input_shape,) if isinstance(input_shape, int) else tuple(int(s) for s in input_shape)
        d = self._plan(shape)[1]
        return d.dphi, d.dpsi

    def block_rows(self, input_shape: Any) -> int:
        """Rows per batch under the memory budget (from the widest step of the map)."""
        shape = (input_shape,) if isinstance(input_shape, int) else tuple(int(s) for s in input_shape)
        peak = self._plan(shape)[2]
        return max(1, int((self.memory - self._held[shape]) // self._row_bytes(peak)))

    # -- features -----------------------------------------------------------------------------

    def batch_rows(self, input_shape: Any) -> int:
        """Deprecated name of :meth:`block_rows` (kept for one release)."""
        warnings.warn("`FeatureMap.batch_rows` is deprecated; use `block_rows`", DeprecationWarning, stacklevel=2)
        return self.block_rows(input_shape)
    def _check(self, x: Any, name: str = "x") -> torch.Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        x = _check_inputs(name, x)
        return x

    def _batch(self, x: torch.Tensor, kind: str | None = None) -> S.State:
        """The features of a batch; ``kind`` ``"ntk"``/``"nngp"``: only those are sure to be set."""
        step = self._step(tuple(x.shape[1:]), x.device)
        with torch.no_grad():
            s0 = S.input_state(x.to(self.dtype))
            s = step(s0, keep=kind) if isinstance(step, S.OutputSketch) else step(s0)

        def cast(t: torch.Tensor | None, name: str) -> torch.Tensor | None:
            # precision="bfloat16": the steps keep bfloat16 features
            return None if t is None or kind not in (None, name) else t.to(self.dtype)

        return S.State(cast(s.phi, "nngp"), cast(s.psi, "ntk"), s.gaussian, s.is_input)

    def __call__(self, x: Any, *, block_size: int | None = None, batch_size: int | None = None) -> Features:
        """The features of ``x`` ``(N, n0)``, ``(N, C, L)`` or ``(N, C, H, W)``: a :class:`Features`.

        ``block_size``: rows computed at once (default: as many as ``memory`` allows,
        :meth:`block_rows`); ``batch_size`` is its deprecated name.
        """
        x = self._check(x)
        b = _block_size(renamed("block_size", block_size, "batch_size", batch_size),
                        self.block_rows(tuple(x.shape[1:])))
        parts = [self._batch(x[i:i + b]) for i in range(0, x.shape[0], b)]
        nngp = torch.cat([p.phi for p in parts]) if len(parts) > 1 else parts[0].phi
        ntk = None
        if all(p.psi is not None for p in parts):
            ntk = torch.cat([p.psi for p in parts]) if len(parts) > 1 else parts[0].psi
        return Features(nngp, ntk)

    def rows(self, x: Any, kind: str = "ntk", *, block_size: int | None = None,
             batch_size: int | None = None) -> "FeatureRows":
        """The ``kind`` (``"ntk"`` or ``"nngp"``) features of ``x``, computed lazily in blocks of
        ``block_size`` rows (``batch_size``: its deprecated name)."""
        if not isinstance(kind, str):
            raise InvalidArgumentError(f"`kind` must be 'ntk' or 'nngp', got {kind!r}")
        kind = check_choice("kind", kind.lower(), ("ntk", "nngp"))
        x = self._check(x)
        b = _block_size(renamed("block_size", block_size, "batch_size", batch_size),
                        self.block_rows(tuple(x.shape[1:])))
        dphi, dpsi = self.dims(tuple(x.shape[1:]))
        if kind == "ntk" and dpsi is None:
            raise SpecError(f"{self.spec!r} has no NTK (a nonlinearity without a derivative)")
        return FeatureRows(self, x, kind, b, dpsi if kind == "ntk" else dphi)


def _block_size(block_size: Any, default: int) -> int:
    if block_size is None:
        return default
    return check_int("block_size", block_size, minimum=1)


class FeatureRows:
    """The features of a set of inputs, produced batch by batch (never all at once).

    Iterating yields ``(start, stop, phi)`` with ``phi`` the ``(stop - start, dim)`` feature rows.
    Made by :meth:`FeatureMap.rows`, or :meth:`from_tensor` for features already in memory.

    Attributes: ``n`` (rows), ``dim`` (columns), ``dtype``, ``device``.
    """

    def __init__(self, fm: FeatureMap | None, x: torch.Tensor, kind: str, block_size: int, dim: int) -> None:
        self.fm, self.x, self.kind, self.block_size, self.dim = fm, x, kind, block_size, int(dim)
        self.n = int(x.shape[0])
        self.device = x.device
        self.dtype = fm.dtype if fm is not None else x.dtype

    @classmethod
    def from_tensor(cls, phi: Any, name: str = "phi", block_size: int | None = None,
                    batch_size: int | None = None) -> "FeatureRows":
        """Rows of an in-memory feature matrix ``(N, D)`` (float64 unless already floating), read
        in blocks of ``block_size`` rows (default 65536; ``batch_size``: its deprecated name)."""
        block_size = _block_size(renamed("block_size", block_size, "batch_size", batch_size), 65536)
        if isinstance(phi, FeatureRows):
            return phi
        if isinstance(phi, np.ndarray):
            phi = torch.from_numpy(phi)
        if not isinstance(phi, torch.Tensor):
            raise InvalidArgumentError(
                f"`{name}` must be a feature matrix (N, D) or FeatureMap.rows(x), got {type(phi).__name__}"
            )
        if phi.ndim != 2 or phi.shape[0] == 0:
            raise ShapeError(f"`{name}` must be a feature matrix (N, D) with N >= 1, got shape {tuple(phi.shape)}")
        if not phi.is_floating_point():
            phi = phi.to(torch.float64)
        check_finite(name, phi)
        return cls(None, phi, "given", block_size, phi.shape[1])

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        for lo in range(0, self.n, self.block_size):
            hi = min(lo + self.block_size, self.n)
            if self.fm is None:
                yield lo, hi, self.x[lo:hi]
            else:
                f = self.fm._batch(self.x[lo:hi], self.kind)
                yield lo, hi, f.psi if self.kind == "ntk" else f.phi

    def materialize(self) -> torch.Tensor:
        """All rows as one ``(N, D)`` tensor."""
        if self.fm is None:
            return self.x
        return torch.cat([phi for _, _, phi in self])


def rows_of(value: Any, name: str) -> FeatureRows:
    """A :class:`FeatureRows` from rows or a feature matrix."""
    return value if isinstance(value, FeatureRows) else FeatureRows.from_tensor(value, name)
