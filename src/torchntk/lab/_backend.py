"""The lab's bridge to the subpackages below it: specs, kernels and closed-form predictions (private).

The studies only call these few functions, so the lab reads as the data path of the design:
``spec -> module / Theta_inf``, ``module -> empirical Theta``, ``Theta -> predictions``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import jvp

from ..dynamics import mse
from ..empirical import empirical_ntk as _empirical_ntk
from ..empirical._functional import make_functional


def build_module(spec, in_features: int, seed: int, dtype: torch.dtype = torch.float64) -> nn.Module:
    """The finite network of ``spec`` for inputs ``(N, in_features)``, drawn from ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    return spec.module((in_features,), generator=gen, dtype=dtype)


def infinite_ntk(spec, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    """``Theta_inf(x1, x2)``: the scalar ``(N1, N2)`` float64 NTK of the spec."""
    return spec.kernel(x1.double(), None if x2 is None else x2.double()).ntk.double()


def empirical_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    """The network's empirical NTK in ``mode="mean"``: ``(N1, N2)``, the estimate of ``Theta_inf``."""
    return _empirical_ntk(model, x1, x2, mode="mean").detach().double()


def ntk_row_jvp(model: nn.Module, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``Theta(x0, x_j)`` for one probe ``x0`` ``(1, n0)`` and ``x`` ``(M, n0)``, scalar output.

    Two passes instead of ``M`` Jacobian rows: the parameter gradient ``g0`` of ``f(x0)``, then the
    forward-mode derivative of ``f(x)`` along ``g0``: ``Theta(x0, x_j) = J(x_j) . g0``. Memory is
    two copies of the parameters, whatever ``M`` is (the width-10000 network of Fig. 1). The
    parameters are those of ``empirical_ntk`` (every one with ``requires_grad``).
    """
    fm = make_functional(model)

    def f(p, inp):
        return fm(p, inp).sum(-1)

    with torch.enable_grad():
        p = {k: v.clone().requires_grad_(True) for k, v in fm.params.items()}
        g0 = torch.autograd.grad(f(p, x0).sum(), list(p.values()))
    tangents = dict(zip(fm.params.keys(), g0))
    del p
    with torch.no_grad():
        _, row = jvp(lambda q: f(q, x), (fm.params,), (tangents,))
    return row.detach().double()


def mse_predictor(
    ntk_train_train: torch.Tensor,
    y_train: torch.Tensor,
    *,
    f0_train: torch.Tensor | None,
    learning_rate: float | None,
    diag_reg: float = 0.0,
) -> Callable:
    """``torchntk.dynamics.mse``: the closed-form outputs of training with the MSE cost."""
    return mse(ntk_train_train, y_train, f0_train=f0_train, learning_rate=learning_rate, diag_reg=diag_reg)
