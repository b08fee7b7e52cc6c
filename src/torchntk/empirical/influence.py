"""Data attribution by the empirical NTK: how much each training example moves each prediction.

A linearized network ``f(x) = f_0(x) + J(x) (theta - theta_0)`` trained to convergence on the
ridge-regularized MSE, ``sum_i ||f(x_i) - y_i||^2 + lam ||theta - theta_0||^2``, predicts by
kernel ridge regression with the empirical NTK ``K = J J^T`` (or its sketch ``Phi Phi^T``):

    f(x) = f_0(x) + k(x, X) A (y - f_0(X)),     A = (K + lam I)^{-1}

Leaving example ``j`` out and retraining changes the prediction at ``x`` by exactly (the
Sherman-Morrison identity for the ridge solution)

    f(x) - f_{-j}(x) = (k(x, X) A)_j  r_j / (1 - H_jj),     r = y - f(X),  H = K A

which is what :func:`attribution` returns (``loo=True``); ``loo=False`` drops the ``1 / (1 - H_jj)``
factor, the score of TRAK (Park et al. 2023) for the squared loss. With the projected gradients of
:func:`torchntk.empirical.gradient_features` as features, the scores of models with millions of
parameters cost ``N k^2`` instead of ``N P``.
"""

from __future__ import annotations

import torch

from .._checks import check_finite, check_tensor
from ..errors import InvalidArgumentError, ShapeError

__all__ = ["attribution"]


def _features(name: str, phi: object) -> torch.Tensor:
    phi = check_finite(name, check_tensor(name, phi))
    if phi.ndim == 3 and phi.shape[1] == 1:  # gradient_features of a one-output model
        phi = phi[:, 0]
    if phi.ndim != 2:
        raise ShapeError(
            f"`{name}` must be features (N, k) (or (N, 1, k)), got shape {tuple(phi.shape)}; for a model "
            "with several outputs pass the features of the output attributed, phi[:, a]")
    return phi.double()


def attribution(
    features_train: torch.Tensor,
    y_train: torch.Tensor,
    features_test: torch.Tensor,
    *,
    ridge: float,
    f0_train: torch.Tensor | None = None,
    loo: bool = True,
) -> torch.Tensor:
    """Scores ``(M, N)`` or ``(M, N, T)``: the change of each test prediction when each training
    example is left out, ``f(x_m) - f_{-j}(x_m)`` (see the module docstring).

    Args:
        features_train: ``(N, k)`` features of the training examples: the Jacobians ``J`` of one
            output, or their projections ``gradient_features(...)[:, a]`` (``(N, 1, k)`` is
            accepted for a one-output model).
        y_train: targets ``(N,)`` or ``(N, T)``.
        features_test: ``(M, k)`` features of the test examples, from the same projection.
        ridge: ``lam > 0`` of the ridge (the linearized model's weight decay).
        f0_train: the model's outputs at ``theta_0`` on the training examples (``(N,)`` or
            ``(N, T)``), subtracted from the targets; default zero.
        loo: the exact leave-one-out change (True) or TRAK's score without ``1 / (1 - H_jj)``.

    Returns:
        float64 ``(M, N)`` for 1-D targets, else ``(M, N, T)``.

    Example:
        >>> phi = torch.randn(20, 8, dtype=torch.float64); y = torch.randn(20, dtype=torch.float64)
        >>> attribution(phi, y, phi[:3], ridge=0.1).shape
        torch.Size([3, 20])
    """
    tr = _features("features_train", features_train)
    te = _features("features_test", features_test)
    if te.shape[1] != tr.shape[1]:
        raise ShapeError(f"`features_test` has {te.shape[1]} features per example, `features_train` {tr.shape[1]}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge > 0:
        raise InvalidArgumentError(f"`ridge` must be a number > 0, got {ridge!r}")
    y = check_finite("y_train", check_tensor("y_train", y_train)).double()
    squeeze = y.ndim == 1
    y = y.reshape(y.shape[0], -1)
    if y.shape[0] != tr.shape[0]:
        raise ShapeError(f"`y_train` has {y.shape[0]} rows, `features_train` {tr.shape[0]}")
    if f0_train is not None:
        f0 = check_finite("f0_train", check_tensor("f0_train", f0_train)).double().reshape(y.shape[0], -1)
        if f0.shape != y.shape:
            raise ShapeError(f"`f0_train` has shape {tuple(f0.shape)}, the targets {tuple(y.shape)}")
        y = y - f0
    n = tr.shape[0]
    K = tr @ tr.T
    kx = te @ tr.T
    chol = torch.linalg.cholesky(K + ridge * torch.eye(n, dtype=K.dtype, device=K.device))
    A_kxT = torch.cholesky_solve(kx.T, chol)          # A k(X, x): (N, M); (k(x, X) A)_j = A_kxT[j, m]
    alpha = torch.cholesky_solve(y, chol)              # A y
    r = y - K @ alpha                                  # training residuals r = y - f(X)
    if loo:
        # H = K A = I - lam A, so 1 - H_jj = lam A_jj
        a_diag = torch.cholesky_inverse(chol).diagonal()
        r = r / (ridge * a_diag)[:, None]
    scores = A_kxT.T[:, :, None] * r[None, :, :]       # (M, N, T)
    return scores[..., 0] if squeeze else scores
