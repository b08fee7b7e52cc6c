"""``layers.mlp``: the fully connected spec shared by the lab, the CLI and the sklearn estimators."""

from __future__ import annotations

import math

import pytest
import torch

from torchntk import layers as L
from torchntk.errors import InvalidArgumentError
from torchntk.lab import relu_kernels


def test_mlp_is_dense_relu_dense_and_matches_the_arc_cosine_closed_form():
    x1 = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x2 = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    k = L.mlp(64, 3, W_std=1.3, b_std=0.2).kernel(x1, x2)
    sigma, theta = relu_kernels(x1.numpy(), x2.numpy(), depth=3, W_std=1.3, b_std=0.2)
    torch.testing.assert_close(k.nngp, torch.from_numpy(sigma), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k.ntk, torch.from_numpy(theta), rtol=1e-12, atol=1e-12)
    net = L.mlp(7, 3, 2).module(3)
    shapes = [tuple(p.shape) for p in net.parameters()]
    assert shapes == [(7, 3), (7,), (7, 7), (7,), (2, 7), (2,)]


def test_mlp_activation_and_depth_one():
    x = torch.randn(4, 2, dtype=torch.float64)
    erf = L.mlp(8, 2, activation=L.Erf).kernel(x)
    ref = L.serial(L.Dense(8, b_std=0.1), L.Erf(), L.Dense(1, b_std=0.1)).kernel(x)
    assert torch.equal(erf.ntk, ref.ntk)
    lin = L.mlp(8, 1, b_std=0.0).kernel(x)  # one Dense layer: Theta = x.x' / n0
    torch.testing.assert_close(lin.ntk, x @ x.T / 2, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("kw", [dict(width=0), dict(depth=0), dict(outputs=0), dict(width=math.pi)])
def test_mlp_rejects_bad_sizes(kw):
    args = dict(width=4, depth=2, outputs=1) | kw
    with pytest.raises(InvalidArgumentError, match=next(iter(kw))):
        L.mlp(**args)
