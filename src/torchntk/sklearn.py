"""scikit-learn estimators: an infinitely wide network trained by gradient flow on the MSE cost.

:class:`NTKRegressor` and :class:`NTKClassifier` predict what an infinitely wide network of
the given architecture (a :mod:`torchntk.layers` spec) outputs after training for time ``t`` on
``C = (1/(2N)) sum ||f - y||^2``, averaged over initializations (``f_0 = 0``)::

    f_t(x) = Theta(x, X) Theta^{-1} (I - exp(-t Theta / N)) y,     t = inf: Theta(x, X) Theta^{-1} y

with ``Theta`` the infinite-width NTK (``spec.kernel(...).ntk``, float64) and
``Theta + diag_reg * mean(diag Theta) * I`` when ``diag_reg > 0``. The classifier regresses
one-hot targets and predicts the arg-max. scikit-learn is needed only to use these classes.

Example:
    >>> from torchntk.sklearn import NTKRegressor
    >>> X = np.random.default_rng(0).normal(size=(50, 3)); y = np.sin(X[:, 0])
    >>> NTKRegressor(t=float("inf"), diag_reg=1e-4).fit(X, y).predict(X[:2]).shape
    (2,)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .layers import mlp

__all__ = ["NTKRegressor", "NTKClassifier", "default_architecture"]


def default_architecture():
    """The default spec: the theory's ReLU network with three Dense layers, ``b_std = 0.1``.

    The width in the spec does not change the infinite-width kernel.
    """
    return mlp(512, 3, 1, W_std=1.0, b_std=0.1)


class _NTKBase(BaseEstimator):
    def _check_params(self) -> None:
        t = self.t
        if not isinstance(t, (int, float)) or isinstance(t, bool) or math.isnan(t) or t < 0:
            raise ValueError(f"t must be a number >= 0 (or inf), got {t!r}")
        if not isinstance(self.diag_reg, (int, float)) or not self.diag_reg >= 0:
            raise ValueError(f"diag_reg must be a number >= 0, got {self.diag_reg!r}")

    #: Parameters that the fitted state depends on (``t`` is read at prediction time).
    _FIT_PARAMS = ("architecture", "diag_reg")
    _FITTED = ("X_fit_", "n_features_in_", "_Y", "_predictor", "classes_", "_binarizer")

    def set_params(self, **params) -> "_NTKBase":
        """Set parameters; changing ``architecture`` or ``diag_reg`` after :meth:`fit` clears
        the fitted state (predicting then needs a new ``fit``), so the train kernel of one
        setting is never paired with the test kernel of another. ``t`` can change freely."""
        super().set_params(**params)
        if any(k in params for k in self._FIT_PARAMS):
            for attr in self._FITTED:
                if hasattr(self, attr):
                    delattr(self, attr)
        return self

    def _spec(self):
        return default_architecture() if self.architecture is None else self.architecture

    def _fit_targets(self, X, Y) -> None:
        self._check_params()
        self.X_fit_ = np.array(X, dtype=np.float64, order="C", copy=True)
        spec = self._spec()
        if getattr(self, "n_features", None) is not None:  # random features: m x m instead of N x N
            from . import features

            self._fm = features.FeatureMap(spec, int(self.n_features), seed=0)
            self._predictor = features.mse(self._fm.rows(torch.from_numpy(self.X_fit_)),
                                           torch.from_numpy(np.asarray(Y, dtype=np.float64)),
                                           diag_reg=float(self.diag_reg))
            return
        K = spec.kernel(torch.from_numpy(self.X_fit_)).ntk
        from .dynamics import mse

        self._Y = torch.from_numpy(np.asarray(Y, dtype=np.float64))
        self._predictor = mse(K, self._Y, diag_reg=float(self.diag_reg))

    def _outputs(self, X) -> np.ndarray:
        check_is_fitted(self, "X_fit_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        if getattr(self, "n_features", None) is not None:
            _, f = self._predictor(float(self.t), self._fm.rows(torch.from_numpy(np.array(X, order="C", copy=True))))
            return f.numpy()
        Kt = self._spec().kernel(torch.from_numpy(np.array(X, order="C", copy=True)), torch.from_numpy(self.X_fit_)).ntk
        _, f = self._predictor(float(self.t), Kt)
        return f.numpy()


class NTKRegressor(RegressorMixin, _NTKBase):
    """Regression with an infinitely wide network trained for time ``t`` (``inf``: kernel regression).

    Args:
        architecture: a :mod:`torchntk.layers` spec ending in one output (its widths do not
            matter); ``None`` means :func:`default_architecture`.
        t: training time of the gradient flow on ``C = (1/(2N)) sum ||f - y||^2`` (``inf`` default).
        diag_reg: ridge ``Theta + diag_reg * mean(diag Theta) * I`` (0 default).
        n_features: None (exact kernel) or ``m``: train on the random features of
            :class:`torchntk.features.FeatureMap` (cost ``N m^2``; a ridge such as
            ``diag_reg=1e-3`` is recommended, see ``docs/features.md``).

    Attributes: ``X_fit_`` (training inputs), ``n_features_in_``.
    """

    def __init__(self, architecture=None, t: float = float("inf"), diag_reg: float = 0.0,
                 n_features: int | None = None) -> None:
        self.architecture = architecture
        self.t = t
        self.diag_reg = diag_reg
        self.n_features = n_features

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def fit(self, X, y) -> "NTKRegressor":
        """Store ``X`` ``(N, d)`` and ``y`` ``(N,)`` or ``(N, O)``; factor the training kernel."""
        X, y = validate_data(self, X, y, dtype=np.float64, multi_output=True, y_numeric=True)
        self._ndim_y = np.ndim(y)
        self._fit_targets(X, y.reshape(len(y), -1))
        return self

    def predict(self, X) -> np.ndarray:
        """``f_t(X)``: ``(M,)`` for 1-D targets, else ``(M, O)``."""
        f = self._outputs(X)
        return f[:, 0] if self._ndim_y == 1 else f


class NTKClassifier(ClassifierMixin, _NTKBase):
    """Classification by regressing one-hot targets with an infinitely wide network (arg-max).

    Args: as :class:`NTKRegressor`. Attributes: ``classes_``, ``X_fit_``, ``n_features_in_``.
    :meth:`decision_function` returns the network outputs ``(M, n_classes)`` (``(M,)`` for two
    classes: output of the second class minus the first).
    """

    def __init__(self, architecture=None, t: float = float("inf"), diag_reg: float = 0.0,
                 n_features: int | None = None) -> None:
        self.architecture = architecture
        self.t = t
        self.diag_reg = diag_reg
        self.n_features = n_features

    def fit(self, X, y) -> "NTKClassifier":
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self._binarizer = LabelBinarizer().fit(y)
        self.classes_ = self._binarizer.classes_
        Y = self._binarizer.transform(y).astype(np.float64)
        if Y.shape[1] == 1:                      # two classes: one-hot with both columns
            Y = np.hstack([1.0 - Y, Y])
        if len(self.classes_) < 2:
            raise ValueError("NTKClassifier needs samples of at least 2 classes, got 1 class")
        self._fit_targets(X, Y)
        return self

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self, "X_fit_")
        f = self._outputs(X)
        return f[:, 1] - f[:, 0] if len(self.classes_) == 2 else f

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "X_fit_")
        return self.classes_[np.argmax(self._outputs(X), axis=1)]
