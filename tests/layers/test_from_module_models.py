"""``from_module`` on models as researchers write them: eval-mode BatchNorm, post-activation
residual blocks, biases that follow the model, and Monte Carlo kernels with graph patterns."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchntk import layers as L
from torchntk.errors import InvalidArgumentError, ShapeError, SpecError, TorchNTKWarning, UnsupportedLayerError

D = torch.float64
W, B = 1.3, 0.1


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def _assert_same(ours: L.Kernel, ref: L.Kernel) -> None:
    # The same rules; the BatchNorm scale applied after the affine step instead of inside it
    # rounds differently (a few ulps), far below 1e-12 after the well-conditioned rules.
    torch.testing.assert_close(ours.nngp, ref.nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours.ntk, ref.ntk, rtol=1e-12, atol=1e-14)


def _bn_cnn() -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1),
    )
    with torch.no_grad():  # fixed statistics with one scale for all channels: s = 2 / sqrt(3 + eps)
        for bn in (model[1], model[4]):
            bn.running_var.fill_(3.0)
            bn.weight.fill_(2.0)
    return model.eval()


def test_eval_batchnorm_cnn_equals_the_spec_with_the_affine_folded_in():
    model = _bn_cnn()
    s = 2.0 / (3.0 + model[1].eps) ** 0.5
    with pytest.warns(TorchNTKWarning, match=r"normalization layers '1', '4'"):
        spec = L.from_module(model, W_std=W, b_std=B)
    # NTK parameterization: y = s (W_std/sqrt(n) W a + b_std b) is the layer with W_std s, b_std s
    conv = lambda: L.Conv(8, 3, padding="SAME", W_std=W * s, b_std=B * s)  # noqa: E731
    hand = L.serial(conv(), L.Relu(), conv(), L.Relu(), L.GlobalAvgPool(), L.Dense(1, W, B))
    x = _randn(3, 2, 4, 4, seed=0)
    _assert_same(spec.kernel(x), hand.kernel(x))


def test_eval_batchnorm_agrees_with_monte_carlo_of_the_real_model():
    """A fresh model in eval mode (running statistics 0 and 1, affine frozen): the NTK of its
    Linear layers, PyTorch's default init (standard parameterization, W_std = 1/sqrt(3),
    b_std='torch'); running_var = 4 halves the pre-activations."""
    def make() -> nn.Module:
        model = nn.Sequential(nn.Linear(3, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 1))
        model[1].running_var.fill_(4.0)
        model[1].requires_grad_(False)
        return model.eval().double()

    x = _randn(5, 3, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TorchNTKWarning)  # frozen affine: no warning
        spec = L.from_module(make(), W_std=3**-0.5, parameterization="standard")
    exact = spec.kernel(x)
    est = L.monte_carlo_kernel(make, x, n_samples=12, seed=0)
    # Monte Carlo: about 1/sqrt(12 * 256) per entry for the NTK, 1/sqrt(12) for the NNGP
    assert float((est.ntk - exact.ntk).norm() / exact.ntk.norm()) < 0.1
    assert float((est.nngp - exact.nngp).norm() / exact.nngp.norm()) < 0.5
    no_bn = L.from_module(nn.Sequential(nn.Linear(3, 256), nn.ReLU(), nn.Linear(256, 1)), W_std=3**-0.5,
                          parameterization="standard").kernel(x)
    assert float((no_bn.ntk - exact.ntk).norm() / exact.ntk.norm()) > 0.3  # the scale matters


def test_layernorm_affine_parameters_are_announced():
    model = nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 1))
    with pytest.warns(TorchNTKWarning, match=r"layers '1'.*LayerNorm: 1 and 0"):
        L.from_module(model)
    model[1].requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TorchNTKWarning)
        L.from_module(model)


@pytest.mark.parametrize(
    "edit,words",
    [
        (lambda bn: bn.train(), "training mode"),
        (lambda bn: bn.running_var.copy_(torch.arange(1.0, 9.0)), "differs across channels"),
        (lambda bn: bn.running_mean.fill_(0.5), "shift"),
    ],
    ids=["train-mode", "per-channel-scale", "shift"],
)
def test_other_batchnorms_are_refused(edit, words):
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8)).eval()
    with torch.no_grad():
        edit(model[1])
    with pytest.raises(UnsupportedLayerError, match=rf"layer '1' \(BatchNorm1d\).*{words}"):
        L.from_module(model)


class _PostActivation(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


def test_post_activation_residual_block_shows_its_pre_activation_rewrite():
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), _PostActivation(8),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))
    spec = L.from_module(model, W_std=W, b_std=B)
    with pytest.raises(SpecError, match=r"'2' \(_PostActivation\).*not Gaussian") as info:
        spec.kernel(_randn(2, 2, 4, 4, seed=2))
    code = str(info.value).split("\n", 1)[1]
    assert "def forward(self, x):" in code and "return add" in code

    class PreActivation(_PostActivation):  # the printed forward, as the user would paste it
        pass

    scope: dict = {"torch": torch}
    exec(code, scope)  # noqa: S102 - the code the message shows
    PreActivation.forward = scope["forward"]
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), PreActivation(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))
    conv = lambda: L.Conv(8, 3, padding="SAME", W_std=W, b_std=B)  # noqa: E731
    hand = L.serial(conv(), L.FanOut(2), L.parallel(L.Identity(), L.serial(L.Relu(), conv(), L.Relu(), conv())),
                    L.FanInSum(), L.Relu(), L.GlobalAvgPool(), L.Dense(1, W, B))
    x = _randn(2, 2, 4, 4, seed=3)
    _assert_same(L.from_module(model, W_std=W, b_std=B).kernel(x), hand.kernel(x))


class _BasicBlock(nn.Module):
    """torchvision's BasicBlock: BatchNorm, one in-place ReLU module, ``out += identity``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


