"""The fully connected network of the NTK theory (Jacot et al. 2018)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .activations import get_activation
from .linear import Linear


class MLP(nn.Sequential):
    """``a(l+1) = phi(W(l) a(l) / sqrt(n_l) + beta b(l))``, the theory's network.

    ``MLP(n0, [n1, ..., n_{L-1}], n_L)`` stacks ``L`` :class:`~torchntk.nn.Linear` layers with
    ``W_std`` and ``b_std = beta`` and the activation between them (none after the last).
    The theory's network is ``W_std = 1`` and a small ``beta`` (0.1 in Jacot et al.'s figures).

    Args:
        in_features: input dimension ``n0``.
        widths: hidden widths ``n1 ... n_{L-1}`` (may be empty: a linear model).
        out_features: output dimension ``n_L``.
        activation: name (``"relu"``, ``"tanh"``, ``"erf"``, ...), module or callable.
        beta: bias factor ``b_std``; ``None`` or ``0`` for no biases.
        W_std: weight factor.
        parameterization: ``"ntk"`` or ``"standard"``.
        generator: ``torch.Generator`` for a reproducible draw.

    Example:
        >>> net = MLP(2, [512, 512, 512], 1, activation="relu", beta=0.1)
        >>> net(torch.randn(5, 2)).shape
        torch.Size([5, 1])
    """

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int],
        out_features: int,
        activation: str | nn.Module | Callable[[torch.Tensor], torch.Tensor] = "relu",
        beta: float | None = 0.1,
        W_std: float = 1.0,
        parameterization: str = "ntk",
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        dims = [int(in_features), *[int(w) for w in widths], int(out_features)]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                layers.append(get_activation(activation))
            layers.append(
                Linear(fan_in, fan_out, W_std, beta, parameterization,
                       generator=generator, device=device, dtype=dtype)
            )
        super().__init__(*layers)
