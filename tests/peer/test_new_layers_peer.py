"""The layers of issue 9's second half against neural-tangents (float64, 1e-9 relative):
Aggregate, ConvTranspose, ConvLocal, GlobalSumPool, ImageResize, Index, DotGeneral, repeat and
the activations Hermite, RectifiedMonomial, ExpNormalized, Gabor; kernel and cross-kernel.

Skipped unless neural_tangents imports (``.peer-venv/bin/python -m pytest tests/peer``). Ours is
channels-first, the peer channels-last.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

nt = pytest.importorskip("neural_tangents")
jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
stax = nt.stax

from torchntk import layers as L  # noqa: E402

from ._convert import to_peer as _to_peer  # noqa: E402

pytestmark = pytest.mark.peer
RTOL = 1e-9




def _check(ours_k, theirs_k) -> None:
    for name in ("nngp", "ntk"):
        a, b = getattr(ours_k, name).numpy(), np.asarray(getattr(theirs_k, name))
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert np.isfinite(b).all(), f"the peer's {name} is not finite"
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * np.abs(b).max(), err_msg=name)


def _compare(spec, peer, x1, x2, **side) -> None:
    """Kernel of x1 with itself and cross-kernel with x2, ours vs the peer's."""
    kernel_fn = peer[2]
    p1, p2 = side.get("pattern", (None, None))
    ours = spec.kernel(x1, pattern=p1) if p1 is not None else spec.kernel(x1)
    theirs = kernel_fn(_to_peer(x1), None, ("nngp", "ntk"), **({"pattern": (p1.numpy(), p1.numpy())} if p1 is not None else {}))
    _check(ours, theirs)
    ours = spec.kernel(x1, x2, pattern=(p1, p2)) if p1 is not None else spec.kernel(x1, x2)
    kw = {"pattern": (p1.numpy(), p2.numpy())} if p1 is not None else {}
    _check(ours, kernel_fn(_to_peer(x1), _to_peer(x2), ("nngp", "ntk"), **kw))


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_two_layer_graph_network_with_weighted_arcs():
    x1, x2 = _randn(4, 3, 6, seed=0), _randn(3, 3, 6, seed=1)
    g = torch.Generator().manual_seed(2)
    p1 = torch.rand(4, 6, 6, generator=g, dtype=torch.float64) * (torch.rand(4, 6, 6, generator=g) < 0.5)
    p2 = torch.rand(3, 6, 6, generator=g, dtype=torch.float64)
    spec = L.serial(L.Dense(64, b_std=0.1), L.Aggregate(), L.Relu(), L.Dense(64, W_std=1.3), L.Aggregate(), L.Relu(),
                    L.GlobalSumPool(), L.Dense(1))
    peer = stax.serial(stax.Dense(64, b_std=0.1), stax.Aggregate(aggregate_axis=1), stax.Relu(), stax.Dense(64, W_std=1.3),
                       stax.Aggregate(aggregate_axis=1), stax.Relu(), stax.GlobalSumPool(), stax.Dense(1))
    _compare(spec, peer, x1, x2, pattern=(p1, p2))


def test_sparse_graph_network():
    x1, x2 = _randn(3, 2, 5, seed=3), _randn(2, 2, 5, seed=4)
    g = torch.Generator().manual_seed(5)
    e1 = torch.randint(0, 5, (3, 7, 2), generator=g)
    e2 = torch.randint(0, 5, (2, 7, 2), generator=g)
    e1[0, -2:] = -1  # unused edge slots
    spec = L.serial(L.Dense(64), L.Aggregate("SPARSE"), L.Erf(), L.Dense(64), L.Aggregate("sparse"), L.GlobalAvgPool(), L.Dense(1))
    peer = stax.serial(stax.Dense(64), stax.Aggregate(aggregate_axis=1, implementation="SPARSE"), stax.Erf(), stax.Dense(64),
                       stax.Aggregate(aggregate_axis=1, implementation="SPARSE"), stax.GlobalAvgPool(), stax.Dense(1))
    _compare(spec, peer, x1, x2, pattern=(e1, e2))


