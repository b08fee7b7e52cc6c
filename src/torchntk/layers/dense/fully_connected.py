"""``Dense``: the fully connected layer of the spec (on the channel axis of spatial inputs).

NTK parameterization (default), for an input kernel ``(Sigma, Theta)`` of fan-in ``n``:

    Sigma' = W_std^2 Sigma + b_std^2,       Theta' = W_std^2 Theta + Sigma'

Standard parameterization (``W ~ N(0, W_std^2 / n)``, ``b ~ N(0, b_std^2)``, ``z = W a + b``):
the same ``Sigma'``, but the gradient with respect to the weights is ``a`` itself (not
``a W_std / sqrt(n)``), so its contribution is ``sum_j a_j a'_j = n Sigma`` and the bias's is 1:

    Theta' = W_std^2 Theta + n Sigma + [has bias]

which grows with the width ``n`` of the previous layer: the spec's finite widths enter here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ... import nn as tnn
from ...nn import _init
from ..._checks import check_choice, check_hyper, check_int, is_one, value_of
from .._core.protocol import Layer, Shapes, single
from .._core.kernel import Kernel
from .._core.supports import Supports

__all__ = ["Dense"]


def affine(
    k: Kernel,
    W_std: float,
    b_std: float | None,
    fan_in: int,
    parameterization: str,
    *,
    out_shape: tuple[int, ...],
    fresh: bool = False,
) -> Kernel:
    """The affine step shared by Dense and Conv (after Conv's spatial averaging of ``k``).

    ``fresh``: the tensors of ``k`` belong to the caller alone and may be overwritten (saves
    memory passes; ignored while autograd records).
    """
    w2 = W_std**2
    b2 = 0.0 if b_std is None else b_std**2
    has_bias = value_of(b_std) not in (None, 0.0)
    tracked = isinstance(W_std, torch.Tensor) or isinstance(b_std, torch.Tensor)
    inplace = fresh and not tracked and not (torch.is_grad_enabled() and k.nngp.requires_grad)

    def aff(c: torch.Tensor | None) -> torch.Tensor | None:
        if c is None:
            return None
        if inplace:
            if not is_one(w2, 1.0):
                c.mul_(w2)
            return c if is_one(b2, 0.0) else c.add_(b2)
        out = c if is_one(w2, 1.0) else c * w2
        return out if is_one(b2, 0.0) else out + b2

    def scaled_ntk(nngp_part: torch.Tensor) -> torch.Tensor:
        # nngp_part + W_std^2 Theta (a tensor W_std cannot be torch.add's alpha)
        if isinstance(w2, torch.Tensor):
            return nngp_part + w2 * k.ntk
        return torch.add(nngp_part, k.ntk, alpha=w2)

    ntk = None
    if k.ntk is not None:
        if parameterization == "standard":
            # Theta' = W_std^2 Theta + fan_in Sigma + [bias]   (Sigma before the affine step)
            ntk = scaled_ntk(k.nngp * float(fan_in))
            if has_bias:
                ntk = ntk.add_(1.0)
    nngp = aff(k.nngp)
    if k.ntk is not None and parameterization == "ntk":
        # Theta' = W_std^2 Theta + Sigma'
        if inplace:
            ntk = k.ntk.mul_(w2).add_(nngp) if w2 != 1.0 else k.ntk.add_(nngp)
        else:
            ntk = scaled_ntk(nngp)
    return k.replace(
        nngp=nngp, ntk=ntk, cov1=aff(k.cov1), cov2=aff(k.cov2), shape=out_shape, is_gaussian=True, is_input=False
    )


def check_affine_args(
    who: str, W_std: Any, b_std: Any, parameterization: str
) -> tuple[float | torch.Tensor, float | torch.Tensor | None, str]:
    """Validate ``W_std``/``b_std``/``parameterization`` at spec construction (as torchntk.nn).

    Returns ``(W_std, b_std, parameterization)``: floats, or the 0-dim tensors given (kernels are
    then differentiable in them); ``b_std`` may be ``None``; ``parameterization`` (any case) in
    the spelling of :data:`torchntk.nn._init.PARAMETERIZATIONS`.
    """
    W_std = check_hyper("W_std", W_std, minimum=0.0, who=who)
    b_std = check_hyper("b_std", b_std, minimum=0.0, allow_none=True, who=who)
    parameterization = check_choice("parameterization", parameterization, _init.PARAMETERIZATIONS, any_case=True, who=who)
    return W_std, b_std, parameterization


class _ChannelLinear(nn.Module):
    """A Linear layer on axis 1 of ``(N, C, *spatial)`` (per pixel, shared weights)."""

    def __init__(self, linear: tnn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.movedim(1, -1)).movedim(-1, 1)


class Dense(Layer):
    """Fully connected layer ``z = (W_std / sqrt(n)) W a + b_std b`` with ``out_dim`` units.

    On a flat input ``(N, n)`` it is :class:`torchntk.nn.Linear`; on a spatial input
    ``(N, C, *spatial)`` it acts on the channel axis at every pixel (a 1x1 convolution).

    Args:
        out_dim: width of the finite network's layer (the kernel does not depend on it in NTK
            parameterization).
        W_std: weight factor; b_std: bias factor (``None``/0: no bias). Numbers or 0-dim
            tensors: the kernel is differentiable in tensors (the module takes their values).
        parameterization: ``"ntk"`` or ``"standard"`` (see the module docstring for its NTK).

    Example:
        >>> from torchntk import layers as L
        >>> k = L.Dense(10, W_std=1.5, b_std=0.1).kernel(torch.ones(2, 4))
        >>> round(float(k.nngp[0, 1]), 4)  # 1.5**2 * 1 + 0.1**2
        2.26
    """

    supports = Supports(masks=True, features="dense")

    def __init__(
        self, out_dim: int, W_std: float = 1.0, b_std: float | None = None, parameterization: str = "ntk"
    ) -> None:
        out_dim = check_int("out_dim", out_dim, minimum=1, who="Dense")
        W_std, b_std, parameterization = check_affine_args("Dense", W_std, b_std, parameterization)
        self.out_dim, self.W_std, self.b_std, self.parameterization = out_dim, W_std, b_std, parameterization

    def __repr__(self) -> str:
        return f"Dense({self.out_dim}, W_std={self.W_std}, b_std={self.b_std}, parameterization={self.parameterization!r})"

    def output_shape(self, input_shape: Shapes) -> Shapes:
        shape = single(self, input_shape)
        return (self.out_dim, *shape[1:])

    def kernel_rule(self, k: Kernel) -> Kernel:
        out = self.output_shape(k.shape)
        return affine(k, self.W_std, self.b_std, k.shape[0], self.parameterization, out_shape=out)

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        shape = single(self, input_shape)
        lin = tnn.Linear(
            shape[0], self.out_dim, value_of(self.W_std), value_of(self.b_std), self.parameterization,
            generator=generator, dtype=dtype, device=device,
        )
        return lin if len(shape) == 1 else _ChannelLinear(lin)
