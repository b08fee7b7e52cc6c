"""Small argument checks shared by every subpackage (private)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable

import torch

from .errors import InvalidArgumentError, NonFiniteError, ShapeError


def check_tensor(name: str, value: object) -> torch.Tensor:
    """Return ``value`` if it is a tensor; raise an InvalidArgumentError naming ``name`` otherwise."""
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


def check_batches(x1: object, x2: object = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x1`` and ``x2`` (or ``None``) as finite tensors with a non-empty batch axis and the
    same per-example shape; InvalidArgumentError or ShapeError naming the argument otherwise."""
    out = []
    for name, x in (("x1", x1), ("x2", x2)):
        if x is not None:
            x = check_finite(name, check_nonempty_batch(name, check_tensor(name, x)))
        out.append(x)
    x1, x2 = out
    if x2 is not None and x2.shape[1:] != x1.shape[1:]:
        raise ShapeError(
            f"`x2` has feature shape {tuple(x2.shape[1:])} but `x1` has {tuple(x1.shape[1:])}; "
            "both must be batches of the same kind of input"
        )
    return x1, x2


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Raise InvalidArgumentError unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise InvalidArgumentError(
            f"unknown {name}={value!r}; expected one of {', '.join(map(repr, choices))}"
        )
    return value  # type: ignore[return-value]


def renamed(new: str, value: Any, old: str, old_value: Any, default: Any = None) -> Any:
    """The value of argument ``new``, also accepted under its deprecated name ``old``.

    ``old_value`` is what the caller passed as ``old`` (``None`` when it did not); passing it
    warns with a ``DeprecationWarning``, and passing it with ``new`` set to anything but its
    ``default`` is an error. The old names are kept for one release.
    """
    if old_value is None:
        return value
    if value is not None and value != default:
        raise InvalidArgumentError(f"pass `{new}` only: `{old}` is its deprecated name")
    warnings.warn(f"`{old}` is deprecated and will be removed in the next release; use `{new}`",
                  DeprecationWarning, stacklevel=3)
    return old_value
def check_hyper(name: str, value: object, *, minimum: float | None = None, strict: bool = False) -> "float | torch.Tensor":
    """A layer hyperparameter: a finite Python number (returned as ``float``) or a real 0-dim
    floating tensor (returned as is, so that kernels stay differentiable in it).

    ``minimum``: lower bound (``value >= minimum``, or ``>`` when ``strict``), checked on the
    tensor's current value.
    """
    if isinstance(value, torch.Tensor):
        if value.ndim != 0 or not value.is_floating_point():
            raise InvalidArgumentError(
                f"`{name}` must be a number or a 0-dim floating tensor, got a {value.dtype} tensor "
                f"of shape {tuple(value.shape)}"
            )
        number = float(value.detach())
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise InvalidArgumentError(f"`{name}` must be a finite number or a 0-dim tensor, got {value!r}")
    if not math.isfinite(number):
        raise InvalidArgumentError(f"`{name}` must be finite, got {number!r}")
    if minimum is not None and (number < minimum or (strict and number == minimum)):
        raise InvalidArgumentError(f"`{name}` must be {'>' if strict else '>='} {minimum}, got {number!r}")
    return value if isinstance(value, torch.Tensor) else number


def is_one(value: "float | torch.Tensor", number: float) -> bool:
    """Whether ``value`` is the Python number ``number`` (a tensor never is: its value may change,
    and skipping an operation on it would drop its gradient)."""
    return not isinstance(value, torch.Tensor) and value == number


def value_of(value: "float | torch.Tensor | None") -> "float | None":
    """The current value of a hyperparameter as a Python float (``None`` kept)."""
    if value is None:
        return None
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