@pytest.mark.parametrize("padding", ["VALID", "SAME", "CIRCULAR"])
@pytest.mark.parametrize("strides", [(1, 1), (2, 1), (3, 2)])
def test_conv_transpose(padding, strides):
    x1, x2 = _randn(3, 2, 4, 3, seed=6), _randn(2, 2, 4, 3, seed=7)
    spec = L.serial(L.Conv(32, (2, 2), padding="SAME"), L.Relu(),
                    L.ConvTranspose(32, (3, 2), strides=strides, padding=padding, W_std=1.2, b_std=0.3), L.Relu(),
                    L.GlobalAvgPool(), L.Dense(1))
    peer = stax.serial(stax.Conv(32, (2, 2), padding="SAME"), stax.Relu(),
                       stax.ConvTranspose(32, (3, 2), strides=strides, padding=padding, W_std=1.2, b_std=0.3), stax.Relu(),
                       stax.GlobalAvgPool(), stax.Dense(1))
    _compare(spec, peer, x1, x2)


@pytest.mark.parametrize("padding", ["VALID", "SAME", "CIRCULAR"])
def test_conv_local(padding):
    x1, x2 = _randn(3, 2, 5, 4, seed=8), _randn(2, 2, 5, 4, seed=9)
    for pool, peer_pool in ((L.Flatten(), stax.Flatten()), (L.GlobalAvgPool(), stax.GlobalAvgPool())):
        spec = L.serial(L.ConvLocal(32, (3, 2), strides=(1, 2), padding=padding, b_std=0.2), L.Erf(),
                        L.ConvLocal(32, 2, padding=padding), L.Erf(), pool, L.Dense(1))
        peer = stax.serial(stax.ConvLocal(32, (3, 2), strides=(1, 2), padding=padding, b_std=0.2), stax.Erf(),
                           stax.ConvLocal(32, (2, 2), padding=padding), stax.Erf(), peer_pool, stax.Dense(1))
        _compare(spec, peer, x1, x2)


def test_image_resize_index_repeat():
    x1, x2 = _randn(3, 2, 5, 4, seed=10), _randn(2, 2, 5, 4, seed=11)
    # the peer's repeat scans its layer, which must keep the kernel's layout flags: a 1x1 Dense block
    block = L.serial(L.Dense(16, b_std=0.1), L.Relu())
    peer_block = stax.serial(stax.Dense(16, b_std=0.1), stax.Relu())
    spec = L.serial(
        # (no Conv before a resize: the peer's ImageResize ignores the reversed spatial axes of its
        # full-layout kernels after a Conv and disagrees there; ours is checked by Monte Carlo)
        block, L.repeat(block, 2), L.ImageResize((-1, -1, 8, 3), "LINEAR"), L.Dense(16), L.Relu(),
        L.ImageResize((-1, -1, 4, 5), "nearest"), L.Index(L.Slice[:, :, 1:, ::-2]), L.Dense(16), L.Relu(),
        L.GlobalSumPool(), L.Dense(1),
    )
    peer = stax.serial(
        peer_block, stax.repeat(peer_block, 2), stax.ImageResize((-1, 8, 3, -1), "linear"), stax.Dense(16), stax.Relu(),
        stax.ImageResize((-1, 4, 5, -1), "nearest"), stax.Index(stax.Slice[:, 1:, ::-2, :]), stax.Dense(16), stax.Relu(),
        stax.GlobalSumPool(), stax.Dense(1),
    )
    _compare(spec, peer, x1, x2)


def test_dot_general_rhs_2d():
    x1, x2 = _randn(3, 2, 5, 4, seed=10), _randn(2, 2, 5, 4, seed=11)
    rhs = _randn(4, 3, seed=12)
    spec = L.serial(L.Dense(16, b_std=0.1), L.Relu(), L.DotGeneral(rhs=rhs, dimension_numbers=(((3,), (0,)), ((), ()))),
                    L.Dense(16), L.Relu(), L.GlobalSumPool(), L.Dense(1))
    peer = stax.serial(stax.Dense(16, b_std=0.1), stax.Relu(),
                       stax.DotGeneral(rhs=rhs.numpy(), dimension_numbers=(((2,), (0,)), ((), ()))),
                       # lax.dot_general puts rhs's free axis last: (N, H, C, 3); the channel axis is then 2
                       stax.Dense(16, channel_axis=2), stax.Relu(), stax.GlobalSumPool(channel_axis=2), stax.Dense(1))
    _compare(spec, peer, x1, x2)


