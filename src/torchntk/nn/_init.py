"""Parameter initialization shared by the NTK-parameterized layers (private)."""

from __future__ import annotations

import math

import torch

from .._checks import check_choice
from ..errors import InvalidArgumentError

PARAMETERIZATIONS = ("ntk", "standard")


def check_stds(W_std: float, b_std: float | None, parameterization: str) -> bool:
    """Validate the layer's standard deviations; return whether the layer has a bias."""
    check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    if not (isinstance(W_std, (int, float)) and math.isfinite(W_std) and W_std >= 0):
        raise InvalidArgumentError(f"`W_std` must be a finite number >= 0, got {W_std!r}")
    if b_std is None:
        return False
    if not (isinstance(b_std, (int, float)) and math.isfinite(b_std) and b_std >= 0):
        raise InvalidArgumentError(f"`b_std` must be None or a finite number >= 0, got {b_std!r}")
    return b_std != 0


def scales(W_std: float, b_std: float | None, fan_in: int, parameterization: str) -> tuple[float, float]:
    """Forward-pass factors ``(weight_scale, bias_scale)`` of ``z = ws * W a + bs * b``."""
    if parameterization == "ntk":
        return W_std / math.sqrt(fan_in), float(b_std or 0.0)
    return 1.0, 1.0


@torch.no_grad()
def reset(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    W_std: float,
    b_std: float | None,
    fan_in: int,
    parameterization: str,
    generator: torch.Generator | None = None,
) -> None:
    """Draw the parameters: N(0, 1) in NTK parameterization, N(0, std^2) in standard."""
    if parameterization == "ntk":
        w_sd, b_sd = 1.0, 1.0
    else:
        w_sd, b_sd = W_std / math.sqrt(fan_in), float(b_std or 0.0)
    weight.normal_(0.0, 1.0, generator=generator).mul_(w_sd)
    if bias is not None:
        bias.normal_(0.0, 1.0, generator=generator).mul_(b_sd)
