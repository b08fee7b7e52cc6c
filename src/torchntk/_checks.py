"""Small argument checks shared by every subpackage (private)."""

from __future__ import annotations

import math
import numbers
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


def _prefix(who: str | None) -> str:
    """``"Who: "`` before a message about one of ``who``'s arguments (nothing for ``None``)."""
    return f"{who}: " if who else ""


def check_choice(name: str, value: object, choices: Iterable[str], *, any_case: bool = False,
                 who: str | None = None) -> str:
    """The choice ``value`` names, in the spelling of ``choices``.

    ``any_case``: strings match up to case (CONVENTIONS section 6), and the caller must use the
    returned spelling; without it ``value`` must be one of ``choices`` exactly (for callers that
    keep ``value`` itself). Raises InvalidArgumentError naming ``name`` (after ``who``, the layer
    or function, when given) and listing ``choices`` otherwise.
    """
    choices = tuple(choices)
    if isinstance(value, str):
        folded = value.casefold() if any_case else value
        for choice in choices:
            if (choice.casefold() if any_case else choice) == folded:
                return choice
    raise InvalidArgumentError(
        f"{_prefix(who)}unknown {name}={value!r}; expected one of {', '.join(map(repr, choices))}"
        + (" (any case)" if any_case else "")
    )


def check_int(name: str, value: object, *, minimum: int | None = None, allow_none: bool = False,
              who: str | None = None) -> Any:
    """An integer argument: a Python (or numpy) integer, not a bool, returned as ``int``.

    ``minimum``: lower bound (``value >= minimum``); ``allow_none``: ``None`` is returned as is.
    Raises InvalidArgumentError naming ``name`` (after ``who`` when given) and the bound.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (minimum is not None and value < minimum):
        kind = "a positive int" if minimum == 1 else ("an int" if minimum is None else f"an int >= {minimum}")
        raise InvalidArgumentError(
            f"{_prefix(who)}`{name}` must be {kind}{' or None' if allow_none else ''}, got {value!r}"
        )
    return int(value)


def check_ints(name: str, value: object, *, who: str | None = None) -> tuple[int, ...]:
    """An int or a sequence of ints (Python or numpy integers, not bools) as a tuple of ``int``.

    Raises InvalidArgumentError naming ``name`` (after ``who`` when given) for anything else, e.g. a
    float entry (never truncated). Bounds on the entries are the caller's.
    """
    entries = (value,) if isinstance(value, numbers.Integral) else value
    try:
        entries = tuple(entries)  # type: ignore[arg-type]
    except TypeError:
        entries = None
    if entries is None or any(isinstance(e, bool) or not isinstance(e, numbers.Integral) for e in entries):
        raise InvalidArgumentError(f"{_prefix(who)}`{name}` must be an int or a sequence of ints, got {value!r}")
    return tuple(int(e) for e in entries)


def check_number(name: str, value: object, *, minimum: float | None = None, strict: bool = False,
                 below: float | None = None, allow_none: bool = False, who: str | None = None) -> Any:
    """A real argument that is a plain Python (or numpy) number, not a bool: returned as ``float``.

    ``minimum``: lower bound (``value >= minimum``, or ``>`` when ``strict``); ``below``: strict
    upper bound (``value < below``); ``allow_none``: ``None`` is returned as is. Raises
    InvalidArgumentError naming ``name`` (after ``who`` when given) unless ``value`` is finite
    and within the bounds.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(
            f"{_prefix(who)}`{name}` must be a finite number{' or None' if allow_none else ''}, got {value!r}"
        )
    return _bounded(name, float(value), minimum, strict, below, who)


def _bounded(name: str, number: float, minimum: float | None, strict: bool, below: float | None,
             who: str | None) -> float:
    """``number`` if it is finite and within the bounds of :func:`check_number`."""
    if not math.isfinite(number):
        raise InvalidArgumentError(f"{_prefix(who)}`{name}` must be finite, got {number!r}")
    if minimum is not None and (number < minimum or (strict and number == minimum)):
        raise InvalidArgumentError(f"{_prefix(who)}`{name}` must be {'>' if strict else '>='} {minimum}, got {number!r}")
    if below is not None and not number < below:
        raise InvalidArgumentError(f"{_prefix(who)}`{name}` must be < {below}, got {number!r}")
    return number


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


def check_hyper(name: str, value: object, *, minimum: float | None = None, strict: bool = False,
                allow_none: bool = False, who: str | None = None) -> "float | torch.Tensor | None":
    """A layer hyperparameter: a finite Python number (returned as ``float``) or a real 0-dim
    floating tensor (returned as is, so that kernels stay differentiable in it).

    ``minimum``: lower bound (``value >= minimum``, or ``>`` when ``strict``), checked on the
    tensor's current value; ``allow_none``: ``None`` is returned as is. Raises
    InvalidArgumentError naming ``name`` (after ``who``, the layer, when given).
    """
    if value is None and allow_none:
        return None
    if isinstance(value, torch.Tensor):
        if value.ndim != 0 or not value.is_floating_point():
            raise InvalidArgumentError(
                f"{_prefix(who)}`{name}` must be a number or a 0-dim floating tensor, got a {value.dtype} "
                f"tensor of shape {tuple(value.shape)}"
            )
        _bounded(name, float(value.detach()), minimum, strict, None, who)
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(
            f"{_prefix(who)}`{name}` must be a finite number{' or None' if allow_none else ''} or a 0-dim "
            f"tensor, got {value!r}"
        )
    return _bounded(name, float(value), minimum, strict, None, who)


def is_one(value: "float | torch.Tensor", number: float) -> bool:
    """Whether ``value`` is the Python number ``number`` (a tensor never is: its value may change,
    and skipping an operation on it would drop its gradient)."""
    return not isinstance(value, torch.Tensor) and value == number


def value_of(value: "float | torch.Tensor | None") -> "float | None":
    """The current value of a hyperparameter as a Python float (``None`` kept)."""
    if value is None:
        return None
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
