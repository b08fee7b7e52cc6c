"""The feature rule of each layer of a spec (private).

A feature state carries, for every input and pixel ``p``, two vectors (channels last):

    phi(x)[p]  (N, *spatial, D_s)   with  <phi(x)[p], phi(x')[p']>  ~  Sigma(x, x')[p, p']
    psi(x)[p]  (N, *spatial, D_t)   with  <psi(x)[p], psi(x')[p']>  ~  Theta(x, x')[p, p']

and each layer's rule maps the state to the next one so that the inner products follow the
kernel recursion of CONVENTIONS section 2:

- input:    ``phi = x / sqrt(C)`` (exact), ``psi`` empty (``Theta0 = 0``);
- affine (NTK parameterization): ``phi' = [W_std phi, b_std]``, ``psi' = [W_std psi, phi']``
  (standard: ``psi' = [W_std psi, sqrt(fan_in) phi, 1]``); exact;
- conv: the same after ``phi -> [phi(s p + d)]_d / sqrt(k)`` (the window's pixels side by side:
  ``(1/k) sum_d Sigma(s p + d, s p' + d)``), compressed by an SRHT when wider than ``2 m'``;
- nonlinearity ``a`` (the random-feature step): with ``u = W phi`` (``m'`` Gaussian or structured
  rows ``w``, the same at every pixel), ``phi' = a(u) / sqrt(m')`` and
  ``psi' = (S psi) * a'(u)`` with ``S`` an SRHT to ``m'`` columns. Since ``(w.phi(x), w.phi(x'))``
  is Gaussian with the covariance ``Sigma``, ``E[<phi', phi'>] = E[a(u) a(v)] = Sigma'`` and
  ``E[<psi', psi'>] = Theta * E[a'(u) a'(v)] = Theta * Sdot``: the arc-cosine random features for
  the ReLU family, and Monte Carlo features of the Gaussian expectations for any other ``a``;
  the product with ``S psi`` is the TensorSRHT sketch of the tensor product ``psi (x) a'(u)``;
- average/sum pooling, global average/sum pooling: the same linear map on the features (exact);
- transposed and locally connected convolutions: :mod:`torchntk.features._conv_steps`;
- flatten: ``[phi(p)]_p / sqrt(P)`` (exact), compressed when wider than ``2 m'``;
- LayerNorm: ``phi / sqrt(eps + |phi|^2)`` per pixel (mean over normalized spatial axes), the
  same factor on ``psi``;
- FanOut / parallel / FanInSum / FanInConcat: copies, per-branch rules, and concatenation
  (``Sigma = sum_b Sigma_b``: the branches' features side by side; weights ``sqrt(C_b / C)``
  for a concatenation).

Here ``m' = n_features``: the NTK features of a spec ending in a Dense layer are
``[W_std psi, phi]``, ``2 m' + 1`` columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..layers import _spatial
from ._sketch import Projection, Srht

Tensor = torch.Tensor


@dataclass
class State:
    """Features after some layers: ``phi``/``psi`` ``(N, *spatial, D)``; ``psi`` None: no NTK.

    ``q`` ``(N, *spatial)``: the exact variance ``Sigma(x, x)[p, p]`` of each input and pixel
    when the map tracks it (:mod:`torchntk.features._variance`), else None.
    """

    phi: Tensor
    psi: Tensor | None
    gaussian: bool
    is_input: bool
    q: Tensor | None = None


@dataclass(frozen=True)
class Dims:
    """What the compiler knows of a state: spec shape, feature widths, flags."""

    shape: tuple[int, ...]  # the spec's per-sample shape (channels, *spatial)
    dphi: int
    dpsi: int | None
    gaussian: bool
    is_input: bool

    @property
    def pixels(self) -> int:
        return math.prod(self.shape[1:])

    @property
    def entries(self) -> int:
        """Feature entries per input (for the memory budget of a batch of rows)."""
        return self.pixels * (self.dphi + (self.dpsi or 0))


class Step:
    """One layer's rule on feature states, with its random draws."""

    def __call__(self, s: Any) -> Any:
        raise NotImplementedError

    def projections(self) -> list[tuple[str, Projection]]:
        """The drawn projections held by this step (cast together with it)."""
        return [(k, v) for k, v in self.__dict__.items() if isinstance(v, Projection)]

    def to(self, dtype: torch.dtype, device: torch.device, precision: str = "full") -> "Step":
        """This step for features of ``dtype`` on ``device`` (``precision``: of the projections,
        see :meth:`Projection.to`)."""
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        for name, p in self.projections():
            setattr(out, name, p.to(dtype, device, precision))
        for name, v in self.__dict__.items():
            if isinstance(v, Step):
                setattr(out, name, v.to(dtype, device, precision))
            elif isinstance(v, list) and v and isinstance(v[0], Step):
                setattr(out, name, [x.to(dtype, device, precision) for x in v])
        return out


