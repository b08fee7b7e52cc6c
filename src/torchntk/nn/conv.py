"""Convolutions (1-D and 2-D, channels-first) in NTK (or standard) parameterization.

Padding follows the architecture spec: ``"valid"`` (none), ``"same"`` (zeros, output size
``ceil(in / stride)``, the extra pixel after, as in TensorFlow/neural-tangents), ``"circular"``
(as "same" but wrapping around), or explicit symmetric zero padding (an int or a tuple).
The padding is applied by :meth:`pad_input`, so the layer is always
``conv(pad_input(x), weight_scale * W, stride) + bias_scale * b`` with no implicit padding:
the structured NTK unfolds ``pad_input(x)`` into patches.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import _init
from ..errors import InvalidArgumentError, ShapeError

_PADDINGS = ("valid", "same", "circular")


def _tuple(value: int | Sequence[int], dims: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    value = tuple(int(v) for v in value)
    if len(value) != dims:
        raise InvalidArgumentError(f"`{name}` must be an int or a {dims}-tuple, got {value!r}")
    return value


def same_pads(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int]]:
    """Per-axis (before, after) padding of TensorFlow's SAME: output size ``ceil(in / stride)``."""
    pads = []
    for n, k, s in zip(size, kernel, stride):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


class _ConvNd(nn.Module):
    dims: int = 0

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: str | int | Sequence[int] = "valid",
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
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _tuple(kernel_size, self.dims, "kernel_size")
        self.stride = _tuple(stride, self.dims, "stride")
        if isinstance(padding, str):
            padding = padding.lower()
            if padding not in _PADDINGS:
                raise InvalidArgumentError(
                    f"unknown padding={padding!r}; expected 'valid', 'same', 'circular' or ints"
                )
            self.padding: str | tuple[int, ...] = padding
        else:
            self.padding = _tuple(padding, self.dims, "padding")
        self.W_std, self.b_std, self.parameterization = float(W_std), b_std, parameterization
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.out_channels, self.in_channels, *self.kernel_size, **kw))
        self.bias = nn.Parameter(torch.empty(self.out_channels, **kw)) if has_bias else None
        self.weight_scale, self.bias_scale = _init.scales(W_std, b_std, self.fan_in, parameterization)
        self.reset_parameters(generator)

    @property
    def fan_in(self) -> int:
        return self.in_channels * math.prod(self.kernel_size)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        _init.reset(self.weight, self.bias, self.W_std, self.b_std, self.fan_in, self.parameterization, generator)

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """Apply this layer's padding to ``x`` of shape ``(N, C, *spatial)``."""
        if x.ndim != self.dims + 2 or x.shape[1] != self.in_channels:
            raise ShapeError(
                f"{type(self).__name__} expects input (N, {self.in_channels}, "
                f"{', '.join(['*'] * self.dims)}), got {tuple(x.shape)}"
            )
        if self.padding == "valid":
            return x
        if isinstance(self.padding, tuple):
            pads = [(p, p) for p in self.padding]
            mode = "constant"
        else:
            pads = same_pads(x.shape[2:], self.kernel_size, self.stride)
            mode = "constant" if self.padding == "same" else "circular"
        flat = [p for pair in reversed(pads) for p in pair]  # F.pad wants last axis first
        if not any(flat):
            return x
        return F.pad(x, flat, mode=mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pad_input(x)
        if any(s > n for s, n in zip(self.kernel_size, x.shape[2:])):
            raise ShapeError(
                f"{type(self).__name__}: kernel_size {self.kernel_size} is larger than the "
                f"(padded) input {tuple(x.shape[2:])}"
            )
        bias = None if self.bias is None else self.bias * self.bias_scale
        conv = F.conv1d if self.dims == 1 else F.conv2d
        return conv(x, self.weight * self.weight_scale, bias, stride=self.stride)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding!r}, W_std={self.W_std}, "
            f"b_std={self.b_std}, parameterization={self.parameterization!r}"
        )


class Conv1d(_ConvNd):
    """1-D convolution, input ``(N, C_in, L)``; ``fan_in = C_in * kernel_size``.

    ``z = (W_std / sqrt(fan_in)) * conv(pad(x), W) + b_std * b`` with ``W, b ~ N(0, 1)``.
    """

    dims = 1


class Conv2d(_ConvNd):
    """2-D convolution, input ``(N, C_in, H, W)``; ``fan_in = C_in * kh * kw``.

    ``z = (W_std / sqrt(fan_in)) * conv(pad(x), W) + b_std * b`` with ``W, b ~ N(0, 1)``.

    Example:
        >>> conv = Conv2d(1, 8, 3, padding="same", b_std=0.1)
        >>> conv(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 8, 8, 8])
    """

    dims = 2
