"""scikit-learn estimators: an infinitely wide network trained by gradient flow on the MSE cost,
with its hyperparameters fitted by marginal likelihood.

:class:`NTKRegressor` and :class:`NTKClassifier` predict what an infinitely wide network of
the given architecture (a :mod:`torchntk.layers` spec) outputs after training for time ``t`` on
``C = (1/(2N)) sum ||f - y||^2``, averaged over initializations (``f_0 = 0``)::

    f_t(x) = Theta(x, X) Theta_r^{-1} (I - exp(-t Theta_r / N)) y,     t = inf: Theta(x, X) Theta_r^{-1} y

with ``Theta`` the infinite-width NTK (``spec.kernel(...).ntk``, float64) and
``Theta_r = Theta + diag_reg * mean(diag Theta) * I``. By default the architecture is a ReLU
network (:func:`default_architecture`) whose ``W_std``, ``b_std``, depth (2 to 4 Dense layers)
and ``diag_reg`` are chosen by maximizing the log marginal likelihood of the NTK-GP (prior
``Theta``, noise ``sigma^2 = diag_reg * mean(diag Theta)``, :func:`torchntk.gp.fit`); any of them
given by the user stays fixed. The regressor centres and scales the targets first
(``normalize_y``); the classifier regresses centred one-hot targets and predicts the arg-max.
scikit-learn is needed only to use these classes.

Example:
    >>> from torchntk.sklearn import NTKRegressor
    >>> X = np.random.default_rng(0).normal(size=(50, 3)); y = np.sin(X[:, 0])
    >>> reg = NTKRegressor().fit(X, y)
    >>> reg.predict(X[:2]).shape, reg.depth_ in (2, 3, 4)
    ((2,), True)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .errors import InvalidArgumentError, ShapeError, SpecError
from .layers import Flatten, mlp, serial

__all__ = ["NTKRegressor", "NTKClassifier", "default_architecture"]

#: Depths (Dense layers: 1 to 3 hidden ReLU layers) tried when ``depth`` is None; initial values of the fitted ones.
DEPTHS = (2, 3, 4)
_INIT = {"W_std": 1.0, "b_std": 0.1}
#: Relative tolerance of the hyperparameter fit (differences below it do not change predictions).
_TOL = 1e-7
#: Training points on which the hyperparameters are searched (a fixed random subset beyond it).
_FIT_SAMPLES = 256
#: Rows of test points whose kernels are computed at once (bounds the memory of predict_proba).
_BLOCK = 256
#: Gauss-Hermite nodes of the class probabilities (exact to ~1e-12 for these smooth integrands).
_NODES = 64


def default_architecture(depth: int = 3, W_std=1.0, b_std=0.1):
    """The ReLU network of the theory, ``layers.mlp(512, depth)``: ``depth`` Dense layers
    (``depth - 1`` hidden ReLU layers and the readout), all with the same ``W_std`` and ``b_std``
    (numbers or 0-dim tensors).

    The width in the spec does not change the infinite-width kernel.
    """
    return mlp(512, depth, 1, W_std=W_std, b_std=b_std)


def _positive_or_none(name: str, value, *, integer: bool = False, zero: bool = False) -> None:
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if zero else value > 0) and (not integer or isinstance(value, int))
    if not ok:
        kind = "an int >= 1" if integer else ("a number >= 0" if zero else "a number > 0")
        raise InvalidArgumentError(f"`{name}` must be None (fitted) or {kind}, got {value!r}")


def _input_shape(value) -> tuple[int, ...] | None:
    """``input_shape`` as a tuple of positive ints (or None)."""
    if value is None:
        return None
    shape = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        shape = tuple(shape)
    except TypeError:
        shape = None
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise InvalidArgumentError(
            f"`input_shape` must be None or a tuple of positive ints (one example's shape, e.g. "
            f"(1, 8, 8) for 8x8 grey images), got {value!r}")
    return shape


class _NTKBase(BaseEstimator):
    def _check_params(self) -> None:
        t = self.t
        if not isinstance(t, (int, float)) or isinstance(t, bool) or math.isnan(t) or t < 0:
            raise InvalidArgumentError(f"`t` must be a number >= 0 (or inf), got {t!r}")
        _positive_or_none("diag_reg", self.diag_reg, zero=True)
        _positive_or_none("W_std", self.W_std, zero=True)
        _positive_or_none("b_std", self.b_std, zero=True)
        _positive_or_none("depth", self.depth, integer=True)
        if self.architecture is not None and any(v is not None for v in (self.W_std, self.b_std, self.depth)):
            raise InvalidArgumentError("give either `architecture` (a fixed spec) or W_std/b_std/depth, not both")
        _input_shape(self.input_shape)

    def _validate(self, X, y=None, *, reset: bool, **kwargs):
        """``X`` as float64 examples of the kernel's per-example shape ``(N, *input_shape)``.

        ``X`` is a 2-D array ``(N, d)`` (each row one example, reshaped to ``input_shape`` when that
        is given: ``d == prod(input_shape)``) or an N-d array ``(N, *shape)`` of whole examples.
        ``n_features_in_`` counts ``X.shape[1]`` as scikit-learn does.
        """
        shape = _input_shape(self.input_shape)
        args = (X,) if y is None else (X, y)
        out = validate_data(self, *args, reset=reset, dtype=np.float64, allow_nd=True, **kwargs)
        X = out if y is None else out[0]
        if shape is not None:
            if X.ndim == 2 and X.shape[1] == math.prod(shape):
                X = X.reshape(len(X), *shape)
            elif tuple(X.shape[1:]) != shape:
                raise ShapeError(f"`X` has examples of shape {tuple(X.shape[1:])}, but input_shape={shape} "
                                 f"was given (flat rows of {math.prod(shape)} values or arrays of that shape)")
        if not reset and tuple(X.shape[1:]) != self._example_shape:
            raise ShapeError(f"`X` has examples of shape {tuple(X.shape[1:])}; the estimator was fitted on "
                             f"examples of shape {self._example_shape}")
        return X if y is None else (X, out[1])

    def _check_architecture(self, spec, shape: tuple[int, ...]) -> None:
        """Raise a SpecError that points at ``input_shape`` when ``spec`` cannot take the examples."""
        try:
            spec.output_shape(shape)
        except SpecError as err:
            hint = ("; pass input_shape=(C, H, W) (or (C, L)) so that flat rows are reshaped into images "
                    "or sequences" if len(shape) == 1 else "")
            raise SpecError(f"`architecture` cannot take examples of shape {shape} ({err}){hint}") from None

    def _fit_targets(self, X, Y) -> None:
        """Fit the hyperparameters to ``(X, Y)`` (``Y`` ``(N, O)``, already centred) and factor."""
        from . import gp
        from .dynamics import ensemble, mse

        self._check_params()
        self.X_fit_ = np.array(X, dtype=np.float64, order="C", copy=True)
        x = torch.from_numpy(self.X_fit_)
        Yt = torch.from_numpy(np.ascontiguousarray(Y, dtype=np.float64))
        user = self.architecture is not None
        fixed = {} if user else {n: getattr(self, n) for n in _INIT if getattr(self, n) is not None}
        free = {} if user else {n: v for n, v in _INIT.items() if n not in fixed}

        self._example_shape = tuple(self.X_fit_.shape[1:])
        flat = len(self._example_shape) > 1  # the default (fully connected) network sees the flattened example

        def build(depth=None, **params):
            if user:
                return self.architecture
            spec = default_architecture(self.depth if depth is None else depth, **fixed, **params)
            return serial(Flatten(), spec) if flat else spec

        if user:
            self._check_architecture(self.architecture, self._example_shape)

        depths = None if user or self.depth is not None else DEPTHS
        if free or self.diag_reg is None or depths is not None:
            sub = np.arange(len(x))
            if len(x) > _FIT_SAMPLES:  # the search runs on a fixed random subset (cost ~ N^2 per step)
                sub = np.sort(np.random.default_rng(0).choice(len(x), _FIT_SAMPLES, replace=False))
            res = gp.fit(build, x[sub], Yt[sub], free, kind="ntk", noise=self.diag_reg,
                         fit_noise=self.diag_reg is None, relative_noise=True, depths=depths, restarts=0,
                         max_iter=50, tol=_TOL)
            spec, params = res.spec, res.params
            depth = self.depth if res.depth is None else res.depth
            ratio = res.noise / float(gp.spec_kernel(spec, x[sub], kind="ntk").diagonal().mean())
        else:
            spec, depth, params, ratio = build(), self.depth, {}, float(self.diag_reg)
        self.diag_reg_ = float(self.diag_reg) if self.diag_reg is not None else ratio
        self._fm = None
        if getattr(self, "n_features", None) is not None:  # random features: m x m instead of N x N
            from . import features

            self._fm = features.FeatureMap(spec, int(self.n_features), seed=0)
            self._predictor = features.mse(self._fm.rows(x), Yt, diag_reg=self.diag_reg_)
            xs = x[:_FIT_SAMPLES]  # the likelihood on (at most) the points of the search
            k = gp.spec_kernel(spec, xs, kind="ntk")
            lml = float(gp.log_marginal_likelihood(k, Yt[:_FIT_SAMPLES], self.diag_reg_ * float(k.diagonal().mean())))
            self._finish(spec, params, fixed, user, depth, lml)
            return
        K = gp.spec_kernel(spec, x, kind="ntk")
        scale = float(K.diagonal().mean())
        lml = float(gp.log_marginal_likelihood(K, Yt, self.diag_reg_ * scale))
        self._finish(spec, params, fixed, user, depth, lml)
        self._noise = self.diag_reg_ * scale
        self._Y = Yt
        self._predictor = mse(K, Yt, diag_reg=self.diag_reg_)
        self._ensemble = ensemble(K, K, Yt, diag_reg=self.diag_reg_)

    def _finish(self, spec, params, fixed, user, depth, lml) -> None:
        self.spec_ = spec
        self.W_std_ = None if user else float(params.get("W_std", fixed.get("W_std", 0.0)))
        self.b_std_ = None if user else float(params.get("b_std", fixed.get("b_std", 0.0)))
        self.depth_ = None if user else int(depth)
        self.log_marginal_likelihood_ = lml
        self.t_ = float(self.t)

    def _kernels(self, X):
        """Validated test inputs, in blocks: ``(Theta(x, X_fit), x)`` pairs."""
        check_is_fitted(self, "X_fit_")
        X = self._validate(X, reset=False)
        xs = torch.from_numpy(np.array(X, order="C", copy=True))
        train = torch.from_numpy(self.X_fit_)
        for i in range(0, xs.shape[0], _BLOCK):
            xb = xs[i:i + _BLOCK]
            yield (self._fm.rows(xb) if self._fm is not None else self.spec_.kernel(xb, train).ntk), xb

    def _outputs(self, X) -> np.ndarray:
        parts = [self._predictor(self.t_, kt)[1] for kt, _ in self._kernels(X)]
        return torch.cat(parts).numpy()

    def _outputs_and_variance(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Mean outputs ``(M, O)`` and the variance ``(M,)`` of one noisy output (ensemble + noise)."""
        if self._fm is not None:
            raise InvalidArgumentError("predict_proba needs the exact kernel: refit with n_features=None")
        means, variances = [], []
        for kt, xb in self._kernels(X):
            means.append(self._predictor(self.t_, kt)[1])
            kbb = self.spec_.kernel(xb).ntk
            g = self._ensemble(self.t_, kind="ntk", nngp_test_train=kt, ntk_test_train=kt, nngp_test_test=kbb)
            variances.append(torch.diagonal(g.covariance).clamp_min(0.0) + self._noise)
        return torch.cat(means).numpy(), torch.cat(variances).numpy()


