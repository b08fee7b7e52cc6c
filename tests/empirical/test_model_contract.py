"""Models that break the NTK's contract (a deterministic per-example function with finite
parameters, differentiable by autograd) raise a torchntk error on every implementation instead
of returning a wrong kernel; in-place code that autograd can differentiate gives the exact one.

References are brute-force autograd kernels in float64 (a loop of ``autograd.grad``); the
implementations sum the same products in another order, so they agree to a few ulps of the
largest entry (checked at 1e-10 relative to it).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchntk.empirical import empirical_ntk
from torchntk.errors import InvalidArgumentError, ModelStateError, NonFiniteError

from ._models import DT, assert_close, brute_ntk

IMPLS = ["auto", "jacobian", "ntvp", "structured", "autograd"]


class _Net(nn.Module):
    """``b(step(a(x)))`` for a function ``step`` of the hidden batch."""

    def __init__(self, step) -> None:
        super().__init__()
        self.a, self.b, self.step = nn.Linear(3, 4), nn.Linear(4, 2), step

    def forward(self, x):
        return self.b(self.step(self.a(x)))


def _net(step) -> nn.Module:
    torch.manual_seed(0)
    return _Net(step).to(DT)


X = torch.randn(5, 3, dtype=DT)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_forward_mixing_the_batch_is_refused(impl):
    """Subtracting the batch mean makes every output, and so the kernel, zero."""
    model = _net(lambda h: torch.tanh(h - h.mean(0, keepdim=True)))
    with pytest.raises(ModelStateError, match="mixes the examples of a batch.*per-example"):
        empirical_ntk(model, X, implementation=impl)
    with pytest.raises(ModelStateError, match="mixes the examples"):  # one x1 example, with x2
        empirical_ntk(model, X[:1], X[1:3], implementation=impl)


def test_a_random_forward_is_refused():
    model = _net(lambda h: F.dropout(h, 0.5, training=True))
    with pytest.raises(ModelStateError, match="not deterministic"):
        empirical_ntk(model, X)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_non_finite_weight_is_named(impl):
    model = _net(torch.tanh)
    with torch.no_grad():
        model.b.weight[1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match=r"`model` parameter 'b\.weight' has 1 non-finite"):
        empirical_ntk(model, X, implementation=impl)
    with pytest.raises(NonFiniteError, match="'b.weight'"):  # also when not differentiated
        empirical_ntk(model, X, params="a", implementation=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_non_finite_output_is_named(impl):
    """Finite weights and inputs, but ``1 / h`` at ``h = 0``: example 3 (a zero input, no bias)."""
    def model():
        net = _net(lambda h: 1.0 / h)
        with torch.no_grad():
            net.a.bias.zero_()
        return net

    x = X.clone()
    x[3] = 0.0
    with pytest.raises(NonFiniteError, match=r"examples \[3\] of `x1`"):
        empirical_ntk(model(), x, implementation=impl)
    with pytest.raises(NonFiniteError, match=r"examples \[2\] of `x1` and \[0\] of `x2`"):
        empirical_ntk(model(), x[[0, 1, 3]], x[3:], implementation=impl)
    with pytest.raises(NonFiniteError, match="returns NaN or inf on the first examples"):
        empirical_ntk(model(), x[3:], implementation=impl)  # the first call's probe meets it


def _relu_in_place(h):
    return F.relu(h, inplace=True)  # on the Linear's output, which autograd did not save


def _slice_write(h):
    h[:, 0] = 0.0
    return torch.tanh(h)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("step", [_relu_in_place, _slice_write])
def test_in_place_updates_that_autograd_allows_give_the_exact_kernel(step, impl):
    """In-place updates of a Linear layer's output (the structured path captures it)."""
    model = _net(step)
    ref = brute_ntk(model, X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert_close(empirical_ntk(model, X, implementation=impl), ref)
        assert_close(empirical_ntk(model, X[:3], X[3:], mode="mean", implementation=impl),
                     brute_ntk(model, X[:3], X[3:], mode="mean"))


@pytest.mark.parametrize("impl", IMPLS)
def test_in_place_update_of_a_saved_tensor_says_autograd_cannot(impl):
    """``relu`` saves its output for the backward pass; ``add_`` overwrites it."""

    def step(h):
        h = torch.relu(h)
        h.add_(1.0)
        return h

    model = _net(step)
    with pytest.raises(RuntimeError, match="modified by an inplace"):
        model(X).sum().backward()  # autograd itself refuses
    with pytest.raises(ModelStateError, match=r"cannot be differentiated by autograd.*h = h \+ 1"):
        empirical_ntk(model, X, implementation=impl)


class _Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(7, 4), nn.Linear(4, 1)

    def forward(self, ids):
        return self.head(self.emb(ids).mean(1))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("warm", [False, True])
def test_token_ids_out_of_range_are_named(impl, warm):
    """Whether or not the model was planned before, and wherever the bad id sits."""
    model = _Tokens().to(DT)
    ids = torch.randint(0, 7, (4, 5))
    if warm:
        empirical_ntk(model, ids, implementation=impl)
    bad = ids.clone()
    bad[2, 3] = 9
    with pytest.raises(InvalidArgumentError, match=r"token ids out of range.*`x1` holds ids from 0 to 9.*'emb': num_embeddings=7"):
        empirical_ntk(model, bad, implementation=impl)
    with pytest.raises(InvalidArgumentError, match=r"`x2` holds ids from -1"):
        empirical_ntk(model, ids, bad.clamp(max=6) - 1, implementation=impl)


def test_integer_input_to_a_float_model_is_a_dtype_error():
    model = nn.Linear(3, 2).to(DT)
    with pytest.raises(InvalidArgumentError, match=r"holds integers \(torch.int64\).*dtype problem.*x1\.to\(torch.float64\)"):
        empirical_ntk(model, torch.randint(0, 5, (4, 3)))


def test_the_sketched_kernel_checks_the_model_too():
    from torchntk.empirical import gradient_features

    model = _net(lambda h: torch.tanh(h - h.mean(0, keepdim=True)))
    with pytest.raises(ModelStateError, match="mixes the examples"):
        gradient_features(model, X, 8)
    model = _net(torch.tanh)
    with torch.no_grad():
        model.a.bias[0] = float("inf")
    with pytest.raises(NonFiniteError, match="'a.bias'"):
        empirical_ntk(model, X, sketch=8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_kernel_check_passes_finite_entries_whose_sum_overflows_and_names_one_bad_entry(dtype):
    """The check sums the kernel first (an inf or NaN entry makes the sum inf or NaN); a sum
    that overflows on finite entries must not be taken for a bad entry."""
    from torchntk.empirical._functional import make_functional
    from torchntk.empirical._guards import check_kernel_finite

    net = _net(torch.tanh).to(dtype)
    fm, x = make_functional(net), X[:3].to(dtype)
    big = torch.full((3, 3, 2, 2), torch.finfo(dtype).max / 2, dtype=dtype)
    assert not torch.isfinite(big.sum())
    check_kernel_finite(big, fm, x, None)  # finite entries: no error
    check_kernel_finite({"a.weight": big, "b.weight": -big}, fm, x, None)
    for value in (float("inf"), float("nan")):
        bad = big.clone()
        bad[1, 2, 0, 1] = value
        # every output is finite: the rows and columns holding the entry are named
        with pytest.raises(NonFiniteError, match=r"examples \[1\] of `x1`"):
            check_kernel_finite(bad, fm, x, None)
        with pytest.raises(NonFiniteError, match=r"examples \[1\] of `x1` and \[2\] of `x2`"):
            check_kernel_finite(bad / 4, fm, x, x)
