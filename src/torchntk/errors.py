"""torchntk's exception types.

Every user mistake that torchntk detects raises a subclass of :class:`TorchNTKError`, with a
message that names the offending argument and what was expected. The subclasses also derive
from the matching built-in type (``ValueError``, ``RuntimeError``...) so that generic handlers
keep working. Results that torchntk computes but cannot vouch for come with a warning, a
subclass of :class:`TorchNTKWarning` (``warnings.simplefilter("error", TorchNTKWarning)`` turns
them into errors)::

    try:
        torchntk.empirical_ntk(model, x)
    except torchntk.TorchNTKError as err:
        print(err)
"""

from __future__ import annotations

__all__ = [
    "TorchNTKError",
    "InvalidArgumentError",
    "ShapeError",
    "NonFiniteError",
    "ModelStateError",
    "UnsupportedLayerError",
    "SpecError",
    "StoreError",
    "SolverError",
    "TorchNTKWarning",
    "ConvergenceWarning",
    "AccuracyWarning",
    "StabilityWarning",
    "DriftWarning",
    "BudgetWarning",
]


class TorchNTKError(Exception):
    """Base class of every error raised by torchntk."""


class InvalidArgumentError(TorchNTKError, ValueError):
    """An argument has a value torchntk cannot use (unknown mode, negative time...)."""


class ShapeError(InvalidArgumentError):
    """An array argument has the wrong shape or rank, or two arguments disagree."""


class NonFiniteError(InvalidArgumentError):
    """An input contains NaN or infinite values."""


class ModelStateError(TorchNTKError, RuntimeError):
    """The model cannot be used as it is: train-mode BatchNorm/Dropout, no trainable parameters."""


class UnsupportedLayerError(TorchNTKError, NotImplementedError):
    """A layer or activation has no rule for the requested computation."""


class SpecError(TorchNTKError, ValueError):
    """An architecture spec (``torchntk.layers``) is inconsistent with itself or with its input."""


class StoreError(TorchNTKError, RuntimeError):
    """A kernel store cannot be created, read or resumed (settings changed, corrupt manifest...)."""


class SolverError(TorchNTKError, RuntimeError):
    """A numerical solver (the ODE integrator of ``dynamics.train``) stopped without a solution."""


class TorchNTKWarning(UserWarning):
    """Base class of every warning issued by torchntk: a result it returns but cannot vouch for."""


class ConvergenceWarning(TorchNTKWarning):
    """An iterative solver stopped before reaching its tolerance (``cg_solve``...)."""


class AccuracyWarning(TorchNTKWarning):
    """A numerical rule (quadrature of an ``Elementwise`` activation...) may miss its tolerance."""


class StabilityWarning(TorchNTKWarning):
    """Gradient descent with a learning rate above ``max_learning_rate``: the iteration diverges."""


class DriftWarning(TorchNTKWarning):
    """A network under training left its kernel regime (``lab.DriftTracker``'s alarm): its
    empirical NTK drifted, or its outputs left the kernel prediction, beyond a set limit."""


class BudgetWarning(TorchNTKWarning):
    """A memory budget too small to run efficiently (tiny blocks); the message gives the
    budget that efficient blocks would need."""
