"""Padding masks: a padded and masked batch has the kernels (and module outputs) of the unpadded one."""

from __future__ import annotations

import pytest
import torch

from torchntk import layers as L
from torchntk.errors import SpecError

from _attention_specs import transformer as _transformer

DT = torch.float64
LENS = [5, 3, 5, 2]


def _batch(c: int = 3, pad: int = 7, seed: int = 0):
    """Sequences of lengths LENS, padded at the end to ``pad`` with garbage, and their mask."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(c, n, dtype=DT, generator=g) for n in LENS]
    x = 100 + torch.randn(len(LENS), c, pad, dtype=DT, generator=g)
    m = torch.ones(len(LENS), pad, dtype=torch.bool)
    for i, xi in enumerate(xs):
        x[i, :, : xi.shape[1]] = xi
        m[i, : xi.shape[1]] = False
    return xs, x, m


def _assert_unpadded(spec: L.Layer, xs, k) -> None:
    """``k[i, j]`` equals the kernel of the unpadded pair ``(x_i, x_j)`` (of ``x_i`` alone if i = j)."""
    for i in range(len(xs)):
        for j in range(len(xs)):
            if xs[i].shape != xs[j].shape:
                continue  # different lengths: no common unpadded input shape to compare with
            ku = spec.kernel(xs[i][None]) if i == j else spec.kernel(xs[i][None], xs[j][None])
            for a, b in ((k.nngp[i, j], ku.nngp[0, 0]), (k.ntk[i, j], ku.ntk[0, 0])):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * float(b.abs()))


@pytest.mark.parametrize("head", ["pool", "flatten", "layernorm"])
def test_masked_transformer_equals_unpadded(head):
    heads = {"pool": L.GlobalAvgPool(), "flatten": L.Flatten(),
             "layernorm": L.serial(L.Dense(16), L.LayerNorm(axis=(1, 2)), L.GlobalAvgPool())}
    spec = _transformer("softmax", width=16, head=heads[head])
    xs, x, m = _batch()
    k = spec.kernel(x, mask=m)
    _assert_unpadded(spec, xs, k)
    # blocks and cross kernels carry the masks through
    kb = spec.kernel(x, mask=m, block_size=1)
    torch.testing.assert_close(kb.ntk, k.ntk, rtol=1e-12, atol=1e-12)
    kc = spec.kernel(x[:2], x[2:], mask=(m[:2], m[2:]))
    torch.testing.assert_close(kc.ntk, k.ntk[:2, 2:], rtol=1e-12, atol=1e-12)


def test_pooled_kernel_does_not_depend_on_the_padding_length():
    # Also for pairs of different lengths: padding to 7 or to 10 gives the same kernel.
    spec = _transformer("abs", width=16)
    _, x7, m7 = _batch(pad=7)
    x10 = torch.cat([x7, torch.randn(4, 3, 3, dtype=DT)], dim=2)
    m10 = torch.cat([m7, torch.ones(4, 3, dtype=torch.bool)], dim=1)
    k7, k10 = spec.kernel(x7, mask=m7), spec.kernel(x10, mask=m10)
    torch.testing.assert_close(k10.nngp, k7.nngp, rtol=1e-12, atol=0)
    torch.testing.assert_close(k10.ntk, k7.ntk, rtol=1e-12, atol=0)


@pytest.mark.parametrize("head", ["pool", "flatten", "layernorm"])
def test_masked_module_equals_unpadded_module(head):
    # Without positional embeddings the parameters do not depend on the length: the same network
    # applied to a padded and masked sequence and to the sequence itself gives the same output.
    heads = {"pool": L.GlobalAvgPool(), "flatten": L.Flatten(),
             "layernorm": L.serial(L.LayerNorm(axis=(1, 2)), L.GlobalAvgPool())}
    spec = _transformer("softmax", width=16, pos="none", head=heads[head])
    xs, x, m = _batch(pad=5)
    net = spec.module((3, 5), generator=torch.Generator().manual_seed(0), dtype=DT)
    with torch.no_grad():
        out = net(x, mask=m)
        for i, xi in enumerate(xs):
            if head == "flatten" and xi.shape[1] != 5:
                continue  # the flattened width is the padded length's
            torch.testing.assert_close(out[i], net(xi[None])[0], rtol=1e-12, atol=1e-12)


def test_masked_flatten_module_scales_kept_positions():
    x = torch.randn(2, 3, 4, dtype=DT)
    m = torch.tensor([[False, False, True, True], [False, False, False, False]])
    out = L.Flatten().module((3, 4))(x, mask=m)
    expected0 = (x[0] * torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=DT)).flatten() * (4 / 2) ** 0.5
    torch.testing.assert_close(out[0], expected0)
    torch.testing.assert_close(out[1], x[1].flatten())


def test_windowed_layers_refuse_masks():
    x = torch.randn(2, 3, 6, dtype=DT)
    m = torch.zeros(2, 6, dtype=torch.bool)
    for layer in (L.Conv(4, 3, padding="SAME"), L.AvgPool(2), L.SumPool(2), L.Conv(4, 1, strides=2),
                  L.ConvTranspose(4, 2), L.ConvTranspose(4, 1, strides=2), L.ConvLocal(4, 3)):
        with pytest.raises(SpecError, match="padding masks"):
            L.serial(layer, L.GlobalAvgPool()).kernel(x, mask=m)
        with pytest.raises(SpecError, match="padding masks"):  # the finite module alike
            L.serial(layer, L.GlobalAvgPool()).module((3, 6), dtype=DT)(x, mask=m)
    # a 1x1 convolution is per position: allowed
    k = L.serial(L.Conv(4, 1), L.GlobalAvgPool()).kernel(x, mask=m)
    torch.testing.assert_close(k.nngp, L.serial(L.Conv(4, 1), L.GlobalAvgPool()).kernel(x).nngp)
    with pytest.raises(SpecError, match="every spatial axis"):
        L.serial(L.Dense(4), L.LayerNorm(axis=(1, 2))).kernel(torch.randn(2, 3, 4, 5), mask=torch.zeros(2, 4, 5, dtype=torch.bool))
