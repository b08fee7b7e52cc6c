"""Graph patterns at their edges: huge dense weights, the one padding convention of sparse edge
lists, and the finite module's checks of ``pattern``."""

from __future__ import annotations

import pytest
import torch

from torchntk import layers as L
from torchntk.errors import InvalidArgumentError, NonFiniteError, ShapeError

D = torch.float64


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(seed))


def _spec(impl: str = "dense") -> L.Layer:
    # no biases: with ReLU the kernel is positively homogeneous of degree 2 in each Aggregate's weights
    return L.serial(L.Dense(8, b_std=None), L.Aggregate(impl), L.Relu(), L.Dense(8, b_std=None), L.Aggregate(impl),
                    L.GlobalSumPool(), L.Dense(1, b_std=None))


EDGES = torch.tensor([[[0, 1], [1, 2], [3, 0], [2, 2]], [[0, 1], [2, 3], [1, 1], [3, 2]]])


def test_dense_weights_beyond_float64_raise_naming_pattern():
    # weights 1e200 used to give an all-NaN kernel (1e400 overflows, then inf * 0)
    x, p = _x(2, 3, 4), torch.rand(2, 4, 4, dtype=D, generator=torch.Generator().manual_seed(1))
    for spec in (_spec(), L.serial(L.Dense(8), L.Aggregate(), L.Erf(), L.Dense(1))):
        with pytest.raises(NonFiniteError, match="`pattern`"):
            spec.kernel(x, pattern=p * 1e200)


def test_large_dense_weights_that_fit_give_the_scaled_kernel():
    # two Aggregates of weights c p: the kernel is c^4 times that of p (homogeneity, no bias);
    # 1e60^4 = 1e240 fits float64. Scaling by a power of ten rounds each entry once (about 1e-16
    # relative) and each product/sum keeps that relative size: 1e-12 leaves ample margin.
    x, p = _x(2, 3, 4), torch.rand(2, 4, 4, dtype=D, generator=torch.Generator().manual_seed(1))
    big, ref = _spec().kernel(x, pattern=p * 1e60), _spec().kernel(x, pattern=p)
    assert torch.isfinite(big.ntk).all()
    torch.testing.assert_close(big.ntk / 1e240, ref.ntk, rtol=1e-12, atol=0)
    torch.testing.assert_close(big.nngp / 1e240, ref.nngp, rtol=1e-12, atol=0)


@pytest.mark.parametrize("slot", [(-2, -2), (1, -1), (-1, 3), (-5, 0)])
def test_malformed_sparse_slots_are_refused_by_kernel_and_module(slot):
    # these used to be dropped silently, like the padding (-1, -1)
    x = _x(2, 3, 4)
    e = torch.cat([EDGES, torch.full((2, 1, 2), -1)], 1)
    e[0, -1] = torch.tensor(slot)
    with pytest.raises(InvalidArgumentError, match="`pattern\\[0\\]`.*\\(-1, -1\\)"):
        _spec("sparse").kernel(x, pattern=e)
    net = _spec("sparse").module(x.shape[1:], generator=torch.Generator().manual_seed(0), dtype=D)
    with pytest.raises(InvalidArgumentError, match="`pattern`"):
        net(x, pattern=e)


def test_padding_slots_contribute_nothing():
    # (-1, -1) slots: the kernel and the network of the edge list without them (the same sums,
    # with zero terms added or not: equal to rounding, 1e-13 relative)
    x = _x(2, 3, 4)
    padded = torch.cat([EDGES[:, :2], torch.full((2, 2, 2), -1), EDGES[:, 2:]], 1)
    spec = _spec("sparse")
    torch.testing.assert_close(spec.kernel(x, pattern=padded).ntk, spec.kernel(x, pattern=EDGES).ntk, rtol=1e-13, atol=1e-13)
    net = spec.module(x.shape[1:], generator=torch.Generator().manual_seed(0), dtype=D)
    torch.testing.assert_close(net(x, pattern=padded), net(x, pattern=EDGES), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("where", [(0, 1, 1), (1, 2, 0)], ids=["head", "tail"])
def test_module_out_of_range_node_raises_shape_error(where):
    # used to be torch's raw "index 7 is out of bounds" RuntimeError
    x = _x(2, 3, 4)
    e = EDGES.clone()
    e[where] = 7
    net = _spec("sparse").module(x.shape[1:], generator=torch.Generator().manual_seed(0), dtype=D)
    with pytest.raises(ShapeError, match="`pattern`.*7.*V = 4"):
        net(x, pattern=e)
    with pytest.raises(ShapeError, match="`pattern\\[0\\]`.*7.*V = 4"):
        _spec("sparse").kernel(x, pattern=e)


@pytest.mark.parametrize("impl,pattern", [("dense", torch.rand(2, 5, 5, dtype=D)), ("sparse", torch.zeros(2, 3, 3, dtype=torch.long)),
                                          ("dense", torch.rand(3, 4, 4, dtype=D))])
def test_module_wrong_size_pattern_raises_shape_error(impl, pattern):
    x = _x(2, 3, 4)
    net = _spec(impl).module(x.shape[1:], generator=torch.Generator().manual_seed(0), dtype=D)
    with pytest.raises(ShapeError, match="`pattern`"):
        net(x, pattern=pattern)


@pytest.mark.parametrize("impl", ["dense", "sparse"])
def test_module_under_vmap_checks_shapes_only(impl):
    # inside torch.func.vmap the entries cannot be read: the module still runs, per sample, and
    # agrees with the batched call (two code paths: equal to rounding, 1e-12 relative)
    x = _x(2, 3, 4)
    p = torch.rand(2, 4, 4, dtype=D, generator=torch.Generator().manual_seed(1)) if impl == "dense" else EDGES
    net = _spec(impl).module(x.shape[1:], generator=torch.Generator().manual_seed(0), dtype=D)
    per = torch.func.vmap(lambda xi, pi: net(xi[None], pattern=pi[None])[0])(x, p)
    torch.testing.assert_close(per, net(x, pattern=p), rtol=1e-12, atol=1e-12)
