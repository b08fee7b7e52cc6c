"""``output=``: choosing the tensor of a model's output, in every entry point that takes a model
(empirical_ntk, linearize, DriftTracker, the scale operator, the CLI's model files); and one
rule for which parameters are differentiated across them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from torchntk.empirical import empirical_ntk, linearize
from torchntk.empirical._functional import SelectOutput
from torchntk.errors import InvalidArgumentError, ShapeError

from ._models import assert_close, brute_ntk
from ._zoo import DictOut, ObjectOut, TupleOut

DT = torch.float64


class Logits(nn.Module):
    """The reference: the same network returning only the logits tensor."""

    def __init__(self, src):
        super().__init__()
        self.src = src

    def forward(self, x):
        return self.src.b(torch.tanh(self.src.a(x)))


@pytest.mark.parametrize("cls, sel", [
    (DictOut, "logits"), (TupleOut, 0), (ObjectOut, "logits"), (DictOut, lambda out: out["logits"]),
])
@pytest.mark.parametrize("impl", ["auto", "jacobian", "ntvp", "structured", "autograd"])
def test_output_selects_the_tensor(cls, sel, impl):
    torch.manual_seed(1)
    model = cls().double()
    x1, x2 = torch.randn(3, 3, dtype=DT), torch.randn(2, 3, dtype=DT)
    ref = brute_ntk(Logits(model), x1, x2)
    assert_close(empirical_ntk(model, x1, x2, output=sel, implementation=impl), ref)


def test_output_function_may_slice():
    """A function may pick part of a tensor (the last position of a sequence, one logit)."""
    torch.manual_seed(2)
    model = DictOut().double()
    x = torch.randn(3, 3, dtype=DT)
    k = empirical_ntk(model, x, output=lambda out: out["logits"][:, 1])
    ref = brute_ntk(Logits(model), x)[:, :, 1:, 1:]
    assert_close(k, ref)


def test_default_output_explains_the_choice():
    x = torch.randn(2, 3, dtype=DT)
    with pytest.raises(ShapeError, match=r"dict with keys 'logits', 'hidden'.*output="):
        empirical_ntk(DictOut().double(), x)
    with pytest.raises(ShapeError, match=r"tuple of 2 items.*output="):
        empirical_ntk(TupleOut().double(), x)
    with pytest.raises(ShapeError, match=r"`output`='nope' names nothing"):
        empirical_ntk(DictOut().double(), x, output="nope")
    with pytest.raises(ShapeError, match=r"`output`=5 is not a valid index"):
        empirical_ntk(TupleOut().double(), x, output=5)
    with pytest.raises(InvalidArgumentError, match="`output` must be"):
        empirical_ntk(DictOut().double(), x, output=1.5)


def test_linearize_and_tracker_take_output():
    from torchntk.lab import DriftTracker

    torch.manual_seed(3)
    model = DictOut().double()
    x = torch.randn(4, 3, dtype=DT)
    lin = linearize(model, output="logits")
    assert torch.allclose(lin(x), model(x)["logits"], rtol=0, atol=1e-14)
    tracker = DriftTracker(model, x, every=1, output="logits")
    rec = tracker.record()
    ref = brute_ntk(Logits(model), x, mode="mean")
    assert rec["trace"] == pytest.approx(float(ref.trace()), rel=1e-12)


def test_cli_model_file_output(tmp_path):
    from torchntk.cli._common import load_model_file

    src = tmp_path / "net.py"
    src.write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.a = torch.nn.Linear(3, 2)\n"
        "    def forward(self, x):\n"
        "        return {'logits': self.a(x), 'x': x}\n"
        "model = Net()\n"
        "output = 'logits'\n"
    )
    obj = load_model_file(str(src))
    assert isinstance(obj, SelectOutput)
    x = torch.randn(3, 3)
    assert torch.equal(obj(x), obj.model(x)["logits"])


def test_every_consumer_differentiates_the_same_parameters():
    """A frozen layer (requires_grad=False) is left out by empirical_ntk, linearize, the scale
    operator and the lab's one-row kernel alike: all four give the same kernel."""
    from torchntk.lab._backend import ntk_row_jvp
    from torchntk.scale import KernelOperator

    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    net[0].requires_grad_(False)
    x = torch.randn(5, 3, dtype=DT)
    ref = brute_ntk(net, x, mode="mean")  # brute force over the requires_grad parameters
    assert_close(empirical_ntk(net, x, mode="mean"), ref)
    op = KernelOperator.from_model(net, x, mode="mean")
    assert_close(torch.as_tensor(op.matmat(np.eye(5))), ref)
    assert_close(ntk_row_jvp(net, x[:1], x), ref[0])
    lin = linearize(net)
    assert [n for n, p in lin.model.named_parameters() if p.requires_grad] == ["2.weight", "2.bias"]
    assert_close(empirical_ntk(lin, x, mode="mean"), ref)
