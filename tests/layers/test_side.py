"""Side inputs (padding masks, graph patterns) through spec.kernel and spec.module."""

from __future__ import annotations

import pytest
import torch

from torchntk import layers as L
from torchntk.errors import InvalidArgumentError, ShapeError, SpecError
from torchntk.layers._side import SideModule

DT = torch.float64


class _Probe(L.Layer):
    """A test layer whose kernel depends on the side inputs, per pair of samples.

    Kernel: ``nngp[i, j, p] * keep1[i, p] * keep2[j, p] + s1[i] + s2[j]`` with ``keep = ~mask``
    and ``s = sum of the pattern's weights`` (the number of edges for a sparse one).
    """

    def output_shape(self, input_shape):
        return input_shape

    def kernel_rule(self, k):
        m1, m2 = k.masks
        p1, p2 = k.patterns
        keep1 = (~m1).to(k.nngp.dtype)
        keep2 = (~m2).to(k.nngp.dtype)
        s1 = p1.flatten(1).to(k.nngp.dtype).sum(1)
        s2 = p2.flatten(1).to(k.nngp.dtype).sum(1)
        add = s1[:, None, None] + s2[None, :, None]
        return k.replace(nngp=k.nngp * keep1[:, None] * keep2[None] + add, cov1=k.cov1 * keep1 + 2 * s1[:, None],
                         cov2=None if k.cov2 is None else k.cov2 * keep2 + 2 * s2[:, None])

    def make_module(self, input_shape, generator, dtype, device):
        return _ProbeModule()


class _ProbeModule(SideModule):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, mask=None, pattern=None):
        self.seen.append((mask, pattern))
        return x


def _data(n, gen, v=6, c=3):
    x = torch.randn(n, c, v, dtype=DT, generator=gen)
    m = torch.rand(n, v, generator=gen) < 0.3
    p = torch.rand(n, v, v, dtype=DT, generator=gen)
    return x, m, p


def _expected(x1, m1, p1, x2, m2, p2):
    """Brute force of Dense(W_std=1) >> _Probe on masked-to-zero inputs."""
    z1 = x1 * ~m1[:, None]
    z2 = x2 * ~m2[:, None]
    g = torch.einsum("icp,jcp->ijp", z1, z2) / x1.shape[1]
    g = g * (~m1)[:, None] * (~m2)[None]
    return g + p1.sum((1, 2))[:, None, None] + p2.sum((1, 2))[None, :, None]


@pytest.mark.parametrize("same", [True, False])
def test_blocked_side_inputs_equal_one_block_and_brute_force(same):
    gen = torch.Generator().manual_seed(0)
    spec = L.serial(L.Dense(8), _Probe())
    x1, m1, p1 = _data(11, gen)
    x2, m2, p2 = _data(7, gen)
    if same:
        args, kw = (x1,), {"mask": (m1, None), "pattern": p1}
        ref = _expected(x1, m1, p1, x1, m1, p1)
    else:
        args, kw = (x1, x2), {"mask": (m1, m2), "pattern": (p1, p2)}
        ref = _expected(x1, m1, p1, x2, m2, p2)
    one = spec.kernel(*args, **kw, block_size=64)
    many = spec.kernel(*args, **kw, block_size=3)
    torch.testing.assert_close(one.nngp, ref, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(many.nngp, ref, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(many.cov1, one.cov1, rtol=1e-14, atol=1e-14)
    assert torch.equal(many.mask1, m1) and torch.equal(one.mask1, m1)
    assert (many.mask2 is None) == same


def test_sparse_pattern_and_one_sided_mask():
    gen = torch.Generator().manual_seed(1)
    x1, m1, _ = _data(5, gen)
    x2, _, _ = _data(4, gen)
    e1 = torch.randint(0, 6, (5, 9, 2), generator=gen)
    e2 = torch.randint(0, 6, (4, 9, 2), generator=gen)
    k = L.serial(L.Dense(8), _Probe()).kernel(x1, x2, mask=(m1, torch.zeros(4, 6, dtype=torch.bool)),
                                             pattern=(e1, e2), block_size=2)
    ref = _expected(x1, m1, e1.to(DT), x2, torch.zeros(4, 6, dtype=torch.bool), e2.to(DT))
    torch.testing.assert_close(k.nngp, ref, rtol=1e-14, atol=1e-14)
    # A missing mask means "no padding": the kernel of the layers that ignore masks is unchanged.
    a = L.Dense(4).kernel(x1, x2, mask=(m1, None))
    b = L.Dense(4).kernel(x1 * ~m1[:, None], x2)
    torch.testing.assert_close(a.nngp, b.nngp, rtol=0, atol=0)


def test_module_passes_side_inputs_through_serial_parallel_fanout():
    probe = _Probe()
    spec = L.serial(L.Dense(16), L.FanOut(2), L.parallel(probe, L.serial(L.Relu(), probe)), L.FanInSum(),
                    L.Relu(), probe, L.Dense(1))
    net = spec.module((3, 6), generator=torch.Generator().manual_seed(0), dtype=DT)
    gen = torch.Generator().manual_seed(2)
    x, m, p = _data(4, gen)
    plain = net(x)
    out = net(x, mask=m, pattern=p)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)  # the probe is the identity
    probes = [mod for mod in net.modules() if isinstance(mod, _ProbeModule)]
    assert len(probes) == 3
    for mod in probes:
        assert len(mod.seen) == 2
        assert mod.seen[0] == (None, None)
        assert torch.equal(mod.seen[1][0], m) and mod.seen[1][1] is p


def test_mask_follows_flat_layers_in_module_and_errors_when_shape_changes():
    gen = torch.Generator().manual_seed(3)
    x, m, _ = _data(3, gen)
    strided = L.serial(L.Conv(4, 2, strides=2), _Probe())
    with pytest.raises(SpecError, match="padding masks"):
        strided.kernel(x, mask=m)
    with pytest.raises(SpecError, match="padding masks"):
        strided.module((3, 6), dtype=DT)(x, mask=m)


def test_side_input_validation():
    gen = torch.Generator().manual_seed(4)
    x1, m1, p1 = _data(3, gen)
    x2, m2, p2 = _data(2, gen)
    spec = L.Dense(4)
    with pytest.raises(InvalidArgumentError, match="boolean"):
        spec.kernel(x1, mask=m1.int())
    with pytest.raises(ShapeError, match=r"mask\[1\]"):
        spec.kernel(x1, x2, mask=(m1, m1))
    with pytest.raises(InvalidArgumentError, match="pair"):
        spec.kernel(x1, x2, mask=m1)
    with pytest.raises(InvalidArgumentError, match="None when `x2` is None"):
        spec.kernel(x1, mask=(m1, m1))
    with pytest.raises(ShapeError, match="flat"):
        spec.kernel(torch.randn(3, 4), mask=torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ShapeError, match="dense pattern"):
        spec.kernel(x1, pattern=torch.rand(3, 6, 5, dtype=DT))
    with pytest.raises(ShapeError, match="sparse pattern"):
        spec.kernel(x1, pattern=torch.zeros(3, 4, 3, dtype=torch.long))
    with pytest.raises(InvalidArgumentError, match="out of range"):
        spec.kernel(x1, pattern=torch.full((3, 4, 2), 6, dtype=torch.long))
    with pytest.raises(InvalidArgumentError, match="dense, or both sparse"):
        spec.kernel(x1, x2, pattern=(p1, torch.zeros(2, 4, 2, dtype=torch.long)))
    with pytest.raises(ShapeError, match="node features"):
        spec.kernel(torch.randn(3, 2, 4, 4), pattern=torch.rand(3, 4, 4))
