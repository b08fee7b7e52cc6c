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
from torch.func import jvp

from ..errors import InvalidArgumentError
from ._functional import Functional, OutputSelector, ParamSelector, make_functional, parameter_slots


class Linearized(nn.Module):
    """``f(theta0, x) + J(x)(theta - theta0)`` as a module whose parameters are ``theta``.

    Attributes:
        model: a private copy of the model; its parameters are the trainable ``theta``
            (those selected by ``params``: by default the ones with ``requires_grad``; the
            others stay fixed at their values).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> lin = linearize(net)
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(lin(x), net(x))      # equal at theta = theta0
        True
    """

    def __init__(self, model: nn.Module, params: ParamSelector = None, output: OutputSelector = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise InvalidArgumentError(f"`model` must be an nn.Module, got {type(model).__name__}")
        self._output = make_functional(model, params, output).output  # checks state, params, output
        self.model = copy.deepcopy(model)
        self._names = list(make_functional(self.model, params).params)
        for n, p in self.model.named_parameters():
            p.requires_grad_(n in self._names)
        self._slots = parameter_slots(self.model)  # the copy's tied parameters, found once
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
        fm = Functional(params=theta0, module=self.model, output=self._output, slots=self._slots)
        out0, dout = jvp(lambda p: fm.raw_call(p, x), (theta0,), (delta,))
        return out0 + dout


def linearize(model: nn.Module, params: ParamSelector = None, output: OutputSelector = None) -> Linearized:
    """The linearized model ``f(theta0, x) + J(x)(theta - theta0)`` around the current parameters.

    The result is an ``nn.Module``: train its ``parameters()`` with any optimizer. At
    ``theta = theta0`` it equals ``model``; its NTK is the empirical NTK of ``model`` at
    ``theta0`` for every ``theta``. The model must be deterministic (``model.eval()`` with
    BatchNorm or Dropout).

    Args:
        model: the network.
        params: which parameters are ``theta`` (as in :func:`empirical_ntk`: ``None`` for every
            parameter with ``requires_grad``, names, or a predicate); the others stay fixed.
        output: which tensor of the model's output to linearize (as in :func:`empirical_ntk`):
            the linearized module returns that tensor.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        >>> lin = linearize(net)
        >>> opt = torch.optim.SGD(lin.parameters(), lr=0.1)
        >>> loss = lin(torch.randn(8, 2)).pow(2).mean()
        >>> loss.backward(); opt.step()
    """
    return Linearized(model, params, output)