def test_torchvision_basic_block_shows_the_rewrite_and_the_in_place_call():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                          _BasicBlock(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    with pytest.warns(TorchNTKWarning):
        spec = L.from_module(model)
    with pytest.raises(SpecError, match=r"(?s)'3' \(_BasicBlock\).*relu_\d = self\.relu\(x\).*bn2 \+ x.*inplace=False"):
        spec.kernel(_randn(2, 3, 4, 4, seed=9))


def test_projection_shortcut_block_converts():
    class Projection(_PostActivation):
        def __init__(self) -> None:
            super().__init__(4)
            self.skip = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return F.relu(self.skip(x) + self.conv2(F.relu(self.conv1(x))))

    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), Projection(), nn.Flatten(), nn.Linear(64, 1))
    conv = lambda k: L.Conv(4, k, padding="SAME", W_std=W, b_std=B)  # noqa: E731
    hand = L.serial(conv(3), L.Relu(), L.FanOut(2), L.parallel(conv(1), L.serial(conv(3), L.Relu(), conv(3))),
                    L.FanInSum(), L.Relu(), L.Flatten(), L.Dense(1, W, B))
    x = _randn(2, 2, 4, 4, seed=4)
    _assert_same(L.from_module(model, W_std=W, b_std=B).kernel(x), hand.kernel(x))


def test_biases_follow_the_model_by_default():
    """b_std='torch': 1/sqrt(3 fan_in), the std of PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 1))
    spec = L.from_module(model)
    hand = L.serial(L.Dense(8, 1.0, 9**-0.5), L.Relu(), L.Dense(8, 1.0), L.Relu(), L.Dense(1, 1.0, 24**-0.5))
    x = _randn(4, 3, seed=5)
    _assert_same(spec.kernel(x), hand.kernel(x))
    text = repr(spec)
    assert "b_std='torch'" in text and "b_std=0.333333" in text and "b_std=None" in text
    assert float(model[0].bias.detach().std()) > 0  # the model has biases: the default keeps them
    no_bias = L.from_module(model, b_std=0.0)
    assert not torch.allclose(no_bias.kernel(x).ntk, spec.kernel(x).ntk)
    with pytest.raises(InvalidArgumentError, match="b_std"):
        L.from_module(model, b_std=-1.0)


def _graph_spec() -> L.Layer:
    return L.serial(L.Dense(128, b_std=0.1), L.Relu(), L.Aggregate(), L.Dense(128, b_std=0.1), L.Relu(),
                    L.GlobalAvgPool(), L.Dense(1))


@pytest.mark.parametrize("kind", ["dense", "sparse", "pair"])
def test_monte_carlo_kernel_with_graph_patterns_converges(kind):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 2, 5, dtype=D, generator=g)
    x2 = pattern = None
    if kind == "sparse":
        spec = L.serial(L.Dense(128, b_std=0.1), L.Relu(), L.Aggregate("sparse"), L.Dense(128), L.Relu(),
                        L.GlobalAvgPool(), L.Dense(1))
        pattern = torch.randint(0, 5, (3, 6, 2), generator=g)
    else:
        spec = _graph_spec()
        pattern = (torch.rand(3, 5, 5, generator=g) < 0.5).to(D)
        if kind == "pair":
            x2 = torch.randn(2, 2, 5, dtype=D, generator=g)
            pattern = (pattern, (torch.rand(2, 5, 5, generator=g) < 0.5).to(D))
    exact = spec.kernel(x, x2, pattern=pattern).ntk
    est = L.monte_carlo_kernel(spec, x, x2, pattern=pattern, n_samples=8, seed=0, nngp=False).ntk
    # 8 draws at width 128: 0.04 to 0.12 over seeds; the kernel without the graph is 0.87 off
    assert float((est - exact).norm() / exact.norm()) < 0.2


def test_monte_carlo_pattern_arguments():
    x = _randn(3, 2, 5, seed=7)
    with pytest.raises(InvalidArgumentError, match="pattern"):
        L.monte_carlo_kernel(_graph_spec(), x, _randn(2, 2, 5, seed=8), pattern=(torch.ones(3, 5, 5, dtype=D), None),
                             n_samples=1, seed=0)
    with pytest.raises(InvalidArgumentError, match="same per-sample shape"):
        L.monte_carlo_kernel(_graph_spec(), x, _randn(2, 2, 5, seed=8),
                             pattern=(torch.zeros(3, 4, 2, dtype=torch.long), torch.zeros(2, 6, 2, dtype=torch.long)),
                             n_samples=1, seed=0)


def test_a_sequential_spec_stays_a_serial_of_known_layers():
    """Consumers that walk a spec (random features) read from_module's spec of an
    nn.Sequential: a serial of Dense/Relu layers, its checks kept."""
    from torchntk.features import FeatureMap

    spec = L.from_module(nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 1)), b_std=0.1)
    x = _randn(4, 3, seed=10)
    fm = FeatureMap(spec, 4000, seed=0)
    exact = spec.kernel(x).ntk
    approx = fm(x).ntk @ fm(x).ntk.T
    # 4000 random features: a relative error of order 1/sqrt(4000) times a few
    assert float((approx - exact).norm() / exact.norm()) < 0.1
    with pytest.raises(ShapeError, match=r"layer '0'"):
        spec.kernel(_randn(4, 5, seed=10))
    again = pickle.loads(pickle.dumps(spec))  # stores hash specs by their pickle
    torch.testing.assert_close(again.kernel(x).ntk, exact, rtol=0, atol=0)  # the same computation repeated
    with pytest.raises(ShapeError, match=r"layer '0'"):
        again.kernel(_randn(4, 5, seed=10))