def _ones(t: Tensor) -> Tensor:
    return t.new_ones(*t.shape[:-1], 1)


def _cat(parts: list[Tensor]) -> Tensor:
    parts = [p for p in parts if p.shape[-1] > 0] or parts[:1]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class Compress(Step):
    """An SRHT of the last axis when it is wider than ``2 width`` (identity otherwise)."""

    def __init__(self, d_in: int, width: int, gen: torch.Generator) -> None:
        self.d_in = d_in
        self.sketch = Srht(d_in, width, gen) if d_in > 2 * width else None
        self.d_out = width if self.sketch is not None else d_in

    def __call__(self, t: Tensor) -> Tensor:
        return t if self.sketch is None else self.sketch(t)


class Affine(Step):
    """``Sigma' = W_std^2 Sigma + b_std^2``; ``Theta' = W_std^2 Theta + Sigma'`` (or standard)."""

    def __init__(self, w_std: float, b_std: float | None, fan_in: int, parameterization: str) -> None:
        self.w, self.b = float(w_std), float(b_std or 0.0)
        self.fan_in, self.standard = fan_in, parameterization == "standard"

    def out_dims(self, d: Dims, shape: tuple[int, ...]) -> Dims:
        bias = 1 if self.b else 0
        dphi = d.dphi + bias
        dpsi = None
        if d.dpsi is not None:
            dpsi = d.dpsi + (d.dphi + bias if self.standard else dphi)
        return Dims(shape, dphi, dpsi, True, False)

    def __call__(self, s: State) -> State:
        phi = s.phi * self.w if self.w != 1.0 else s.phi
        if self.b:
            phi = torch.cat([phi, _ones(phi) * self.b], dim=-1)
        psi = None
        if s.psi is not None:
            scaled = s.psi * self.w if self.w != 1.0 else s.psi
            if self.standard:
                extra = [s.phi * math.sqrt(self.fan_in)] + ([_ones(s.phi)] if self.b else [])
                psi = _cat([scaled, *extra])
            else:
                psi = _cat([scaled, phi])
        return State(phi, psi, True, False)


