"""Families of specs indexed by hyperparameters, ready for :func:`torchntk.gp.fit`."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgumentError
from ..layers import Dense, Layer, Relu, serial

__all__ = ["relu_mlp"]


def relu_mlp(depth: int = 2, W_std: Any = 1.0, b_std: Any = 0.1, width: int = 512) -> Layer:
    """The ReLU network of the theory: ``depth`` hidden ``Dense(width) -> Relu`` layers and a
    ``Dense(1)`` readout, every ``Dense`` with the same ``W_std`` and ``b_std`` (numbers or 0-dim
    tensors; the kernels are differentiable in tensors). ``width`` does not change the
    infinite-width kernel (NTK parameterization).

    Example:
        >>> spec = relu_mlp(3, W_std=1.2, b_std=0.1)
        >>> spec.kernel(torch.randn(4, 2)).ntk.shape
        torch.Size([4, 4])
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise InvalidArgumentError(f"`depth` must be an int >= 0 (hidden layers), got {depth!r}")
    layers: list[Layer] = []
    for _ in range(depth):
        layers += [Dense(width, W_std=W_std, b_std=b_std), Relu()]
    return serial(*layers, Dense(1, W_std=W_std, b_std=b_std))
