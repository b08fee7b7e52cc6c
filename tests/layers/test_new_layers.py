"""Issue 9 layers: Aggregate, ConvTranspose, ConvLocal, GlobalSumPool, Index, ImageResize,
DotGeneral, repeat, and the activations Hermite, RectifiedMonomial, ExpNormalized, Gabor.

Each kernel is checked against the Monte Carlo average of its finite ``spec.module`` networks
(relative Frobenius error; at width W and S draws the NTK error is about ``1/sqrt(W S)``, the
NNGP's about ``1/sqrt(S O)`` with O outputs averaged; the default-suite sizes give errors of a
few percent, bounded here at 0.1, the slow tests at width 1024 at 0.05), for symmetry, PSD,
gradcheck in the inputs and errors. The activations' rules are checked against an independent
2-D quadrature.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchntk import layers as L
from torchntk.errors import InvalidArgumentError, SpecError
from torchntk.layers.activations._expectations import gaussian_expectations

D = torch.float64


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class _WithPattern(nn.Module):
    """Feeds ``module(x, pattern=p)`` from ``[x, p^T]`` stacked on the channels (Monte Carlo
    averages call ``model(x)``; the pattern must follow the rows)."""

    def __init__(self, module: nn.Module, c: int) -> None:
        super().__init__()
        self.m, self.c = module, c

    def forward(self, xa: torch.Tensor) -> torch.Tensor:
        return self.m(xa[:, : self.c], pattern=xa[:, self.c :].transpose(1, 2))


def _mc(spec: L.Layer, x: torch.Tensor, n: int, pattern: torch.Tensor | None = None, *, nngp: bool = True,
        ntk: bool = True) -> tuple[float, float]:
    """Relative errors of the Monte Carlo NNGP and NTK (``nan`` for one not estimated)."""
    kw = {} if pattern is None else {"pattern": pattern}
    k = spec.kernel(x, **kw)
    if pattern is None:
        est = L.monte_carlo_kernel(spec, x, n_samples=n, seed=0, nngp=nngp, ntk=ntk)
    else:
        c = x.shape[1]
        xa = torch.cat([x, pattern.transpose(1, 2)], 1)
        est = L.monte_carlo_kernel(lambda g: _WithPattern(spec.module(x.shape[1:], generator=g, dtype=D), c), xa,
                                   n_samples=n, seed=0, nngp=nngp, ntk=ntk)
    nan = float("nan")
    return (_rel(est.nngp, k.nngp) if nngp else nan), (_rel(est.ntk, k.ntk) if ntk else nan)


def _mc_wide(body: list, x: torch.Tensor, pattern: torch.Tensor | None = None, *, draws: tuple[int, int] = (64, 16)
             ) -> tuple[float, float]:
    """At width 1024: the NNGP from ``draws[0]`` draws of 256 outputs (the outputs of one draw
    share its hidden layers, so the draws set the error: ~ 1/sqrt(64)), the NTK from
    ``draws[1]`` draws of 2 outputs (its error ~ 1/sqrt(16 * 1024) times the activation's spread)."""
    e_nngp, _ = _mc(L.serial(*body, L.Dense(256)), x, draws[0], pattern, ntk=False)
    _, e_ntk = _mc(L.serial(*body, L.Dense(2)), x, draws[1], pattern, nngp=False)
    return e_nngp, e_ntk


def _psd_symmetric(t: torch.Tensor) -> None:
    assert torch.isfinite(t).all()
    torch.testing.assert_close(t, t.T, rtol=1e-12, atol=1e-14)
    assert float(torch.linalg.eigvalsh(t).min()) >= -1e-10 * float(t.abs().max())


def _graph_spec(width: int, impl: str = "dense") -> L.Layer:
    return L.serial(L.Dense(width, b_std=0.1), L.Aggregate(impl), L.Relu(), L.Dense(width), L.Aggregate(impl), L.Relu(),
                    L.GlobalSumPool(), L.Dense(16))


def _weighted_graph(n: int, v: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, v, v, generator=g, dtype=D) * (torch.rand(n, v, v, generator=g) < 0.5)


# -- Monte Carlo agreement ----------------------------------------------------------------


SPATIAL = {
    "conv_transpose_same": L.ConvTranspose(128, 3, strides=2, padding="SAME", b_std=0.2),
    "conv_transpose_circular": L.ConvTranspose(128, 2, strides=3, padding="circular"),
    "conv_transpose_explicit": L.ConvTranspose(128, 3, padding=((0, 1),)),
    "conv_local": L.ConvLocal(128, 3, padding="SAME", b_std=0.3),
    "image_resize": L.serial(L.ImageResize((-1, -1, 9), "linear"), L.Conv(128, 2)),
    "index": L.serial(L.Index(L.Slice[:, :, ::-2]), L.Conv(128, 2)),
    "dot_general": L.serial(L.DotGeneral(rhs=_randn(5, 3, seed=9), dimension_numbers=(((2,), (0,)), ((), ()))), L.Conv(128, 2)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SPATIAL))
def test_spatial_layers_match_monte_carlo(name):
    x = _randn(3, 2, 5, seed=1)
    wide = {"conv_transpose_same": L.ConvTranspose(1024, 3, strides=2, padding="SAME", b_std=0.2),
            "conv_transpose_circular": L.ConvTranspose(1024, 2, strides=3, padding="circular"),
            "conv_transpose_explicit": L.ConvTranspose(1024, 3, padding=((0, 1),)),
            "conv_local": L.ConvLocal(1024, 3, padding="SAME", b_std=0.3)}.get(name, SPATIAL[name])
    e_nngp, e_ntk = _mc_wide([L.Conv(1024, 2, padding="SAME"), L.Relu(), wide, L.Relu(), L.GlobalSumPool()], x)
    assert e_nngp < 0.05 and e_ntk < 0.05, (e_nngp, e_ntk)


@pytest.mark.parametrize("name", sorted(SPATIAL))
def test_spatial_layers_symmetric_psd(name):
    x = _randn(4, 2, 5, seed=1)
    k = L.serial(L.Conv(8, 2, padding="SAME"), L.Relu(), SPATIAL[name], L.Relu(), L.GlobalSumPool(), L.Dense(1)).kernel(x)
    _psd_symmetric(k.nngp)
    _psd_symmetric(k.ntk)


def test_graph_network_matches_monte_carlo_fast():
    x = _randn(3, 2, 4, seed=2)
    e_nngp, e_ntk = _mc(_graph_spec(64), x, 6, _weighted_graph(3, 4, 3))
    assert e_ntk < 0.15, e_ntk  # 6 draws of width 64: about 1/sqrt(384) per entry


@pytest.mark.slow
def test_graph_network_matches_monte_carlo():
    x = _randn(3, 2, 5, seed=2)
    e_nngp, e_ntk = _mc_wide(list(_graph_spec(1024).layers[:-1]), x, _weighted_graph(3, 5, 3))
    assert e_nngp < 0.05 and e_ntk < 0.05, (e_nngp, e_ntk)


def test_sparse_equals_dense_and_the_graph_matters():
    x1, x2 = _randn(3, 2, 6, seed=4), _randn(2, 2, 6, seed=5)
    a1, a2 = _weighted_graph(3, 6, 6) > 0, _weighted_graph(2, 6, 7) > 0

    def edges(a: torch.Tensor) -> torch.Tensor:
        out = torch.full((a.shape[0], 40, 2), -1, dtype=torch.long)  # unused slots: -1
        for n in range(a.shape[0]):
            e = a[n].nonzero()
            out[n, : len(e)] = e
        return out

    dense = _graph_spec(64).kernel(x1, x2, pattern=(a1.to(D), a2.to(D)))
    sparse = _graph_spec(64, "SPARSE").kernel(x1, x2, pattern=(edges(a1), edges(a2)))
    torch.testing.assert_close(sparse.ntk, dense.ntk, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(sparse.nngp, dense.nngp, rtol=1e-12, atol=1e-14)
    other = _graph_spec(64).kernel(x1, x2, pattern=(a1.to(D).transpose(1, 2), a2.to(D)))
    assert _rel(other.ntk, dense.ntk) > 1e-3
    # the finite modules agree too
    net_d, net_s = (_graph_spec(8, i).module((2, 6), generator=torch.Generator().manual_seed(0), dtype=D) for i in ("dense", "sparse"))
    torch.testing.assert_close(net_s(x1, pattern=edges(a1)), net_d(x1, pattern=a1.to(D)))


def test_masked_nodes_send_and_receive_nothing():
    """A graph padded with masked nodes has the kernel of the unpadded graph."""
    x, p = _randn(3, 2, 5, seed=8), _weighted_graph(3, 5, 9)
    spec = L.serial(L.Dense(64, b_std=0.1), L.Aggregate(), L.Relu(), L.Dense(64), L.Aggregate(), L.GlobalSumPool(), L.Dense(1))
    xp = torch.cat([x, _randn(3, 2, 2, seed=10)], 2)
    pp = torch.cat([torch.cat([p, torch.ones(3, 5, 2, dtype=D)], 2), torch.ones(3, 2, 7, dtype=D)], 1)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[:, 5:] = True
    # the sum pool must skip masked nodes: compare the aggregated kernels before pooling
    head = L.serial(L.Dense(64, b_std=0.1), L.Aggregate(), L.Relu(), L.Dense(64), L.Aggregate())
    full = head.kernel(xp, pattern=pp, mask=mask, diagonal_spatial=False)
    ref = head.kernel(x, pattern=p, diagonal_spatial=False)
    torch.testing.assert_close(full.nngp[:, :, :5, :5], ref.nngp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(full.ntk[:, :, :5, :5], ref.ntk, rtol=1e-12, atol=1e-12)
    # GlobalSumPool sums the kept nodes only: the whole network's kernel is the unpadded one
    torch.testing.assert_close(spec.kernel(xp, pattern=pp, mask=mask).ntk, spec.kernel(x, pattern=p).ntk,
                               rtol=1e-12, atol=1e-12)
    net = spec.module((2, 7), generator=torch.Generator().manual_seed(0), dtype=D)
    small = spec.module((2, 5), generator=torch.Generator().manual_seed(0), dtype=D)
    torch.testing.assert_close(net(xp, pattern=pp, mask=mask), small(x, pattern=p))


ACTIVATIONS = [L.Hermite(3), L.RectifiedMonomial(0), L.RectifiedMonomial(2), L.RectifiedMonomial(3), L.Gabor(),
               L.ExpNormalized(gamma=0.8, shift=-0.5), L.ExpNormalized(do_clip=True)]


@pytest.mark.slow
@pytest.mark.parametrize("act", ACTIVATIONS, ids=repr)
def test_activations_match_monte_carlo(act):
    x = _randn(4, 3, seed=11)
    # degree-3 polynomials have heavy-tailed finite-width fluctuations: more draws (flat nets are cheap)
    e_nngp, e_ntk = _mc_wide([L.Dense(1024, b_std=0.1), act], x, draws=(256, 64))
    assert e_nngp < 0.05 and e_ntk < 0.05, (e_nngp, e_ntk)


@pytest.mark.parametrize("act", [L.RectifiedMonomial(2), L.ExpNormalized(gamma=0.8, shift=-0.5)], ids=repr)
def test_activations_match_monte_carlo_fast(act):
    x = _randn(3, 3, seed=11)
    e_nngp, e_ntk = _mc(L.serial(L.Dense(512, b_std=0.1), act, L.Dense(32)), x, 8)
    assert e_ntk < 0.1, e_ntk  # the normalization of ExpNormalized included


@pytest.mark.parametrize("act", [a for a in ACTIVATIONS if not isinstance(a, L.ExpNormalized)], ids=repr)
def test_activation_rules_equal_quadrature(act):
    q11 = torch.tensor([1.3, 0.7, 2.0, 1.0, 0.0], dtype=D)
    q22 = torch.tensor([0.9, 1.1, 2.0, 1.0, 1.0], dtype=D)
    q12 = torch.tensor([0.4, -0.5, 2.0, 1.0, 0.0], dtype=D)
    if isinstance(act, L.RectifiedMonomial) and act.degree == 0:
        # the step at a zero-variance point is the constant 1 (x >= 0 at x = 0): the rule's
        # angle convention (t = pi/2) does not cover it; skip that point
        q11, q12, q22 = q11[:4], q12[:4], q22[:4]
    sigma, sdot = act.rule(q11, q12, q22)
    ref_sigma, ref_sdot = gaussian_expectations(act.fn, q11, q12, q22, method="polar", degree=96)
    torch.testing.assert_close(sigma, ref_sigma, rtol=1e-10, atol=1e-12)
    if not (isinstance(act, L.RectifiedMonomial) and act.degree == 0):  # step: sdot = 0 by convention
        torch.testing.assert_close(sdot, ref_sdot, rtol=1e-10, atol=1e-12)


def test_rectified_monomial_diagonal_and_deep_gabor_are_finite_psd():
    x = _randn(5, 3, seed=12)
    x = torch.cat([x, x[:1]])  # a duplicate: correlation exactly 1 off the diagonal too
    for spec in (L.serial(L.Dense(64), L.RectifiedMonomial(3), L.Dense(64), L.RectifiedMonomial(2), L.Dense(1)),
                 L.serial(*([L.Dense(64, W_std=2.0), L.Gabor()] * 12), L.Dense(1))):
        k = spec.kernel(x)
        _psd_symmetric(k.nngp)
        _psd_symmetric(k.ntk)
    q = torch.tensor([0.7], dtype=D)
    sigma, _ = L.RectifiedMonomial(3).rule(q, q, q)  # diagonal: (2n - 1)!! q^n / 2
    torch.testing.assert_close(sigma, 15 * q**3 / 2)


def test_exp_normalized_takes_0dim_tensors_differentiably():
    gamma = torch.tensor(0.8, dtype=D, requires_grad=True)
    k = L.serial(L.Dense(8), L.ExpNormalized(gamma=gamma), L.Dense(1)).kernel(_randn(3, 2, seed=13))
    (g,) = torch.autograd.grad(k.ntk.sum(), gamma)
    assert torch.isfinite(g) and g != 0


# -- gradcheck in the inputs --------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,shape,pattern",
    [
        (L.serial(L.Conv(4, 2), L.Relu(), L.ConvTranspose(4, 2, strides=2, padding="SAME"), L.Erf(), L.GlobalSumPool()), (2, 1, 3), None),
        (L.serial(L.ConvLocal(4, 2), L.Gabor(), L.ImageResize((-1, -1, 5), "linear"), L.Index(L.Slice[..., 1:]), L.Flatten()), (2, 1, 4), None),
        (L.serial(L.Dense(4), L.RectifiedMonomial(2), L.Dense(4), L.Hermite(2), L.Dense(4), L.ExpNormalized()), (2, 3), None),
        (L.serial(L.Dense(4), L.Aggregate(), L.Relu(), L.DotGeneral(rhs=2.0), L.GlobalAvgPool()), (2, 2, 3), "dense"),
    ],
)
def test_gradcheck_inputs(spec, shape, pattern):
    x = _randn(*shape, seed=14).requires_grad_(True)
    kw = {"pattern": _weighted_graph(shape[0], shape[-1], 15) + 0.1} if pattern else {}
    assert torch.autograd.gradcheck(lambda t: spec.kernel(t, **kw).ntk, (x,))


# -- shapes, combinators, errors ------------------------------------------------------------


def test_repeat_and_global_sum_pool():
    block = L.serial(L.Dense(16), L.Relu())
    x = _randn(3, 2, seed=16)
    torch.testing.assert_close(L.serial(L.repeat(block, 3), L.Dense(1)).kernel(x).ntk,
                               L.serial(block, block, block, L.Dense(1)).kernel(x).ntk, rtol=0, atol=0)
    assert isinstance(L.repeat(block, 0), L.Identity)
    xi = _randn(2, 3, 4, seed=17)
    # GlobalSumPool = D^2 GlobalAvgPool on the pooled kernel (D = 3 positions after the VALID conv)
    ps, pa = (L.serial(L.Conv(8, 2), L.Relu(), pool).kernel(xi) for pool in (L.GlobalSumPool(), L.GlobalAvgPool()))
    torch.testing.assert_close(ps.nngp, 9 * pa.nngp, rtol=1e-12, atol=0)


def test_index_carries_the_mask():
    """Cropping away the padded positions gives the kernel of the unpadded sequences."""
    x = _randn(3, 2, 5, seed=20)
    xp = torch.cat([x, _randn(3, 2, 2, seed=21)], 2)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[:, 5:] = True
    spec = L.serial(L.Conv(8, 1), L.Relu(), L.Index(L.Slice[:, :, :5]), L.Dense(8))
    ours = spec.kernel(xp, mask=mask)
    torch.testing.assert_close(ours.ntk, spec.kernel(x).ntk, rtol=1e-12, atol=1e-14)
    assert ours.mask1 is None or not ours.mask1.any()


def test_index_and_resize_shapes():
    x = _randn(2, 3, 6, 5, seed=18)
    spec = L.serial(L.Conv(4, 1), L.Index(L.Slice[:, :, 2, 1:4]), L.Relu())
    assert spec.module((3, 6, 5))(x.float()).shape == (2, 4, 3)
    assert spec.kernel(x).nngp.shape == (2, 2, 3)
    up = L.ImageResize((-1, -1, 9, 7), "BILINEAR").module((3, 6, 5))
    assert up(x).shape == (2, 3, 9, 7)


@pytest.mark.parametrize(
    "make,error",
    [
        (lambda: L.Aggregate("csr"), InvalidArgumentError),
        (lambda: L.ConvTranspose(0, 3), InvalidArgumentError),
        (lambda: L.ConvTranspose(4, 3, padding="full"), InvalidArgumentError),
        (lambda: L.ConvLocal(4, (1, 2, 3)), InvalidArgumentError),
        (lambda: L.Hermite(-1), InvalidArgumentError),
        (lambda: L.RectifiedMonomial(1.5), InvalidArgumentError),
        (lambda: L.ExpNormalized(gamma=0.0), InvalidArgumentError),
        (lambda: L.ExpNormalized(do_clip="yes"), InvalidArgumentError),
        (lambda: L.ImageResize((-1, -1, 4), "cubic"), InvalidArgumentError),
        (lambda: L.Index(L.Slice[:, :, 1.5]), InvalidArgumentError),
        (lambda: L.DotGeneral(lhs=1.0, rhs=2.0), InvalidArgumentError),
        (lambda: L.DotGeneral(rhs=torch.ones(3), dimension_numbers=(((2,), (0,)), ((0,), (0,)))), InvalidArgumentError),
        (lambda: L.repeat(L.Relu(), -1), InvalidArgumentError),
        (lambda: L.repeat("relu", 2), InvalidArgumentError),
    ],
)
def test_bad_arguments(make, error):
    with pytest.raises(error):
        make()


def test_bad_use_raises_spec_errors():
    x = _randn(2, 3, 5, seed=19)
    for spec, kw, words in [
        (L.serial(L.Dense(4), L.Aggregate()), {}, "pattern"),
        (L.serial(L.Dense(4), L.Aggregate()), {"pattern": torch.zeros(2, 5, 2, dtype=torch.long)}, "floating"),
        (L.Index(L.Slice[:, 0]), {}, "channel"),
        (L.Index(L.Slice[:, :, 7]), {}, "out of range"),
        (L.ImageResize((-1, 4, 6), "linear"), {}, "channel"),
        (L.DotGeneral(rhs=torch.ones(5), dimension_numbers=(((1,), (0,)), ((), ()))), {}, "spatial"),
        (L.ConvTranspose(4, 2), {}, None),
    ]:
        if words is None:
            with pytest.raises(SpecError, match="flat"):
                L.serial(L.Flatten(), spec).kernel(x)
            continue
        with pytest.raises((SpecError, InvalidArgumentError), match=words):
            spec.kernel(x, **kw)