def test_dot_general_lhs_and_scalar():
    x1, x2 = _randn(3, 2, 4, seed=13), _randn(2, 2, 4, seed=14)
    lhs = _randn(5, 4, seed=15)
    spec = L.serial(L.Conv(16, 2, padding="SAME"), L.Relu(), L.DotGeneral(lhs=lhs, dimension_numbers=(((1,), (2,)), ((), ()))),
                    L.DotGeneral(rhs=2.0), L.Flatten(), L.Dense(1))
    # the peer's output is (5, N, L... ) channels-last: lhs free axes first, so give it the batch axis 1
    peer = stax.serial(stax.Conv(16, (2,), padding="SAME"), stax.Relu(),
                       stax.DotGeneral(lhs=lhs.numpy(), dimension_numbers=(((1,), (1,)), ((), ()))),
                       stax.DotGeneral(rhs=2.0, batch_axis=1), stax.Flatten(batch_axis=1), stax.Dense(1))
    _compare(spec, peer, x1, x2)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (L.RectifiedMonomial(0), stax.RectifiedMonomial(0)),
        (L.RectifiedMonomial(2), stax.RectifiedMonomial(2)),
        (L.RectifiedMonomial(3), stax.RectifiedMonomial(3)),
        (L.Gabor(), stax.Gabor()),
        (L.ExpNormalized(gamma=0.7, shift=-0.5), stax.ExpNormalized(gamma=0.7, shift=-0.5)),
        (L.ExpNormalized(do_clip=True), stax.ExpNormalized(do_clip=True)),
    ],
)
def test_activations_cross_kernel(ours, theirs):
    """Cross-kernels (x1 vs x2, never correlation 1), compared where the peer is finite (its
    RectifiedMonomial is NaN wherever its chain meets correlation 1, e.g. in the variances)."""
    x1, x2 = _randn(4, 3, seed=16), _randn(3, 3, seed=17)
    spec = L.serial(L.Dense(64, W_std=1.2, b_std=0.1), ours, L.Dense(1))
    peer = stax.serial(stax.Dense(64, W_std=1.2, b_std=0.1), theirs, stax.Dense(1))
    a, b = spec.kernel(x1, x2), peer[2](x1.numpy(), x2.numpy(), ("nngp", "ntk"))
    for name in ("nngp", "ntk"):
        mine, their = getattr(a, name).numpy(), np.asarray(getattr(b, name))
        ok = np.isfinite(their)
        assert ok.mean() >= 0.5 and np.isfinite(mine).all(), name
        np.testing.assert_allclose(mine[ok], their[ok], rtol=RTOL, atol=RTOL * np.abs(their[ok]).max(), err_msg=name)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_hermite_on_unit_variances(degree):
    """The peer assumes unit-variance pre-activations: LayerNorm gives them exactly."""
    x1, x2 = _randn(4, 3, seed=18), _randn(3, 3, seed=19)
    spec = L.serial(L.Dense(64), L.LayerNorm(eps=0.0), L.Hermite(degree), L.Dense(64), L.LayerNorm(eps=0.0),
                    L.Hermite(degree), L.Dense(1))
    peer = stax.serial(stax.Dense(64), stax.LayerNorm(eps=0.0), stax.Hermite(degree), stax.Dense(64), stax.LayerNorm(eps=0.0),
                       stax.Hermite(degree), stax.Dense(1))
    _compare(spec, peer, x1, x2)


def test_where_the_peer_is_not_finite_ours_is():
    """RectifiedMonomial on the diagonal (the peer divides by sin(t) = 0) and Gabor deep in a
    chain: ours finite, symmetric and PSD (and the peer's diagonal is NaN for the first)."""
    x = _randn(5, 3, seed=20)
    spec = L.serial(L.Dense(64), L.RectifiedMonomial(2), L.Dense(64), L.RectifiedMonomial(2), L.Dense(1))
    peer = stax.serial(stax.Dense(64), stax.RectifiedMonomial(2), stax.Dense(64), stax.RectifiedMonomial(2), stax.Dense(1))
    theirs = np.asarray(peer[2](x.numpy(), None, "ntk"))
    assert not np.isfinite(theirs).all()
    for s in (spec, L.serial(*([L.Dense(64, W_std=2.0), L.Gabor()] * 12), L.Dense(1))):
        k = s.kernel(x)
        for t in (k.nngp, k.ntk):
            assert torch.isfinite(t).all()
            # symmetric to rounding (a diagonal block's rule is evaluated entry by entry)
            torch.testing.assert_close(t, t.T, rtol=1e-12, atol=1e-14 * float(t.abs().max()))
            assert torch.linalg.eigvalsh(t).min() >= -1e-12 * t.abs().max()
