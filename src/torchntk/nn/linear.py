"""Fully connected layer in NTK (or standard) parameterization."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import _init


class Linear(nn.Module):
    """``z = (W_std / sqrt(in_features)) * W a + b_std * b`` with ``W, b ~ N(0, 1)``.

    Args:
        in_features: input width ``n_l`` (the fan-in).
        out_features: output width.
        W_std: weight standard deviation factor (``1`` in the theory's network).
        b_std: bias factor ``beta``; ``None`` or ``0`` means no bias parameter.
        parameterization: ``"ntk"`` (default) or ``"standard"`` (see :mod:`torchntk.nn`).
        generator: optional ``torch.Generator`` for a reproducible initialization.

    Shapes: input ``(N, *, in_features)``, output ``(N, *, out_features)``; parameters
    ``weight (out_features, in_features)`` and ``bias (out_features,)``.

    Example:
        >>> layer = Linear(3, 5, W_std=1.0, b_std=0.1)
        >>> layer(torch.randn(4, 3)).shape
        torch.Size([4, 5])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        W_std: float = 1.0,
        b_std: float | None = None,
        parameterization: str = "ntk",
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        has_bias = _init.check_stds(W_std, b_std, parameterization)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.W_std, self.b_std, self.parameterization = float(W_std), b_std, parameterization
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features, **kw))
        self.bias = nn.Parameter(torch.empty(self.out_features, **kw)) if has_bias else None
        self.weight_scale, self.bias_scale = _init.scales(W_std, b_std, self.in_features, parameterization)
        self.reset_parameters(generator)

    @property
    def fan_in(self) -> int:
        return self.in_features

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        _init.reset(self.weight, self.bias, self.W_std, self.b_std, self.fan_in, self.parameterization, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias * self.bias_scale
        return F.linear(x, self.weight * self.weight_scale, bias)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, W_std={self.W_std}, b_std={self.b_std}, "
            f"parameterization={self.parameterization!r}"
        )