class Window(Step):
    """A convolution's window: ``[pad(t)(s p + d)]_d / sqrt(k)`` on the channel-last features."""

    def __init__(self, window: tuple[int, ...], strides: tuple[int, ...], pads: list[tuple[int, int]],
                 circular: bool) -> None:
        self.window, self.strides, self.pads, self.circular = window, strides, pads, circular

    def __call__(self, t: Tensor) -> Tensor:
        nsp = len(self.window)
        x = t.movedim(-1, 1)  # (N, D, *spatial)
        x = _pad_spatial(x, self.pads, self.circular)
        if nsp == 1:
            x, window, strides = x.unsqueeze(2), (1, self.window[0]), (1, self.strides[0])
        else:
            window, strides = self.window, self.strides
        n, d = x.shape[:2]
        out_hw = [(x.shape[2 + a] - window[a]) // strides[a] + 1 for a in range(2)]
        cols = F.unfold(x, window, stride=strides)  # (N, D * k, L)
        k = math.prod(window)
        cols = cols.reshape(n, d * k, *out_hw)
        if nsp == 1:
            cols = cols[:, :, 0]
        return cols.movedim(1, -1) * (1.0 / math.sqrt(k))


def _pad_spatial(x: Tensor, pads: list[tuple[int, int]], circular: bool) -> Tensor:
    flat = [p for pair in reversed(pads) for p in pair]
    if not any(flat):
        return x
    return F.pad(x, flat, mode="circular" if circular else "constant")


class Conv(Step):
    """Window, compression of the widened features, then the affine rule."""

    def __init__(self, window: Window, d: Dims, affine: Affine, shape: tuple[int, ...], width: int,
                 gen: torch.Generator) -> None:
        k = math.prod(window.window)
        self.window, self.affine = window, affine
        self.cphi = Compress(d.dphi * k, width, gen)
        self.cpsi = None if d.dpsi is None else Compress(d.dpsi * k, width, gen)
        mid = Dims(shape, self.cphi.d_out, None if d.dpsi is None else self.cpsi.d_out, d.gaussian, d.is_input)
        self.dims = affine.out_dims(mid, shape)
        self.peak = math.prod(shape[1:]) * (d.dphi + (d.dpsi or 0)) * k

    def __call__(self, s: State) -> State:
        wide = self.window(s.phi)
        phi = self.cphi(wide)
        psi = None
        if s.psi is not None:  # Theta0 = 0 (no column) stays without columns
            psi = self.cpsi(self.window(s.psi)) if s.psi.shape[-1] else wide[..., :0]
        return self.affine(State(phi, psi, s.gaussian, s.is_input))


class Activation(Step):
    """The random-feature step of a nonlinearity (see the module docstring)."""

    def __init__(self, fn: Callable[[Tensor], Tensor], dfn: Callable[[Tensor], Tensor] | None,
                 proj: Projection, d: Dims, gen: torch.Generator) -> None:
        self.fn, self.dfn, self.proj = fn, dfn, proj
        width = proj.d_out
        self.sketch = None if d.dpsi is None or dfn is None else Srht(max(d.dpsi, 1), width, gen)
        self.dims = Dims(d.shape, width, None if self.sketch is None else width, False, False)

    def __call__(self, s: State) -> State:
        u = self.proj(s.phi)
        scale = 1.0 / math.sqrt(u.shape[-1])
        phi = self.fn(u) * scale
        psi = None
        if self.sketch is not None and s.psi is not None:
            if s.psi.shape[-1] == 0:
                psi = u.new_zeros(u.shape)
            else:
                psi = self.sketch(s.psi) * self.dfn(u)
        return State(phi, psi, False, False)


class Pool(Step):
    """Average (or sum) pooling of the features: exact."""

    def __init__(self, window: tuple[int, ...], strides: tuple[int, ...], pads: list[tuple[int, int]],
                 circular: bool, scale: float) -> None:
        self.window, self.strides, self.pads, self.circular, self.scale = window, strides, pads, circular, scale

    def _one(self, t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        x = _pad_spatial(t.movedim(-1, 1), self.pads, self.circular)
        pool = F.avg_pool1d if len(self.window) == 1 else F.avg_pool2d
        x = pool(x, self.window, self.strides)
        x = x * self.scale if self.scale != 1.0 else x
        return x.movedim(1, -1)

    def __call__(self, s: State) -> State:
        return replace(s, phi=self._one(s.phi), psi=self._one(s.psi), is_input=False)


class GlobalMean(Step):
    """Global pooling: ``scale`` times the mean of the features over the pixels (exact; the
    global sum over ``D`` pixels is ``scale = D``); ``keep``: size-1 spatial axes stay."""

    def __init__(self, scale: float = 1.0, keep: bool = False) -> None:
        self.scale, self.keep = float(scale), keep

    def __call__(self, s: State) -> State:
        def m(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            t = t.mean(dim=tuple(range(1, t.ndim - 1)), keepdim=self.keep)
            return t * self.scale if self.scale != 1.0 else t

        return replace(s, phi=m(s.phi), psi=m(s.psi), is_input=False)


class Flatten(Step):
    """``[phi(p)]_p / sqrt(P)``, compressed when wide."""

    def __init__(self, d: Dims, width: int, gen: torch.Generator) -> None:
        p = d.pixels
        self.cphi = Compress(d.dphi * p, width, gen)
        self.cpsi = None if d.dpsi is None else Compress(d.dpsi * p, width, gen)
        self.dims = Dims((math.prod(d.shape),), self.cphi.d_out, None if self.cpsi is None else self.cpsi.d_out,
                         d.gaussian, d.is_input)
        self.peak = d.entries

    def __call__(self, s: State) -> State:
        def f(t: Tensor, c: Compress) -> Tensor:
            if t.ndim == 2:
                return c(t)
            p = math.prod(t.shape[1:-1])
            return c(t.reshape(t.shape[0], -1) * (1.0 / math.sqrt(p)))

        return replace(s, phi=f(s.phi, self.cphi), psi=None if s.psi is None else f(s.psi, self.cpsi))


class Normalize(Step):
    """LayerNorm: divide by ``sqrt(eps + |phi(p)|^2)`` (averaged over normalized spatial axes)."""

    def __init__(self, spatial_axes: list[int], eps: float) -> None:
        self.axes, self.eps = spatial_axes, eps

    def __call__(self, s: State) -> State:
        v = (s.phi * s.phi).sum(-1, keepdim=True) + self.eps
        if self.axes:
            v = v.mean(dim=tuple(1 + a for a in self.axes), keepdim=True)
        inv = torch.rsqrt(v)
        return replace(s, phi=s.phi * inv, psi=None if s.psi is None else s.psi * inv, is_input=False)


class Serial(Step):
    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps

    def __call__(self, s: Any) -> Any:
        for step in self.steps:
            s = step(s)
        return s


class Parallel(Step):
    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps

    def __call__(self, s: list[State]) -> list[State]:
        return [step(x) for step, x in zip(self.steps, s)]


class FanOut(Step):
    def __init__(self, num: int) -> None:
        self.num = num

    def __call__(self, s: State) -> list[State]:
        return [s] * self.num


class FanIn(Step):
    """Sum (weights 1) or channel concatenation (weights ``sqrt(C_b / C)``) of uncorrelated branches."""

    def __init__(self, weights: list[float], dims: list[Dims], shape: tuple[int, ...], width: int,
                 gen: torch.Generator) -> None:
        self.weights = weights
        has_psi = all(d.dpsi is not None for d in dims)
        self.cphi = Compress(sum(d.dphi for d in dims), width, gen)
        self.cpsi = Compress(sum(d.dpsi for d in dims), width, gen) if has_psi else None
        self.dims = Dims(shape, self.cphi.d_out, None if self.cpsi is None else self.cpsi.d_out,
                         all(d.gaussian for d in dims), all(d.is_input for d in dims))

    def __call__(self, s: list[State]) -> State:
        def join(ts: list[Tensor], c: Compress) -> Tensor:
            return c(_cat([t * w if w != 1.0 else t for t, w in zip(ts, self.weights)]))

        psi = None
        if self.cpsi is not None and all(x.psi is not None for x in s):
            psi = join([x.psi for x in s], self.cpsi)
        return State(join([x.phi for x in s], self.cphi), psi,
                     all(x.gaussian for x in s), all(x.is_input for x in s))


class OutputSketch(Step):
    """The map's steps, then an SRHT of the features wider than ``columns``."""

    def __init__(self, inner: Step, cphi: Srht | None, cpsi: Srht | None) -> None:
        self.inner, self.cphi, self.cpsi = inner, cphi, cpsi

    def __call__(self, s: State, keep: str | None = None) -> State:
        """``keep="ntk"`` (``"nngp"``): the other kind's features come back None, unsketched."""
        s = self.inner(s)
        phi = None if keep == "ntk" else s.phi if self.cphi is None else self.cphi(s.phi)
        psi = None if keep == "nngp" else s.psi if (self.cpsi is None or s.psi is None) else self.cpsi(s.psi)
        return State(phi, psi, s.gaussian, s.is_input)


def output_sketch(step: Step, d: Dims, columns: int, gen: torch.Generator) -> tuple[Step, Dims]:
    """Compress the final features to at most ``columns`` (unbiased SRHT)."""
    cphi = Srht(d.dphi, columns, gen) if d.dphi > columns else None
    cpsi = Srht(d.dpsi, columns, gen) if d.dpsi is not None and d.dpsi > columns else None
    dims = Dims(d.shape, columns if cphi else d.dphi, columns if cpsi else d.dpsi, d.gaussian, d.is_input)
    return OutputSketch(step, cphi, cpsi), dims


def input_state(x: Tensor, with_ntk: bool = True) -> State:
    """``phi = x / sqrt(C)`` channels last; ``psi`` with no column (``Theta0 = 0``); ``q = |phi|^2``."""
    c = x.shape[1]
    phi = x.movedim(1, -1) * (1.0 / math.sqrt(c))
    psi = phi.new_zeros(*phi.shape[:-1], 0) if with_ntk else None
    return State(phi, psi, False, True, (phi * phi).sum(-1))


def conv_pads(shape: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...],
              padding: str) -> list[tuple[int, int]]:
    """The ``(before, after)`` padding of each spatial axis (the spec's geometry)."""
    return [_spatial.axis_pads(n, w, s, padding) for n, w, s in zip(shape[1:], window, strides)]