_PARAMS_DOC = """
    Args:
        architecture: a fixed :mod:`torchntk.layers` spec ending in one output (its widths do
            not matter), or ``None`` for :func:`default_architecture` with fitted or given
            ``W_std``, ``b_std``, ``depth``.
        W_std, b_std: of every Dense layer of the default architecture; ``None``: fitted.
        depth: Dense layers of the default architecture; ``None``: the best of 2, 3, 4.
        t: training time of the gradient flow on ``C = (1/(2N)) sum ||f - y||^2`` (``inf`` default).
        diag_reg: ridge ``Theta + diag_reg * mean(diag Theta) * I`` (the GP noise); ``None``: fitted.
        n_features: None (exact kernel) or ``m``: after the hyperparameter search, train on the
            random features of :class:`torchntk.features.FeatureMap` (cost ``N m^2``; see
            ``docs/features.md``); ``log_marginal_likelihood_`` is then that of the first 256
            points, and ``predict_proba`` needs the exact kernel.
        input_shape: one example's shape for the kernel, e.g. ``(1, 8, 8)`` for a CNN spec on
            8x8 grey images or ``(C, L)`` for sequences: 2-D ``X`` rows are reshaped to it.
            ``None``: the examples are ``X.shape[1:]`` (N-d arrays are accepted as they are; the
            default fully connected architecture then sees the flattened example,
            ``serial(Flatten(), ...)``, whose kernel equals that of the flat rows).

    Fitted attributes: ``W_std_``, ``b_std_``, ``depth_`` (``None`` with a user architecture),
    ``diag_reg_``, ``log_marginal_likelihood_`` (of the NTK-GP on all the transformed training
    targets, summed over outputs; the search itself uses a fixed random subset of at most 256
    training points), ``spec_`` (the fitted spec), ``X_fit_``, ``n_features_in_``.
    Changing a parameter after ``fit`` (``set_params``) takes effect at the next ``fit``.
"""


