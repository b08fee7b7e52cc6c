"""``mlp``: the spec of a fully connected network, the architecture of the NTK theory."""

from __future__ import annotations

from typing import Callable

from ..._checks import check_int
from .._core.protocol import Layer
from ..activations import Relu
from .._core.protocol import serial
from .fully_connected import Dense


def mlp(
    width: int,
    depth: int,
    outputs: int = 1,
    *,
    activation: Callable[[], Layer] = Relu,
    W_std: float = 1.0,
    b_std: float = 0.1,
) -> Layer:
    """``depth`` Dense layers, ``activation()`` between them: ``depth - 1`` hidden layers of
    ``width`` units and a readout of ``outputs`` units, every one with weight and bias
    standard deviations ``W_std`` and ``b_std`` (NTK parameterization).

    The hidden width sets the finite network (``spec.module``); the infinite-width kernels
    (``spec.kernel``) do not depend on it.

    Example:
        >>> from torchntk import layers
        >>> spec = layers.mlp(512, 3)       # Dense(512), Relu, Dense(512), Relu, Dense(1)
        >>> spec.kernel(torch.randn(4, 3)).ntk.shape
        torch.Size([4, 4])
    """
    width, depth, outputs = (check_int(name, value, minimum=1, who="mlp")
                             for name, value in (("width", width), ("depth", depth), ("outputs", outputs)))
    parts: list[Layer] = []
    for _ in range(depth - 1):
        parts += [Dense(width, W_std=W_std, b_std=b_std), activation()]
    parts.append(Dense(outputs, W_std=W_std, b_std=b_std))
    return serial(*parts)
