"""``from_module``: the spec of plain torch.nn models equals the hand-written spec, and the
Monte Carlo kernels of real torch.nn models of growing width approach it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchntk import layers as L
from torchntk.errors import InvalidArgumentError, UnsupportedLayerError

D = torch.float64


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


class _Residual(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        self.a, self.f, self.out = nn.Linear(3, w), nn.Sequential(nn.ReLU(), nn.Linear(w, w)), nn.Linear(w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h = h + self.f(h)
        return self.out(torch.relu(h))


class _ResidualCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 8, 3, padding=1)
        self.f = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(h + self.f(h))


CASES = [
    (lambda: nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Sequential(nn.Linear(64, 64), nn.Tanh()), nn.Dropout(0.1), nn.Linear(64, 1)),
     L.serial(L.Dense(64, 1.3, 0.1), L.Relu(), L.Dense(64, 1.3, 0.1), L.Elementwise(torch.tanh), L.Dense(1, 1.3, 0.1)), (4, 3)),
    (lambda: nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding="same"), nn.GELU(), nn.Flatten(), nn.Linear(8 * 25, 1)),
     L.serial(L.Conv(8, 3, padding="SAME", W_std=1.3, b_std=0.1), L.Relu(), L.Conv(8, 3, padding="SAME", W_std=1.3, b_std=0.1), L.Gelu(),
              L.Flatten(), L.Dense(1, 1.3, 0.1)), (3, 2, 5, 5)),
    (lambda: nn.Sequential(nn.Conv1d(2, 8, 3), nn.LeakyReLU(0.2), nn.AvgPool1d(2), nn.Conv1d(8, 8, 2, bias=False), nn.ReLU(),
                           nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 1)),
     L.serial(L.Conv(8, 3, W_std=1.3, b_std=0.1), L.LeakyRelu(0.2), L.AvgPool(2, 2), L.Conv(8, 2, W_std=1.3), L.Relu(),
              L.GlobalAvgPool(), L.Dense(1, 1.3, 0.1)), (3, 2, 7)),
    (lambda: _Residual(64),
     L.serial(L.Dense(64, 1.3, 0.1), L.FanOut(2), L.parallel(L.Identity(), L.serial(L.Relu(), L.Dense(64, 1.3, 0.1))), L.FanInSum(),
              L.Relu(), L.Dense(1, 1.3, 0.1)), (4, 3)),
    (_ResidualCNN,
     L.serial(L.Conv(8, 3, padding="SAME", W_std=1.3, b_std=0.1), L.FanOut(2),
              L.parallel(L.Identity(), L.serial(L.Relu(), L.Conv(8, 3, padding="SAME", W_std=1.3, b_std=0.1))), L.FanInSum(),
              L.Relu(), L.GlobalAvgPool(), L.Dense(1, 1.3, 0.1)), (3, 2, 4, 4)),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_equals_hand_written_spec(case):
    make, hand, shape = CASES[case]
    x = _randn(*shape, seed=case)
    ours, ref = L.from_module(make(), W_std=1.3, b_std=0.1).kernel(x), hand.kernel(x)
    torch.testing.assert_close(ours.ntk, ref.ntk, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours.nngp, ref.nngp, rtol=1e-12, atol=1e-14)


def test_conv_transpose_and_explicit_pads_match_torch_shapes():
    model = nn.Sequential(nn.ConvTranspose2d(2, 4, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, stride=2, padding=1, padding_mode="circular"))
    spec = L.from_module(model)
    x = _randn(2, 2, 3, 4, seed=9)
    assert spec.module((2, 3, 4))(x.float()).shape == model(x.float()).shape
    assert spec.output_shape((2, 3, 4)) == tuple(model(x.float()).shape[1:])


def _reinit(model: nn.Module, W_std: float, b_std: float, g: torch.Generator) -> nn.Module:
    """Standard parameterization: W ~ N(0, W_std^2 / fan_in), b ~ N(0, b_std^2)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            fan_in = m.weight[0].numel()
            with torch.no_grad():
                m.weight.normal_(0, W_std / fan_in**0.5, generator=g)
                if m.bias is not None:
                    m.bias.normal_(0, b_std, generator=g)
    return model.to(D)


@pytest.mark.parametrize("widths", [(32, 256)], ids=["fast"])
def test_monte_carlo_of_real_models_converges(widths):
    """Real torch.nn residual models (standard parameterization): the relative error of the
    Monte Carlo NTK falls with the width (about width^(-1/2))."""
    x = _randn(4, 3, seed=10)
    errors = []
    for w in widths:
        exact = L.from_module(_Residual(w), W_std=1.3, b_std=0.1, parameterization="standard").kernel(x).ntk
        est = L.monte_carlo_kernel(lambda g: _reinit(_Residual(w), 1.3, 0.1, g), x, n_samples=8, seed=0, nngp=False)
        errors.append(float((est.ntk - exact).norm() / exact.norm()))
    assert errors[-1] < 0.1 and errors[-1] < errors[0], errors


@pytest.mark.slow
def test_monte_carlo_of_real_models_converges_slow():
    test_monte_carlo_of_real_models_converges((64, 256, 1024))


@pytest.mark.parametrize(
    "model,words",
    [
        (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), "BatchNorm1d"),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2)), "MaxPool2d"),
        (nn.Sequential(nn.Conv2d(1, 4, 3, dilation=2)), "dilation"),
        (nn.Sequential(nn.AdaptiveAvgPool2d(2)), "output_size 1"),
    ],
)
def test_unsupported_modules_name_themselves(model, words):
    with pytest.raises(UnsupportedLayerError, match=words) as info:
        L.from_module(model)
    assert "monte_carlo_kernel" in str(info.value)


def test_bad_arguments():
    with pytest.raises(InvalidArgumentError):
        L.from_module("model")
    with pytest.raises(InvalidArgumentError):
        L.from_module(nn.Linear(2, 2), parameterization="mup")

    class Custom(nn.Module):
        def forward(self, x):
            return torch.sort(x, dim=1).values

    with pytest.raises(UnsupportedLayerError, match="sort"):
        L.from_module(Custom())
