"""``linearize(model)``: the first-order Taylor expansion of a model around its parameters.

    f_lin(theta, x) = f(theta0, x) + J(x) (theta - theta0),     J(x) = df(theta0, x)/dtheta

The returned module owns trainable parameters ``theta`` (a copy of the model, initialized at
``theta0``) and keeps ``theta0`` frozen; its forward pass evaluates ``f`` and ``J(x) (theta -
theta0)`` together with one forward-mode product (``torch.func.jvp``), which is differentiable
in ``theta``, so any optimizer trains it. Trained by gradient descent on the MSE it follows the
kernel dynamics of the empirical NTK at ``theta0`` exactly (CONVENTIONS section 4).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, jvp

from ..errors import InvalidArgumentError
from ._functional import check_deterministic


class Linearized(nn.Module):
    """``f(theta0, x) + J(x)(theta - theta0)`` as a module whose parameters are ``theta``.

    Attributes:
        model: a private copy of the model; its parameters are the trainable ``theta``
            (only those with ``requires_grad``; the others stay fixed at their values).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> lin = linearize(net)
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(lin(x), net(x))      # equal at theta = theta0
        True
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise InvalidArgumentError(f"`model` must be an nn.Module, got {type(model).__name__}")
        check_deterministic(model)
        self.model = copy.deepcopy(model)
        self._names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if not self._names:
            raise InvalidArgumentError("`model` has no trainable parameters (requires_grad=True) to linearize")
        self._theta0 = nn.Module()  # buffers p0, p1, ...: theta0, moved by .to() and saved in state_dict
        params = dict(self.model.named_parameters())
        for k, n in enumerate(self._names):
            self._theta0.register_buffer(f"p{k}", params[n].detach().clone())

    def theta0(self) -> dict[str, torch.Tensor]:
        """The expansion point ``{name: tensor}`` (names as in ``model.named_parameters()``)."""
        return {n: getattr(self._theta0, f"p{k}") for k, n in enumerate(self._names)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = dict(self.model.named_parameters())
        theta0 = self.theta0()
        delta = {n: params[n] - theta0[n] for n in self._names}

        def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(self.model, p, (x,))

        out0, dout = jvp(f, (theta0,), (delta,))
        return out0 + dout


def linearize(model: nn.Module) -> Linearized:
    """The linearized model ``f(theta0, x) + J(x)(theta - theta0)`` around the current parameters.

    The result is an ``nn.Module``: train its ``parameters()`` with any optimizer. At
    ``theta = theta0`` it equals ``model``; its NTK is the empirical NTK of ``model`` at
    ``theta0`` for every ``theta``. The model must be deterministic (``model.eval()`` with
    BatchNorm or Dropout).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        >>> lin = linearize(net)
        >>> opt = torch.optim.SGD(lin.parameters(), lr=0.1)
        >>> loss = lin(torch.randn(8, 2)).pow(2).mean()
        >>> loss.backward(); opt.step()
    """
    return Linearized(model)
