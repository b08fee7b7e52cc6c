"""The structured path: which parameters it covers, and exactness where it must fall back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchntk.empirical import empirical_ntk
from torchntk.empirical import _cost, structured
from torchntk.empirical._functional import make_functional

from ._models import assert_close, brute_ntk, models


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


class Reused(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.mid, self.head = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.mid(h))
        return self.head(torch.tanh(self.mid(h)))  # self.mid runs twice


class UsedOutside(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.head = nn.Linear(4, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.head(h) + F.linear(h, self.head.weight) ** 2  # weight also used outside


def _fallback(model, x):
    return structured.probe_layers(make_functional(model), x)[2]


@pytest.mark.parametrize("cls", [Tied, Reused, UsedOutside])
@pytest.mark.parametrize("mode", ["full", "mean"])
def test_shared_or_outside_use_falls_back_and_stays_exact(cls, mode):
    torch.manual_seed(4)
    model = cls().double()
    x1, x2 = torch.randn(4, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    assert _fallback(model, x1)  # something is left to the Jacobian path
    ref = brute_ntk(model, x1, x2, mode)
    assert_close(empirical_ntk(model, x1, x2, mode=mode, implementation="structured"), ref)


def test_coverage():
    cases = models()
    x = cases["tnn_mlp"][1]
    assert _fallback(cases["tnn_mlp"][0], x) == []
    assert _fallback(cases["cnn"][0], cases["cnn"][1]) == []
    assert _fallback(cases["residual_ln"][0], cases["residual_ln"][1]) == []  # LayerNorm is covered
    assert _fallback(Tied().double(), x[:, :3].repeat(1, 2)[:, :4]) == ["a.weight"]
    assert _fallback(UsedOutside().double(), torch.randn(2, 4, dtype=torch.float64)) == ["head.weight"]


@pytest.mark.parametrize("method", ["jw", "pair"])
@pytest.mark.parametrize("mode", ["full", "diagonal", "mean"])
@pytest.mark.parametrize("name", ["cnn", "cnn1d", "tokens"])
def test_both_patch_methods(monkeypatch, method, mode, name):
    monkeypatch.setattr(_cost, "choose_method", lambda sh, *a: "p1" if sh.P == 1 else method)
    model, x1, x2 = models()[name]
    ref = brute_ntk(model, x1, x2, mode)
    assert_close(empirical_ntk(model, x1, x2, mode=mode, implementation="structured"), ref)
    parts = empirical_ntk(model, x1, x2, mode=mode, implementation="structured", per_layer=True)
    assert_close(sum(parts.values()), ref)


@pytest.mark.parametrize("padding_mode", ["zeros", "circular", "reflect", "replicate"])
def test_torch_conv_padding_modes(padding_mode):
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding="same", padding_mode=padding_mode), nn.ReLU(),
        nn.Conv2d(3, 2, 2, stride=2, padding=1, padding_mode=padding_mode), nn.Flatten(), nn.Linear(2 * 9, 2),
    ).double()
    x1, x2 = torch.randn(3, 2, 5, 5, dtype=torch.float64), torch.randn(2, 2, 5, 5, dtype=torch.float64)
    assert _fallback(model, x1) == []
    for mode in ("full", "mean"):
        assert_close(empirical_ntk(model, x1, x2, mode=mode, implementation="structured"), brute_ntk(model, x1, x2, mode))


def _grouped_dilated(dims):
    conv = nn.Conv1d if dims == 1 else nn.Conv2d
    flat = 9 if dims == 1 else 18
    return nn.Sequential(
        conv(4, 6, 3, groups=2, dilation=2, padding=2, stride=2), nn.Tanh(),
        conv(6, 3, 2, groups=3, dilation=2 if dims == 1 else (1, 2), padding_mode="circular"),
        nn.Flatten(), nn.Linear(flat, 2),
    ).double()


@pytest.mark.parametrize("method", ["jw", "pair"])
@pytest.mark.parametrize("dims", [1, 2])
def test_grouped_dilated_strided_convs_are_covered_and_exact(method, dims, monkeypatch):
    """Groups, dilation, stride and padding in the structured path: every parameter covered,
    the kernel equal to brute force by either per-layer method (float64, 1e-10)."""
    torch.manual_seed(6)
    model = _grouped_dilated(dims)
    shape = (4, 9) if dims == 1 else (4, 7, 7)
    x1, x2 = torch.randn(3, *shape, dtype=torch.float64), torch.randn(2, *shape, dtype=torch.float64)
    assert _fallback(model, x1) == []
    monkeypatch.setattr(_cost, "choose_method", lambda *args, **kw: method)
    for mode in ("full", "diagonal", "mean"):
        ref = brute_ntk(model, x1, x2, mode)
        assert_close(empirical_ntk(model, x1, x2, mode=mode, implementation="structured"), ref)
    parts = empirical_ntk(model, x1, mode="mean", implementation="structured", per_layer=True)
    assert set(parts) == {n for n, _ in model.named_parameters()}
    assert_close(sum(parts.values()), brute_ntk(model, x1, mode="mean"))


def test_auto_prefers_structured_for_wide_layers_and_jacobian_without_them():
    from torchntk._memory import DEFAULT_MEMORY
    from torchntk.nn import MLP

    net = MLP(8, [256, 256], 4).double()
    x = torch.randn(16, 8, dtype=torch.float64)
    fm = make_functional(net)
    chosen = _cost.candidates(fm, x, 16, 4, "full", "auto", DEFAULT_MEMORY, False, None)[0][0].backend
    assert chosen.name == "structured"
    norm = nn.Sequential(nn.BatchNorm1d(8), nn.Tanh()).double().eval()  # no covered layer at all
    fm = make_functional(norm)
    chosen = _cost.candidates(fm, x, 16, 8, "mean", "auto", DEFAULT_MEMORY, False, None)[0][0].backend
    assert chosen.name == "jacobian"
    # in "full" mode with many outputs, NTK-vector products need fewer flops than Jacobians
    chosen = _cost.candidates(fm, x, 16, 8, "full", "auto", DEFAULT_MEMORY, False, None)[0][0].backend
    assert chosen.name in ("jacobian", "ntvp")
