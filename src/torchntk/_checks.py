"""Small argument checks shared by every room of the package (private)."""

from __future__ import annotations

from typing import Iterable

import torch

from .errors import InvalidArgumentError, NonFiniteError, ShapeError


def check_tensor(name: str, value: object) -> torch.Tensor:
    """Return ``value`` if it is a tensor; raise a ShapeError naming ``name`` otherwise."""
    if not isinstance(value, torch.Tensor):
        raise InvalidArgumentError(
            f"`{name}` must be a torch.Tensor, got {type(value).__name__}"
        )
    return value


def check_finite(name: str, value: torch.Tensor) -> torch.Tensor:
    """Raise NonFiniteError if ``value`` holds NaN or Inf entries."""
    if value.is_floating_point() or value.is_complex():
        if not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise NonFiniteError(
                f"`{name}` contains {bad} non-finite (NaN or Inf) value(s); "
                "kernels of non-finite inputs are undefined"
            )
    return value


def check_nonempty_batch(name: str, value: torch.Tensor) -> torch.Tensor:
    """Raise ShapeError if ``value`` has no leading batch axis or an empty one."""
    if value.ndim == 0:
        raise ShapeError(f"`{name}` must have a leading batch axis, got a scalar tensor")
    if value.shape[0] == 0:
        raise ShapeError(f"`{name}` is an empty batch (shape {tuple(value.shape)}); need N >= 1")
    return value


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Raise InvalidArgumentError unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise InvalidArgumentError(
            f"unknown {name}={value!r}; expected one of {', '.join(map(repr, choices))}"
        )
    return value  # type: ignore[return-value]
