"""Properties of every exported layer, generated from ``torchntk.layers.__all__``.

Each public name has an entry in ``CASES`` (a small spec around the layer, at a width the
Monte Carlo checks can use) or in ``NOT_LAYERS``; a name added to ``__all__`` without an entry
fails ``test_every_public_name_has_an_entry``. For every case:

- the NNGP and NTK of ``spec.kernel`` are symmetric and positive semi-definite;
- they match a Monte Carlo average of ``spec.module`` (finite networks), within the Monte
  Carlo error measured from the draws themselves plus the finite-width bias;
- ``FeatureMap`` for every feature method raises a torchntk error or its kernels are within
  the random-feature error of ``spec.kernel`` (0.2 relative Frobenius error at m = 8192 under
  ``--runslow``, the acceptance bound; the default run uses m = 1024 and the same bound scaled
  by the m^(-1/2) law of the error, 0.2 sqrt(8192 / 1024) = 0.57);
- padding masks are honoured (a padded and masked batch has the kernel of the unpadded one) or
  refused with ``SpecError``, as the layer type declares (``supports.masks``); graph patterns
  are read by the layers that declare it and leave the others' kernels unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch

from torchntk import layers as L
from torchntk.errors import SpecError, TorchNTKError
from torchntk.features import FeatureMap
from torchntk.features.map import METHODS
from torchntk.layers._core.supports import supports_of

D64 = torch.float64


@dataclass
class Case:
    """``build(width)``: the spec (its hidden layers ``width`` wide); ``shape``: per-sample input;
    ``layer``: the instance under test (its type's declaration is checked); ``masked``: an
    instance to place in the generic masked context, None: not applicable (``why``)."""

    build: Callable[[int], L.Layer]
    shape: tuple[int, ...]
    layer: Any
    pattern: bool = False
    mc: bool = True
    masked: Any = "layer"
    why: str = ""
    options: dict = field(default_factory=dict)

    def mask_layer(self) -> Any:
        return self.layer if isinstance(self.masked, str) else self.masked


def _flat(layer: Any) -> Callable[[int], L.Layer]:
    return lambda w: L.serial(L.Dense(w, b_std=0.2), layer, L.Dense(1, b_std=0.1))


def _act(layer: Any, **kw: Any) -> Case:
    return Case(_flat(layer), (3,), layer, **kw)


def _conv_head(w: int, *tail: Any) -> L.Layer:
    return L.serial(L.Conv(w, 2, b_std=0.1), L.Relu(), *tail)


_RESIDUAL = L.serial(L.FanOut(2), L.parallel(L.Identity(), L.serial(L.Relu(), L.Dense(8))), L.FanInSum())


def _residual(w: int) -> L.Layer:
    return L.serial(L.Dense(w, b_std=0.1), L.FanOut(2), L.parallel(L.Identity(), L.serial(L.Relu(), L.Dense(w))),
                    L.FanInSum(), L.Relu(), L.Dense(1))


def _concat(w: int) -> L.Layer:
    return L.serial(L.Dense(w, b_std=0.1), L.FanOut(2), L.parallel(L.Dense(w), L.serial(L.Erf(), L.Dense(w // 2))),
                    L.FanInConcat(), L.Relu(), L.Dense(1))


def _prod(w: int) -> L.Layer:
    return L.serial(L.FanOut(2), L.parallel(L.Dense(w, b_std=0.3), L.Dense(w, W_std=0.8)), L.FanInProd(), L.Dense(1))


def _attention(w: int) -> L.Layer:
    return L.serial(L.Dense(w, b_std=0.1),
                    L.GlobalSelfAttention(w, w, w, 2, W_key_std=1.2, W_value_std=0.9, b_std=0.1),
                    L.GlobalAvgPool(), L.Dense(1))


def _graph(w: int) -> L.Layer:
    return L.serial(L.Dense(w, b_std=0.1), L.Aggregate(), L.Relu(), L.GlobalSumPool(), L.Dense(1))


_IDX = L.Index(L.Slice[:, :, 1:4])
_RESIZE = L.ImageResize((-1, -1, 8), "linear")
_DOT = L.DotGeneral(rhs=2.0)

#: One or more cases per public name of ``torchntk.layers``.
CASES: dict[str, list[Case]] = {
    "serial": [_act(L.Relu())],
    "repeat": [Case(lambda w: L.serial(L.repeat(L.serial(L.Dense(w, b_std=0.1), L.Erf()), 2), L.Dense(1)), (3,),
                    L.serial(L.Dense(4)), masked=L.repeat(L.serial(L.Dense(8), L.Erf()), 2))],
    "parallel": [Case(_residual, (3,), L.parallel(L.Identity()), masked=_RESIDUAL)],
    "FanOut": [Case(_residual, (3,), L.FanOut(2), masked=_RESIDUAL)],
    "FanInSum": [Case(_residual, (3,), L.FanInSum(), masked=_RESIDUAL)],
    "FanInProd": [Case(_prod, (3,), L.FanInProd(),
                       masked=L.serial(L.FanOut(2), L.parallel(L.Dense(8), L.Dense(8)), L.FanInProd()))],
    "FanInConcat": [Case(_concat, (3,), L.FanInConcat(),
                         masked=L.serial(L.FanOut(2), L.parallel(L.Dense(8), L.Dense(4)), L.FanInConcat()))],
    "Identity": [Case(_residual, (3,), L.Identity())],
    "Dense": [Case(lambda w: L.serial(L.Dense(w, W_std=1.2, b_std=0.3), L.Relu(), L.Dense(1)), (3,), L.Dense(4)),
              Case(lambda w: L.serial(L.Dense(w, b_std=0.3, parameterization="standard"), L.Relu(),
                                      L.Dense(1, parameterization="standard")), (3,),
                   L.Dense(4, parameterization="standard"))],
    "mlp": [Case(lambda w: L.mlp(w, 2), (3,), L.Dense(4), masked=L.mlp(8, 1))],
    "Conv": [Case(lambda w: L.serial(L.Conv(w, 3, padding="SAME", b_std=0.1), L.Relu(), L.GlobalAvgPool(),
                                     L.Dense(1)), (2, 4, 4), L.Conv(4, 3)),
             Case(lambda w: L.serial(L.Conv(w, 2, strides=2, padding="CIRCULAR"), L.Erf(), L.Flatten(), L.Dense(1)),
                  (2, 7), L.Conv(4, 1))],
    "ConvTranspose": [Case(lambda w: L.serial(L.ConvTranspose(w, 3, strides=2, b_std=0.1), L.Relu(),
                                              L.GlobalSumPool(), L.Dense(1)), (2, 3, 3), L.ConvTranspose(4, 3)),
                      Case(lambda w: L.serial(L.ConvTranspose(w, 2, strides=2, padding="CIRCULAR"), L.Erf(),
                                              L.Flatten(), L.Dense(1)), (2, 4), L.ConvTranspose(4, 1))],
    "ConvLocal": [Case(lambda w: L.serial(L.ConvLocal(w, 2, b_std=0.3), L.Relu(), L.GlobalAvgPool(), L.Dense(1)),
                       (2, 5), L.ConvLocal(4, 2))],
    "AvgPool": [Case(lambda w: _conv_head(w, L.AvgPool(2, padding="SAME"), L.Flatten(), L.Dense(1)), (2, 4, 4),
                     L.AvgPool(2))],
    "SumPool": [Case(lambda w: _conv_head(w, L.SumPool(2, strides=1), L.GlobalAvgPool(), L.Dense(1)), (2, 6),
                     L.SumPool(2))],
    "GlobalAvgPool": [Case(lambda w: _conv_head(w, L.GlobalAvgPool(), L.Dense(1)), (2, 4, 4), L.GlobalAvgPool())],
    "GlobalSumPool": [Case(lambda w: _conv_head(w, L.GlobalSumPool(), L.Dense(1)), (2, 6), L.GlobalSumPool()),
                      Case(lambda w: L.serial(L.Conv(w, 2), L.Erf(), L.GlobalSumPool()), (2, 5), L.GlobalSumPool())],
    "Flatten": [Case(lambda w: _conv_head(w, L.Flatten(), L.Dense(1)), (2, 4, 3), L.Flatten())],
    "Aggregate": [Case(_graph, (2, 5), L.Aggregate(), pattern=True, masked=None, why="the graph tests own masks")],
    "Index": [Case(lambda w: _conv_head(w, _IDX, L.Flatten(), L.Dense(1)), (2, 6), _IDX)],
    "ImageResize": [Case(lambda w: _conv_head(w, _RESIZE, L.Flatten(), L.Dense(1)), (2, 6), _RESIZE)],
    "DotGeneral": [Case(lambda w: _conv_head(w, _DOT, L.GlobalAvgPool(), L.Dense(1)), (2, 5), _DOT)],
    "LayerNorm": [Case(lambda w: L.serial(L.Dense(w, b_std=0.2), L.LayerNorm(), L.Relu(), L.Dense(1)), (3,),
                       L.LayerNorm())],
    "Dropout": [Case(lambda w: L.serial(L.Dense(w), L.Relu(), L.Dropout(0.3, mode="test"), L.Dense(1)), (3,),
                     L.Dropout(0.3, mode="test")),
                Case(lambda w: L.serial(L.Dense(w), L.Relu(), L.Dropout(0.3), L.Dense(1)), (3,), L.Dropout(0.3),
                     mc=False, why="the finite network draws a new dropout mask at every call")],
    "GlobalSelfAttention": [Case(_attention, (2, 4), L.GlobalSelfAttention(8, 8, 8, 2))],
    "ABRelu": [_act(L.ABRelu(-0.4, 1.3))],
    "Relu": [_act(L.Relu())],
    "LeakyRelu": [_act(L.LeakyRelu(0.2))],
    "Abs": [_act(L.Abs())],
    "Sign": [_act(L.Sign())],
    "Erf": [_act(L.Erf(a=1.2, b=0.8, c=0.1))],
    "Sigmoid_like": [_act(L.Sigmoid_like())],
    "Gelu": [_act(L.Gelu())],
    "Sin": [_act(L.Sin(a=1.1, b=0.9, c=0.3))],
    "Cos": [_act(L.Cos())],
    "Rbf": [_act(L.Rbf(0.7))],
    "Exp": [_act(L.Exp(a=0.8, b=0.5))],
    "Gaussian": [_act(L.Gaussian())],
    "Monomial": [_act(L.Monomial(2))],
    "Polynomial": [_act(L.Polynomial([0.1, 1.0, -0.3, 0.2]))],
    "Elementwise": [_act(L.Elementwise(torch.tanh))],
    "ElementwiseNumerical": [_act(L.ElementwiseNumerical(torch.tanh))],
    "Hermite": [_act(L.Hermite(3))],
    "RectifiedMonomial": [_act(L.RectifiedMonomial(2))],
    "ExpNormalized": [_act(L.ExpNormalized(gamma=0.8, shift=-0.5))],
    "Gabor": [_act(L.Gabor())],
}

#: Public names that are not layers (or have no instance of their own to test).
NOT_LAYERS = {
    "Kernel": "the result type",
    "Layer": "the abstract base of every layer",
    "ElementwiseLayer": "the abstract base of the nonlinearities (each one has its case)",
    "Slice": "an index helper of Index",
    "from_module": "a converter (tests/layers/test_from_module.py)",
    "MonteCarloKernel": "a result type",
    "monte_carlo_kernel": "the Monte Carlo estimator used here",
    "monte_carlo_kernels": "the Monte Carlo estimator used here",
}

IDS = [(name, i) for name in CASES for i in range(len(CASES[name]))]


def _id(p: tuple[str, int]) -> str:
    return f"{p[0]}-{p[1]}"


def test_every_public_name_has_an_entry():
    public = set(L.__all__)
    missing = public - set(CASES) - set(NOT_LAYERS)
    assert not missing, f"add a case to CASES (or a reason to NOT_LAYERS) for {sorted(missing)}"
    assert not (set(CASES) | set(NOT_LAYERS)) - public, "entries for names that are no longer public"


def test_every_layer_type_declares_for_itself():
    # the declaration is read from the exact class, so each public layer type states its own
    for name in L.__all__:
        obj = getattr(L, name)
        if isinstance(obj, type) and issubclass(obj, L.Layer) and name not in ("Layer", "ElementwiseLayer") \
                and not issubclass(obj, L.ElementwiseLayer):
            assert "supports" in obj.__dict__, f"{name} declares no `supports`"


def _inputs(case: Case, n: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *case.shape, generator=g, dtype=D64)


def _pattern(n: int, v: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, v, v, generator=g, dtype=D64) < 0.5).to(D64) * torch.rand(n, v, v, generator=g, dtype=D64)


def _kernel(case: Case, x: torch.Tensor, width: int = 8) -> Any:
    spec = case.build(width)
    kw = {"pattern": _pattern(x.shape[0], x.shape[-1])} if case.pattern else {}
    return spec.kernel(x, **kw)


# Known defect outside this suite: the Hermite-series rule of Elementwise(fn, method="hermite")
# (ElementwiseNumerical) is not symmetric in its two inputs (about 1e-4 relative).
@pytest.mark.parametrize("which", IDS, ids=_id)
def test_kernels_are_symmetric_psd(which):
    case = CASES[which[0]][which[1]]
    k = _kernel(case, _inputs(case, 6))
    for t in (k.nngp, k.ntk):
        if t is None:
            continue
        assert torch.isfinite(t).all()
        # one code path mirrors the blocks: symmetric up to the rounding of the last layer
        torch.testing.assert_close(t, t.T, rtol=1e-12, atol=1e-14 * float(t.abs().max()))
        ev = torch.linalg.eigvalsh((t + t.T) / 2)
        # float64 rounding of a kernel built from O(10) passes: eigenvalues down to -1e-10 max
        assert float(ev.min()) >= -1e-10 * float(ev.max().abs()), (float(ev.min()), float(ev.max()))


class _WithPattern(torch.nn.Module):
    """``module(x, pattern=p)`` from ``[x, p^T]`` on the channels, so that the pattern follows the
    rows wherever the Monte Carlo estimate calls the model."""

    def __init__(self, module: torch.nn.Module, c: int) -> None:
        super().__init__()
        self.m, self.c = module, c

    def forward(self, xa: torch.Tensor) -> torch.Tensor:
        return self.m(xa[:, : self.c], pattern=xa[:, self.c:].transpose(1, 2))


def _outputs(spec: L.Layer, n: int) -> L.Layer:
    """``spec`` with ``n`` outputs instead of one (the same scalar kernel; the Monte Carlo mean
    over the outputs of one draw lowers its variance)."""
    last = spec.layers[-1] if hasattr(spec, "layers") else None
    if type(last) is not L.Dense or last.out_dim != 1:
        return spec
    return L.serial(*spec.layers[:-1], L.Dense(n, last.W_std, last.b_std, last.parameterization))


def _draws(case: Case, x: torch.Tensor, width: int, n: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Per-draw NNGP and NTK estimates ``(n, N, N)`` (recovered from the running means)."""
    spec = _outputs(case.build(width), 16)
    factory: Any = spec
    xin = x
    if case.pattern:
        p = _pattern(x.shape[0], x.shape[-1])

        def factory(g: torch.Generator) -> torch.nn.Module:
            return _WithPattern(spec.module(x.shape[1:], generator=g, dtype=D64), x.shape[1])

        xin = torch.cat([x, p.transpose(1, 2)], 1)
    means = [(r.nngp, r.ntk) for r in L.monte_carlo_kernels(factory, xin, n_samples=n, seed=3)]
    per = []
    prev = (torch.zeros_like(means[0][0]), torch.zeros_like(means[0][1]))
    for s, (a, b) in enumerate(means, start=1):
        per.append((a * s - prev[0] * (s - 1), b * s - prev[1] * (s - 1)))
        prev = (a, b)
    return torch.stack([p[0] for p in per]), torch.stack([p[1] for p in per]), spec


def _check_mc(case: Case, width: int, n: int, bias: float) -> None:
    x = _inputs(case, 4)
    nngp, ntk, _ = _draws(case, x, width, n)
    k = _kernel(case, x, width)  # the same widths (the standard parameterization's NTK depends on them)
    for name, draws, exact in (("nngp", nngp, k.nngp), ("ntk", ntk, k.ntk)):
        if exact is None:
            continue
        mean = draws.mean(0)
        # the Monte Carlo error of the mean, from the draws' own spread (Frobenius norm), and
        # a finite-width bias of relative size `bias` (O(1/width) per layer)
        se = float((draws.var(0) / n).sum().sqrt())
        err = float((mean - exact).norm())
        allowed = 4.0 * se + bias * float(exact.norm())
        assert err <= allowed, f"{name}: |MC - exact| = {err:.3g} > {allowed:.3g} (se {se:.3g}, |K| {float(exact.norm()):.3g})"


#: ``(width, draws, finite-width bias)``: the default run at width 128 (a bias of O(1 / 128) per
#: layer, 4 / 128 = 3% covers it), and under ``--runslow`` at width 256 with four times the draws.
_MC_SIZES = [pytest.param((128, 24, 4 / 128), id="fast"),
             pytest.param((256, 96, 4 / 256), id="slow", marks=pytest.mark.slow)]


@pytest.mark.parametrize("size", _MC_SIZES)
@pytest.mark.parametrize("which", IDS, ids=_id)
def test_analytic_kernel_matches_monte_carlo(which, size):
    case = CASES[which[0]][which[1]]
    if not case.mc:
        pytest.skip(case.why)
    _check_mc(case, *size)


def _check_features(case: Case, m: int, bound: float) -> None:
    x = _inputs(case, 6)
    if case.pattern:
        with pytest.raises(TorchNTKError):
            FeatureMap(case.build(8), m)(x)
        return
    spec = case.build(8)
    k = spec.kernel(x)
    for method in METHODS:
        try:
            f = FeatureMap(spec, m, seed=0, method=method)(x)
        except TorchNTKError:
            continue  # an honest refusal (no rule, or the Hermite expansion misses its tolerance)
        for name, phi, exact in (("nngp", f.nngp, k.nngp), ("ntk", f.ntk, k.ntk)):
            if exact is None:
                continue
            err = float((phi @ phi.T - exact).norm() / exact.norm())
            assert err < bound, f"{method} {name}: relative error {err:.3f} >= {bound}"


#: ``(m, bound)``: the acceptance point under ``--runslow`` (every layer and method, m = 8192,
#: 0.2 relative Frobenius error), and by default m = 1024 with the bound scaled by the m^(-1/2)
#: law of the error: 0.2 sqrt(8192 / 1024) = 0.57.
_FEATURE_SIZES = [pytest.param((1024, 0.2 * math.sqrt(8192 / 1024)), id="m1024"),
                  pytest.param((8192, 0.2), id="m8192", marks=pytest.mark.slow)]


@pytest.mark.parametrize("size", _FEATURE_SIZES)
@pytest.mark.parametrize("which", IDS, ids=_id)
def test_features_match_or_refuse(which, size):
    _check_features(CASES[which[0]][which[1]], *size)


def _masked_spec(layer: Any, shape: tuple[int, ...]) -> L.Layer:
    """``Dense -> layer`` on positions, then a global mean if still spatial, then Dense."""
    head = L.serial(L.Dense(8, b_std=0.1), layer)
    out = head.output_shape(shape)
    tail = [L.GlobalAvgPool()] if len(out) > 1 else []
    return L.serial(head, *tail, L.Dense(1))


@pytest.mark.parametrize("which", IDS, ids=_id)
def test_masks_honoured_or_refused(which):
    case = CASES[which[0]][which[1]]
    if case.masked is None:
        pytest.skip(case.why)
    layer = case.mask_layer()
    shape = (2, 6)
    try:
        spec = _masked_spec(layer, shape)
    except SpecError:
        pytest.skip(f"{layer!r} does not apply to (C, L) positions")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, *shape, generator=g, dtype=D64)
    padded = torch.cat([x, torch.randn(4, 2, 3, generator=g, dtype=D64)], -1)  # 3 padding positions
    mask = torch.zeros(4, 9, dtype=torch.bool)
    mask[:, 6:] = True
    declared = supports_of(case.layer).masks and all(
        supports_of(sub).masks for sub in _leaves(layer))
    try:
        masked = spec.kernel(padded, mask=mask)
    except SpecError:
        assert not declared, f"{layer!r} declares masks but refuses them"
        return
    ref = spec.kernel(x)
    # another code path (the masked rules): equal up to float64 rounding
    torch.testing.assert_close(masked.nngp, ref.nngp, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(masked.ntk, ref.ntk, rtol=1e-9, atol=1e-12)


def _leaves(layer: Any) -> list:
    subs = getattr(layer, "layers", None)
    if subs is None:
        return [layer]
    return [layer] + [leaf for sub in subs for leaf in _leaves(sub)]


@pytest.mark.parametrize("which", IDS, ids=_id)
def test_patterns_read_only_where_declared(which):
    case = CASES[which[0]][which[1]]
    if len(case.shape) != 2:
        pytest.skip("patterns go with node features (N, C, V)")
    x = _inputs(case, 4)
    spec = case.build(8)
    p = _pattern(4, x.shape[-1])
    with_p = spec.kernel(x, pattern=p)
    reads = any(supports_of(sub).patterns for sub in _leaves(spec))
    if reads:
        q = _pattern(4, x.shape[-1], seed=7)
        other = spec.kernel(x, pattern=q)
        assert float((other.ntk - with_p.ntk).norm()) > 1e-3 * float(with_p.ntk.norm())
        return
    ref = spec.kernel(x)
    # the same computation with an unused side input
    torch.testing.assert_close(with_p.nngp, ref.nngp, rtol=1e-12, atol=0)
    torch.testing.assert_close(with_p.ntk, ref.ntk, rtol=1e-12, atol=0)


@pytest.mark.parametrize("which", IDS, ids=_id)
def test_full_layout_as_declared(which):
    # the declaration says whether the kernel rule may need every pixel pair of its input (for
    # some instances: DotGeneral only when it contracts spatial axes); the driver asks each
    # instance (needs_full), which must not need more than its type declares
    layer = CASES[which[0]][which[1]].layer
    if hasattr(layer, "layers") or type(layer) in (L.FanOut, L.FanInSum, L.FanInProd, L.FanInConcat):
        pytest.skip("a combinator: its parts decide")
    try:
        layer.output_shape((8, 6))
    except SpecError:
        pytest.skip(f"{layer!r} does not apply to (C, L) positions")
    if layer.needs_full((8, 6), False):
        assert supports_of(layer).full_layout, f"{layer!r} needs the full layout but does not declare it"
