"""Activation modules used by the theory's networks."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import InvalidArgumentError


class Erf(nn.Module):
    """``phi(x) = erf(x)``: the activation with a closed-form infinite-width kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.erf(x)


class _Lambda(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


_NAMED: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "erf": Erf,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}


def get_activation(activation: str | nn.Module | Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    """An activation module from a name (``"relu"``, ``"tanh"``, ``"erf"``...), module or callable."""
    if isinstance(activation, nn.Module):
        return activation
    if isinstance(activation, str):
        try:
            return _NAMED[activation.lower()]()
        except KeyError:
            raise InvalidArgumentError(
                f"unknown activation={activation!r}; expected one of {sorted(_NAMED)}, "
                "an nn.Module or a callable"
            ) from None
    if callable(activation):
        return _Lambda(activation)
    raise InvalidArgumentError(f"`activation` must be a name, an nn.Module or a callable, got {activation!r}")
