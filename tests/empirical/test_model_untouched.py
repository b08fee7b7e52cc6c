"""Tied weights: a shared parameter counts once, and ``empirical_ntk`` never modifies the model.

A parameter used in several places (a module applied twice, a module registered under two
names, a weight assigned to two modules) is one coordinate of theta: its tangent feature is the
sum of the gradients of its uses. The reference differentiates the model itself with respect to
``model.parameters()`` (each tensor once) by a loop of ``autograd.grad`` in float64; the
implementations sum the same products in another order, so they agree to a few ulps of the
largest entry (checked at 1e-10 relative to it).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from torchntk.empirical import empirical_ntk, linearize

from ._models import DT, assert_close, brute_ntk

IMPLS = ["auto", "jacobian", "ntvp", "structured", "autograd"]


def _module_twice() -> nn.Module:
    lin = nn.Linear(4, 4)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), lin, nn.Tanh(), lin, nn.Linear(4, 1)).to(DT)


class _Tied(nn.Module):
    """A weight shared by two modules, a module registered under two names, and an eval-mode
    BatchNorm (buffers that must stay as they are)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.c.weight = self.b.weight
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 2)
        self.alias = self.head

    def forward(self, x):
        h = torch.tanh(self.c(torch.tanh(self.b(torch.tanh(self.norm(self.a(x)))))))
        return self.alias(h) + 0.5 * self.head(h)


def _tied() -> nn.Module:
    model = _Tied().to(DT)
    with torch.no_grad():
        model.norm.running_mean.uniform_(-1, 1)
        model.norm.running_var.uniform_(0.5, 2)
    return model.eval()


MODELS = {"module_twice": _module_twice, "tied": _tied}


def _state(model: nn.Module) -> list:
    """Everything a call must leave as it was: parameter objects under every name, their type,
    ``requires_grad``, ``.grad`` and values, buffers, and training flags."""
    params = [
        (n, id(p), type(p), p.requires_grad, None if p.grad is None else p.grad.clone(), p.detach().clone())
        for n, p in model.named_parameters(remove_duplicate=False)
    ]
    buffers = [(n, id(b), b.clone()) for n, b in model.named_buffers(remove_duplicate=False)]
    flags = [(n, m.training) for n, m in model.named_modules(remove_duplicate=False)]
    return [params, buffers, flags]


def _same(a: list, b: list) -> bool:
    def eq(u, v):
        if isinstance(u, torch.Tensor) or isinstance(v, torch.Tensor):
            return isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor) and torch.equal(u, v)
        if isinstance(u, (list, tuple)):
            return len(u) == len(v) and all(eq(s, t) for s, t in zip(u, v))
        return u == v

    return eq(a, b)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", MODELS)
def test_shared_parameters_count_once_and_the_model_is_unchanged(name, impl):
    torch.manual_seed(0)
    model = MODELS[name]()
    x1, x2 = torch.randn(4, 3, dtype=DT), torch.randn(3, 3, dtype=DT)
    model(x1).sum().backward()  # a .grad that the call must keep as it is
    before = _state(model)
    ref, ref_sym = brute_ntk(model, x1, x2), brute_ntk(model, x1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(2):  # a second call sees the model the first one left
            assert_close(empirical_ntk(model, x1, x2, implementation=impl), ref)
            assert_close(empirical_ntk(model, x1, implementation=impl), ref_sym)
            assert _same(_state(model), before)
    model.zero_grad()
    model(x1).sum().backward()  # the shared parameters still receive their gradients
    assert all(p.grad is not None for p in model.parameters())


def test_a_shared_module_is_selected_under_either_name():
    """``params`` may name a module by any of its registered names."""
    torch.manual_seed(0)
    model = _module_twice()
    x = torch.randn(3, 3, dtype=DT)
    ref = brute_ntk(model, x, names=["2.weight", "2.bias"])
    assert_close(empirical_ntk(model, x, params="4"), ref)
    assert_close(empirical_ntk(model, x, params=["4.weight", "2.bias"]), ref)


def test_linearize_of_a_tied_model_keeps_the_ties():
    """The linearized model at theta0 equals the model, and the original is unchanged."""
    torch.manual_seed(0)
    model = _tied()
    before = _state(model)
    lin = linearize(model)
    x = torch.randn(5, 3, dtype=DT)
    torch.testing.assert_close(lin(x), model(x), rtol=0, atol=1e-14)  # f + J 0: rounding only
    assert _same(_state(model), before)