class NTKRegressor(RegressorMixin, _NTKBase):
    __doc__ = ("Regression with an infinitely wide network trained for time ``t`` (``inf``: kernel "
               "regression), hyperparameters fitted by marginal likelihood.\n" + _PARAMS_DOC + """
        normalize_y: subtract the mean and divide by the standard deviation of each target
            before fitting (the GP prior has zero mean); predictions are mapped back.
    """)

    def __init__(self, architecture=None, t: float = float("inf"), diag_reg: float | None = None,
                 W_std: float | None = None, b_std: float | None = None, depth: int | None = None,
                 normalize_y: bool = True, n_features: int | None = None,
                 input_shape: tuple[int, ...] | None = None) -> None:
        self.architecture = architecture
        self.t = t
        self.diag_reg = diag_reg
        self.W_std = W_std
        self.b_std = b_std
        self.depth = depth
        self.normalize_y = normalize_y
        self.n_features = n_features
        self.input_shape = input_shape

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def fit(self, X, y) -> "NTKRegressor":
        """Fit the hyperparameters and factor the training kernel: ``X`` ``(N, d)``, ``y`` ``(N,)`` or ``(N, O)``."""
        X, y = self._validate(X, y, reset=True, multi_output=True, y_numeric=True)
        self._ndim_y = np.ndim(y)
        Y = y.reshape(len(y), -1)
        if self.normalize_y:
            self._y_mean = Y.mean(axis=0)
            std = Y.std(axis=0)
            self._y_std = np.where(std > 0, std, 1.0)
        else:
            self._y_mean, self._y_std = np.zeros(Y.shape[1]), np.ones(Y.shape[1])
        self._fit_targets(X, (Y - self._y_mean) / self._y_std)
        return self

    def predict(self, X) -> np.ndarray:
        """``f_t(X)``: ``(M,)`` for 1-D targets, else ``(M, O)``."""
        check_is_fitted(self, "X_fit_")
        f = self._outputs(X) * self._y_std + self._y_mean
        return f[:, 0] if self._ndim_y == 1 else f


