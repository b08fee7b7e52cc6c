"""The NTK-parameterized layers compute exactly CONVENTIONS section 1."""

import math

import pytest
import torch
import torch.nn.functional as F

from torchntk.errors import InvalidArgumentError, ShapeError
from torchntk.nn import MLP, Conv1d, Conv2d, Linear

DT = torch.float64


def test_linear_ntk_formula():
    g = torch.Generator().manual_seed(0)
    layer = Linear(7, 5, W_std=1.3, b_std=0.2, generator=g, dtype=DT)
    x = torch.randn(4, 7, dtype=DT)
    expected = (1.3 / math.sqrt(7)) * x @ layer.weight.T + 0.2 * layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-14, atol=1e-14)


def test_linear_standard_same_function_distribution():
    # Standard parameterization stores the scaled weights: same law of the function at init.
    g = torch.Generator().manual_seed(1)
    std = Linear(400, 300, W_std=2.0, b_std=0.5, parameterization="standard", generator=g, dtype=DT)
    assert abs(std.weight.std().item() - 2.0 / math.sqrt(400)) < 0.01 * 2.0 / math.sqrt(400) * 3
    assert abs(std.bias.std().item() - 0.5) < 0.1
    x = torch.randn(3, 400, dtype=DT)
    torch.testing.assert_close(std(x), x @ std.weight.T + std.bias)


def test_ntk_init_is_standard_normal():
    layer = Linear(500, 400, b_std=1.0, generator=torch.Generator().manual_seed(2))
    assert abs(layer.weight.mean().item()) < 0.01
    assert abs(layer.weight.std().item() - 1.0) < 0.01


@pytest.mark.parametrize("b_std", [None, 0, 0.0])
def test_no_bias(b_std):
    assert Linear(3, 2, b_std=b_std).bias is None
    assert Conv2d(1, 2, 3, b_std=b_std).bias is None


@pytest.mark.parametrize("padding", ["valid", "same", "circular", 1])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_matches_torch(padding, stride):
    g = torch.Generator().manual_seed(3)
    conv = Conv2d(3, 4, (3, 2), stride=stride, padding=padding, W_std=1.5, b_std=0.3, generator=g, dtype=DT)
    x = torch.randn(2, 3, 9, 8, dtype=DT)
    scale = 1.5 / math.sqrt(3 * 3 * 2)
    if padding == "valid":
        xp = x
    elif padding == 1:
        xp = F.pad(x, (1, 1, 1, 1))
    else:
        # TF SAME: total padding (ceil(n/s)-1)*s + k - n, extra pixel after.
        def pads(n, k):
            total = max((-(-n // stride) - 1) * stride + k - n, 0)
            return total // 2, total - total // 2
        ph, pw = pads(9, 3), pads(8, 2)
        xp = F.pad(x, (*pw, *ph), mode="constant" if padding == "same" else "circular")
    expected = F.conv2d(xp, conv.weight * scale, conv.bias * 0.3, stride=stride)
    out = conv(x)
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-13)
    if padding in ("same", "circular"):
        assert out.shape[2:] == (-(-9 // stride), -(-8 // stride))


def test_conv1d_shape_and_errors():
    conv = Conv1d(2, 3, 3, padding="same")
    assert conv(torch.randn(4, 2, 10)).shape == (4, 3, 10)
    with pytest.raises(ShapeError, match="expects input"):
        conv(torch.randn(4, 10))
    with pytest.raises(InvalidArgumentError, match="padding"):
        Conv1d(2, 3, 3, padding="full")
    with pytest.raises(InvalidArgumentError, match="parameterization"):
        Linear(2, 3, parameterization="mup")
    with pytest.raises(InvalidArgumentError, match="W_std"):
        Linear(2, 3, W_std=-1.0)


def test_mlp_is_theory_network():
    g = torch.Generator().manual_seed(4)
    net = MLP(2, [6, 5], 3, activation="relu", beta=0.1, generator=g, dtype=DT)
    x = torch.randn(4, 2, dtype=DT)
    a = x
    linears = [m for m in net if isinstance(m, Linear)]
    for i, lin in enumerate(linears):
        a = a @ lin.weight.T / math.sqrt(lin.in_features) + 0.1 * lin.bias
        if i < len(linears) - 1:
            a = torch.relu(a)
    torch.testing.assert_close(net(x), a, rtol=1e-13, atol=1e-13)
