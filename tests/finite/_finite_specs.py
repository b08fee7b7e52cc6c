"""MLP specs shared by the finite-width tests."""

from __future__ import annotations

import torch

from torchntk import layers as L


def mlp(act, depth: int, n: int, W_std: float, b_std: float | None) -> L.Layer:
    parts = []
    for _ in range(depth - 1):
        parts += [L.Dense(n, W_std=W_std, b_std=b_std), act()]
    return L.serial(*parts, L.Dense(1, W_std=W_std, b_std=b_std))


def inputs(n: int = 2, d: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