class NTKClassifier(ClassifierMixin, _NTKBase):
    __doc__ = ("Classification by regressing centred one-hot targets with an infinitely wide network "
               "(arg-max), hyperparameters fitted by marginal likelihood.\n" + _PARAMS_DOC + """
    :meth:`decision_function` returns the predicted one-hot values ``(M, n_classes)`` (``(M,)``
    for two classes: second minus first). :meth:`predict_proba` is the probability that each
    class has the largest output when the outputs are independent Gaussians with these means
    and the variance of the ensemble of trained networks (:func:`torchntk.dynamics.ensemble`
    with prior ``Theta``) plus the fitted noise: calibrated as far as the Gaussian model of
    one-hot targets holds (no temperature or link function is fitted); its arg-max is
    :meth:`predict`.
    """)

    def __init__(self, architecture=None, t: float = float("inf"), diag_reg: float | None = None,
                 W_std: float | None = None, b_std: float | None = None, depth: int | None = None,
                 n_features: int | None = None, input_shape: tuple[int, ...] | None = None) -> None:
        self.architecture = architecture
        self.t = t
        self.diag_reg = diag_reg
        self.W_std = W_std
        self.b_std = b_std
        self.depth = depth
        self.n_features = n_features
        self.input_shape = input_shape

    def fit(self, X, y) -> "NTKClassifier":
        """Fit the hyperparameters on the centred one-hot targets of ``y`` and factor the kernel."""
        X, y = self._validate(X, y, reset=True)
        check_classification_targets(y)
        self._binarizer = LabelBinarizer().fit(y)
        self.classes_ = self._binarizer.classes_
        if len(self.classes_) < 2:
            raise InvalidArgumentError("`y` must hold samples of at least 2 classes for NTKClassifier, got 1 class")
        Y = self._binarizer.transform(y).astype(np.float64)
        if Y.shape[1] == 1:                      # two classes: one-hot with both columns
            Y = np.hstack([1.0 - Y, Y])
        self._y_mean = Y.mean(axis=0)
        self._fit_targets(X, Y - self._y_mean)
        return self

    def _scores(self, X) -> np.ndarray:
        return self._outputs(X) + self._y_mean

    def decision_function(self, X) -> np.ndarray:
        """Predicted one-hot values ``(M, C)``; ``(M,)`` (second minus first) for two classes."""
        check_is_fitted(self, "X_fit_")
        f = self._scores(X)
        return f[:, 1] - f[:, 0] if len(self.classes_) == 2 else f

    def predict(self, X) -> np.ndarray:
        """The class of the largest predicted one-hot value."""
        check_is_fitted(self, "X_fit_")
        return self.classes_[np.argmax(self._scores(X), axis=1)]

    def predict_proba(self, X) -> np.ndarray:
        """``P(f_c = max_c' f_c')`` for independent ``f_c ~ N(m_c, v)`` (see the class docstring):

            P_c = E_z[ prod_{c' != c} Phi((m_c - m_c') / sqrt(v) + z) ],   z ~ N(0, 1)

        by Gauss-Hermite quadrature in ``z``; rows sum to 1. Shape ``(M, n_classes)``.
        """
        from scipy.special import log_ndtr, roots_hermitenorm

        check_is_fitted(self, "X_fit_")
        mean, var = self._outputs_and_variance(X)
        mean = mean + self._y_mean
        sd = np.sqrt(np.maximum(var, 1e-300))[:, None, None]
        z, w = roots_hermitenorm(_NODES)
        w = w / w.sum()
        gap = (mean[:, :, None] - mean[:, None, :]) / sd          # (M, C, C'): (m_c - m_c') / sd
        logs = log_ndtr(gap[..., None] + z)                       # (M, C, C', nodes)
        c = mean.shape[1]
        logs[:, np.arange(c), np.arange(c), :] = 0.0              # leave out c' = c
        p = np.exp(logs.sum(axis=2)) @ w                          # (M, C)
        return p / p.sum(axis=1, keepdims=True)
