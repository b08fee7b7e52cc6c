"""``from_module`` follows the data flow of the model: reused modules, sums of correlated
branches, functional and in-place calls, shapes the model can run, one tensor output.

The right kernel is the hand-written spec of the same network (same closed forms: only
rounding differs) or, for what the rules were wrong about, Monte Carlo of the real model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchntk import layers as L
from torchntk.errors import InvalidArgumentError, ShapeError, SpecError, UnsupportedLayerError

D = torch.float64


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def _assert_same(spec: L.Layer, hand: L.Layer, x: torch.Tensor) -> None:
    # The same rules on the same numbers; a scale applied after an affine step instead of inside
    # it rounds differently (a few ulps), which the well-conditioned rules keep far below 1e-12.
    ours, ref = spec.kernel(x), hand.kernel(x)
    torch.testing.assert_close(ours.nngp, ref.nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours.ntk, ref.ntk, rtol=1e-12, atol=1e-14)


class _Net(nn.Module):
    """``out(body(a(x)))`` with ``body`` given per test."""

    def __init__(self, body, w: int = 16) -> None:
        super().__init__()
        self.a, self.b, self.c, self.out = nn.Linear(3, w), nn.Linear(w, w), nn.Linear(w, w), nn.Linear(w, 1)
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self, self.a(x)))


def _inplace(self, h):
    y = F.relu(h, inplace=True)  # h now holds relu(h) too
    return y + h


W, B = 1.3, 0.1
FLOWS = {
    # h + h is 2h (Sigma' = 4 Sigma), not two independent copies
    "h+h": (lambda self, h: torch.relu(h + h),
            L.serial(L.Dense(16, 2 * W, 2 * B), L.Relu(), L.Dense(1, W, B))),
    # F.relu(h, inplace=True) changes h: y + h is 2 relu(h)
    "inplace": (_inplace, L.serial(L.Dense(16, W, B), L.Relu(), L.Dense(1, 2 * W, B))),
    "method-and-kwargs": (lambda self, h: F.silu(self.c(F.leaky_relu(self.b(h.relu()), 0.2))),
                          L.serial(L.Dense(16, W, B), L.Relu(), L.Dense(16, W, B), L.LeakyRelu(0.2), L.Dense(16, W, B),
                                   L.Elementwise(F.silu), L.Dense(1, W, B))),
    "gelu-tanh-default-kwargs": (lambda self, h: torch.tanh(self.b(F.gelu(h, approximate="none"))),
                                 L.serial(L.Dense(16, W, B), L.Gelu(), L.Dense(16, W, B), L.Elementwise(torch.tanh),
                                          L.Dense(1, W, B))),
    # the residual block of issue 22 written with F.relu
    "residual-F.relu": (lambda self, h: F.relu(h + self.b(F.relu(h, inplace=False))),
                        L.serial(L.Dense(16, W, B), L.FanOut(2), L.parallel(L.Identity(), L.serial(L.Relu(), L.Dense(16, W, B))),
                                 L.FanInSum(), L.Relu(), L.Dense(1, W, B))),
    "negated-input-of-a-branch": (lambda self, h: torch.relu(h + self.b(-h)),
                                  L.serial(L.Dense(16, W, B), L.FanOut(2), L.parallel(L.Identity(), L.Dense(16, W, B)),
                                           L.FanInSum(), L.Relu(), L.Dense(1, W, B))),
    "scaled-residual": (lambda self, h: torch.relu(h - 0.5 * self.b(torch.relu(h)) / 2),
                        L.serial(L.Dense(16, W, B), L.FanOut(2),
                                 L.parallel(L.Identity(), L.serial(L.Relu(), L.Dense(16, W / 4, B / 4))),
                                 L.FanInSum(), L.Relu(), L.Dense(1, W, B))),
}


@pytest.mark.parametrize("case", list(FLOWS))
def test_traced_flows_equal_the_hand_written_spec(case):
    body, hand = FLOWS[case]
    _assert_same(L.from_module(_Net(body), W_std=W, b_std=B), hand, _randn(5, 3, seed=1))


def test_a_reused_stateless_module_is_applied_at_every_place():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 16), relu, nn.Linear(16, 16), relu, nn.Linear(16, 1))
    hand = L.serial(L.Dense(16, W, B), L.Relu(), L.Dense(16, W, B), L.Relu(), L.Dense(1, W, B))
    _assert_same(L.from_module(model, W_std=W, b_std=B), hand, _randn(5, 3, seed=2))


@pytest.mark.parametrize("call", [lambda h: torch.relu_(h), lambda h: h.relu_(), lambda h: F.relu_(h)],
                         ids=["torch.relu_", "h.relu_", "F.relu_"])
def test_inplace_functions_and_methods_are_followed(call):
    def body(self, h):
        y = call(h)
        return y + h  # both are relu(h)

    hand = L.serial(L.Dense(16, W, B), L.Relu(), L.Dense(1, 2 * W, B))
    spec = L.from_module(_Net(body), W_std=W, b_std=B)
    _assert_same(spec, hand, _randn(5, 3, seed=3))


def test_inplace_relu_module_is_followed():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.act, self.out = nn.Linear(3, 16), nn.ReLU(inplace=True), nn.Linear(16, 1)

        def forward(self, x):
            h = self.a(x)
            return self.out(self.act(h) + h)

    hand = L.serial(L.Dense(16, W, B), L.Relu(), L.Dense(1, 2 * W, B))
    _assert_same(L.from_module(Net(), W_std=W, b_std=B), hand, _randn(5, 3, seed=3))


class _HH(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        self.a, self.out = nn.Linear(3, w), nn.Linear(w, 1)

    def forward(self, x):
        h = self.a(x)
        return self.out(F.relu(h + h))


def _reused_relu(w: int) -> nn.Module:
    relu = nn.ReLU()
    return nn.Sequential(nn.Linear(3, w), relu, nn.Linear(w, w), relu, nn.Linear(w, 1))


@pytest.mark.parametrize("make", [_HH, _reused_relu], ids=["h+h", "reused-relu"])
def test_monte_carlo_of_the_real_model_agrees(make):
    """The real torch models as PyTorch initializes them (standard parameterization,
    W_std = 1/sqrt(3), the default b_std='torch'): the old kernels were 0.51 (h + h) and 0.98
    (reused ReLU) off; at width 256 with 12 draws the Monte Carlo error is a few percent."""
    x = _randn(5, 3, seed=4)
    exact = L.from_module(make(256), W_std=3**-0.5, parameterization="standard").kernel(x).ntk
    est = L.monte_carlo_kernel(lambda: make(256).double(), x, n_samples=12, seed=0, nngp=False).ntk
    assert float((est - exact).norm() / exact.norm()) < 0.1


@pytest.mark.parametrize(
    "body,words",
    [
        (lambda self, h: h + F.relu(h), r"'a' and 'relu'.*correlated"),
        (lambda self, h: (lambda g: F.relu(g) + torch.tanh(g))(self.b(h)), r"'relu' and 'tanh'.*correlated"),
        (lambda self, h: F.relu(self.b(h)) + F.relu(self.c(h)), "means"),
    ],
    ids=["h+relu(h)", "same-field", "two-nonlinear-branches"],
)
def test_correlated_sums_are_refused_naming_the_node(body, words):
    net = _Net(body)
    with pytest.raises(UnsupportedLayerError, match=words) as info:
        L.from_module(net)
    assert "in _Net.forward" in str(info.value)


def test_input_added_to_itself_is_twice_the_input():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.out = nn.Linear(3, 1)

        def forward(self, x):
            return self.out(x + x)

    _assert_same(L.from_module(Net(), W_std=W, b_std=B), L.Dense(1, 2 * W, B), _randn(5, 3, seed=5))


def test_linear_on_the_length_axis_is_refused():
    model = nn.Sequential(nn.Conv1d(2, 8, 3), nn.ReLU(), nn.Linear(5, 1))
    spec = L.from_module(model)
    with pytest.raises(UnsupportedLayerError, match=r"layer '2'.*last axis"):
        spec.kernel(_randn(3, 2, 7, seed=6))
    with pytest.raises(ShapeError, match=r"layer '2'"):  # a length torch cannot run either
        spec.kernel(_randn(3, 2, 9, seed=6))


def test_tied_weights_are_refused():
    lin = nn.Linear(8, 8)
    with pytest.raises(UnsupportedLayerError, match=r"layer '4'.*also used by layer '2'.*tied"):
        L.from_module(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), lin, nn.Tanh(), lin))
    shared = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
    shared[4].weight = shared[2].weight  # two modules, one weight
    with pytest.raises(UnsupportedLayerError, match=r"layer '4'.*tied"):
        L.from_module(shared)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.b(torch.tanh(self.b(torch.tanh(self.a(x)))))

    with pytest.raises(UnsupportedLayerError, match="tied"):
        L.from_module(Twice())


def test_shapes_are_checked_against_the_model():
    with pytest.raises(ShapeError, match=r"layer '2'.*16 input"):
        L.from_module(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(16, 1)))
    spec = L.from_module(nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)))
    with pytest.raises(ShapeError, match=r"layer '2'.*8 input channels"):
        spec.kernel(_randn(2, 2, 6, 6, seed=7))
    with pytest.raises(ShapeError, match=r"layer '0'.*2 input channels"):
        L.from_module(nn.Sequential(nn.Conv2d(2, 4, 3))).kernel(_randn(2, 3, 6, 6, seed=7))
    with pytest.raises(ShapeError, match=r"\(C, H, W\)"):
        L.from_module(nn.Sequential(nn.Conv2d(2, 4, 3))).kernel(_randn(2, 2, 6, seed=7))


def test_a_tuple_output_is_refused_clearly():
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 4)

        def forward(self, x):
            h = self.a(x)
            return h, torch.relu(h)

    with pytest.raises(UnsupportedLayerError, match="returns a tuple"):
        L.from_module(Two())


def test_unsupported_calls_name_themselves():
    class Computed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 4)

        def forward(self, x):
            h = self.a(x)
            return torch.cumsum(h, 1)

    with pytest.raises(UnsupportedLayerError, match="'torch.cumsum'"):
        L.from_module(Computed())

    class TwoArgs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Bilinear(3, 3, 4)

        def forward(self, x):
            return self.inner(x, x)

    with pytest.raises(UnsupportedLayerError, match="more than one argument"):
        L.from_module(TwoArgs())
    with pytest.raises(InvalidArgumentError, match="b_std"):
        L.from_module(nn.Linear(2, 2), b_std="kaiming")


def test_functional_dropout_of_an_evaluated_model_is_the_identity():
    class Drop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.out = nn.Linear(3, 16), nn.Linear(16, 1)

        def forward(self, x):
            return self.out(F.dropout(torch.relu(self.a(x)), 0.3, self.training))

    hand = L.serial(L.Dense(16, W, B), L.Relu(), L.Dense(1, W, B))
    _assert_same(L.from_module(Drop().eval(), W_std=W, b_std=B), hand, _randn(4, 3, seed=8))
    with pytest.raises(UnsupportedLayerError, match="training=True"):
        L.from_module(Drop().train())


def test_a_tensor_read_directly_is_named():
    class Direct(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.w = nn.Linear(3, 4), nn.Parameter(torch.ones(4))

        def forward(self, x):
            return self.a(x) * self.w

    with pytest.raises(UnsupportedLayerError, match=r"self\.w directly"):
        L.from_module(Direct())


class _Cat(nn.Module):
    """Two branches of different depths concatenated, then a nonlinearity (Inception-like)."""

    def __init__(self, w: int = 16) -> None:
        super().__init__()
        self.a, self.b, self.c, self.out = nn.Linear(3, w), nn.Linear(3, w), nn.Linear(w, w), nn.Linear(2 * w, 1)

    def forward(self, x):
        return self.out(torch.tanh(torch.cat([self.a(x), self.c(torch.relu(self.b(x)))], 1)))


def test_a_nonlinearity_of_a_concatenation_acts_on_each_branch():
    """tanh(cat(a, b)) = cat(tanh(a), tanh(b)): each branch keeps its own Gaussian law (the
    rule on the channel-averaged kernel was 9% (NTK) and 15% (NNGP) off here)."""
    hand = L.serial(L.FanOut(2), L.parallel(L.serial(L.Dense(16, W, B), L.Elementwise(torch.tanh)),
                                            L.serial(L.Dense(16, W, B), L.Relu(), L.Dense(16, W, B), L.Elementwise(torch.tanh))),
                    L.FanInConcat(), L.Dense(1, W, B))
    x = 3 * _randn(5, 3, seed=9)
    _assert_same(L.from_module(_Cat(), W_std=W, b_std=B), hand, x)

    class InPlace(_Cat):  # the in-place call changes the concatenation itself
        def forward(self, x):
            c = torch.cat([self.a(x), self.c(torch.relu(self.b(x)))], 1)
            torch.tanh_(c)
            return self.out(c)

    _assert_same(L.from_module(InPlace(), W_std=W, b_std=B), hand, x)

    class Branches(_Cat):
        def forward(self, x):
            return torch.cat([self.a(x), self.c(torch.relu(self.b(x)))], 1)

    model = nn.Sequential(Branches(), nn.Tanh(), nn.Linear(32, 1))  # the nonlinearity outside the graph
    with pytest.raises(SpecError, match=r"Tanh.*non-Gaussian"):
        L.from_module(model).kernel(x)
