"""Every bad input raises the documented torchntk error, naming the argument."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchntk.errors import (
    InvalidArgumentError,
    ModelStateError,
    NonFiniteError,
    ShapeError,
    TorchNTKError,
)
from torchntk.empirical import empirical_ntk, linearize


def _net(*extra):
    return nn.Sequential(nn.Linear(3, 4), *extra, nn.Linear(4, 2))


X = torch.randn(4, 3)


@pytest.mark.parametrize("layer", [nn.BatchNorm1d(4), nn.Dropout(0.5)])
def test_train_mode_batchnorm_or_dropout(layer):
    net = _net(layer)
    with pytest.raises(ModelStateError, match=r"model\.eval\(\)") as err:
        empirical_ntk(net, X)
    assert "deterministic" in str(err.value) and "`model`" in str(err.value)
    with pytest.raises(ModelStateError):
        linearize(net)
    net.eval()
    assert empirical_ntk(net, X).shape == (4, 4, 2, 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("arg", ["x1", "x2"])
def test_non_finite_inputs(bad, arg):
    x = X.clone()
    x[1, 2] = bad
    args = (x, X) if arg == "x1" else (X, x)
    with pytest.raises(NonFiniteError, match=f"`{arg}`"):
        empirical_ntk(_net(), *args)


def test_mismatched_feature_shapes():
    with pytest.raises(ShapeError, match="`x2`"):
        empirical_ntk(_net(), X, torch.randn(4, 5))


@pytest.mark.parametrize("arg", ["x1", "x2"])
def test_empty_batch(arg):
    args = (X[:0], X) if arg == "x1" else (X, X[:0])
    with pytest.raises(ShapeError, match=f"`{arg}`"):
        empirical_ntk(_net(), *args)


def test_no_trainable_parameters():
    net = _net().requires_grad_(False)
    with pytest.raises(ModelStateError, match="no trainable parameters"):
        empirical_ntk(net, X)
    with pytest.raises(ModelStateError):
        empirical_ntk(nn.Tanh(), X)


def test_unknown_mode_and_implementation():
    with pytest.raises(InvalidArgumentError, match="mode"):
        empirical_ntk(_net(), X, mode="trace")
    with pytest.raises(InvalidArgumentError, match="implementation"):
        empirical_ntk(_net(), X, implementation="fast")


def test_params_naming_nothing():
    with pytest.raises(InvalidArgumentError, match="`params`"):
        empirical_ntk(_net(), X, params=["5.weight"])
    with pytest.raises(InvalidArgumentError, match="`params`"):
        empirical_ntk(_net(), X, params=lambda n, p: False)


def test_output_of_wrong_rank():
    net = nn.Sequential(nn.Linear(3, 4), nn.Unflatten(1, (2, 2)))
    with pytest.raises(ShapeError, match="`model`"):
        empirical_ntk(net, X)


def test_other_bad_arguments():
    with pytest.raises(InvalidArgumentError, match="`memory`"):
        empirical_ntk(_net(), X, memory="lots")
    with pytest.raises(InvalidArgumentError, match="`block_size`"):
        empirical_ntk(_net(), X, block_size=0)
    with pytest.raises(InvalidArgumentError, match="`x1`"):
        empirical_ntk(_net(), X.tolist())
    with pytest.raises(InvalidArgumentError, match="`x1` is a numpy array of dtype bool"):
        empirical_ntk(_net(), X.numpy() > 0)
    with pytest.raises(InvalidArgumentError, match="`progress`"):
        empirical_ntk(_net(), X, progress="yes")
    with pytest.raises(InvalidArgumentError, match="`return_report`"):
        empirical_ntk(_net(), X, return_report=1)
    with pytest.raises(InvalidArgumentError, match="`params`"):
        empirical_ntk(lambda p, x: x, X)  # plain function without a params dict
    with pytest.raises(InvalidArgumentError, match="`accumulate_dtype`"):
        empirical_ntk(_net(), X, accumulate_dtype=torch.int64)
    assert issubclass(ShapeError, TorchNTKError) and issubclass(ShapeError, ValueError)


def test_input_the_model_cannot_take_names_the_argument():
    """The model's own error on a bad input becomes a torchntk error naming the argument."""
    net = _net()
    with pytest.raises(ShapeError, match=r"`x1` of shape \(4, 5\).*mat1 and mat2"):
        empirical_ntk(net, torch.randn(4, 5))
    with pytest.raises(ShapeError, match=r"`x1` has shape \(4,\).*unsqueeze\(1\)"):
        empirical_ntk(net, torch.randn(4))
    with pytest.raises(InvalidArgumentError, match=r"`x1` has dtype torch.float32.*torch.float64"):
        empirical_ntk(_net().double(), X)
    with pytest.raises(InvalidArgumentError, match=r"`x2` has dtype torch.float64 but `x1` has torch.float32"):
        empirical_ntk(net, X, X.double())


def test_meta_tensors():
    with pytest.raises(InvalidArgumentError, match="`x1` is a meta tensor"):
        empirical_ntk(_net(), torch.empty(4, 3, device="meta"))
    with pytest.raises(InvalidArgumentError, match="`x2` is a meta tensor"):
        empirical_ntk(_net(), X, torch.empty(4, 3, device="meta"))
    with pytest.raises(ModelStateError, match="meta tensor"):
        empirical_ntk(_net().to("meta"), X)


def test_choices_in_any_case():
    k = empirical_ntk(_net(), X, mode="MEAN", implementation="Jacobian")
    assert k.shape == (4, 4)
