"""The pseudo-NTK: (1/O) sum_ab Theta_ab, close to the mean kernel at large width."""

from __future__ import annotations

import torch

import torchntk
from torchntk.nn import MLP


def test_pseudo_ntk_is_the_output_averaged_full_kernel():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    full = torchntk.empirical_ntk(net, x, mode="full")
    pseudo = torchntk.empirical_ntk(net, x, mode="pseudo")
    torch.testing.assert_close(pseudo, full.sum((2, 3)) / 3, rtol=1e-10, atol=1e-12)


def test_pseudo_ntk_approaches_the_mean_kernel_with_width():
    """Its off-diagonal output part is O(n^-1/2) relative: 4x the width, about half the gap."""
    x = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    gaps = {}
    for width in (64, 1024):
        g = []
        for seed in range(3):
            net = MLP(3, [width, width], 4, generator=torch.Generator().manual_seed(seed)).double()
            mean = torchntk.empirical_ntk(net, x, mode="mean")
            g.append(float((torchntk.empirical_ntk(net, x, mode="pseudo") - mean).norm() / mean.norm()))
        gaps[width] = sum(g) / len(g)
    assert gaps[1024] < 0.6 * gaps[64], gaps   # theory: 0.25 for 16x the width
