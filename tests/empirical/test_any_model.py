"""Models beyond Linear/Conv stacks: every implementation is exact or raises a torchntk error,
and "auto" works on all of them (recurrent layers, attention, custom autograd functions,
in-place code, token ids).

References are brute-force autograd kernels (a loop of ``autograd.grad`` per example and
output) in float64; the implementations sum the same products in another order, so they agree
to a few ulps of the largest entry (checked at 1e-10 relative to it).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from torchntk.empirical import empirical_ntk
from torchntk.errors import UnsupportedLayerError

from ._models import assert_close, brute_ntk
from ._zoo import ZOO, _Cube, build, inputs

IMPLS = ["auto", "jacobian", "ntvp", "structured", "autograd"]

# Which explicit implementations cannot handle which model (the others must be exact).
UNSUPPORTED = {
    ("lstm", "jacobian"), ("lstm", "structured"), ("gru", "jacobian"), ("gru", "structured"),
    ("encoder", "ntvp"), ("custom_function", "jacobian"), ("custom_function", "ntvp"),
    ("in_place", "jacobian"),
}


def _modes(full: torch.Tensor) -> dict[str, torch.Tensor]:
    diag = torch.diagonal(full, dim1=2, dim2=3)
    return {"full": full, "diagonal": diag, "mean": diag.mean(-1)}


@pytest.fixture(scope="module")
def references():
    out = {}
    for name in ZOO:
        model = build(name)
        x1, x2 = inputs(name, 3), inputs(name, 2, seed=1)
        out[name] = (model, x1, x2, _modes(brute_ntk(model, x1, x2)), _modes(brute_ntk(model, x1)))
    return out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ZOO)
def test_every_implementation_is_exact_or_says_what_to_use(references, name, impl):
    model, x1, x2, ref, ref_sym = references[name]
    if (name, impl) in UNSUPPORTED:
        with pytest.raises(UnsupportedLayerError, match=f"implementation='{impl}'.*use implementation="):
            empirical_ntk(model, x1, x2, implementation=impl)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "auto" may announce a fallback
        for mode in ("full", "diagonal", "mean"):
            assert_close(empirical_ntk(model, x1, x2, mode=mode, implementation=impl), ref[mode])
        assert_close(empirical_ntk(model, x1, mode="mean", implementation=impl), ref_sym["mean"])


def test_unsupported_error_names_the_failing_operation():
    model, x = build("lstm"), inputs("lstm", 2)
    with pytest.raises(UnsupportedLayerError, match=r"_VF\.lstm.*'autograd'"):
        empirical_ntk(model, x, implementation="jacobian")
    enc = build("encoder")
    with pytest.raises(UnsupportedLayerError, match=r"no forward-mode derivative"):
        empirical_ntk(enc, inputs("encoder", 2), implementation="ntvp")


class CubeLayer(torch.nn.Module):
    def forward(self, x):
        return _Cube.apply(x)


def test_auto_falls_back_once_with_a_warning_and_remembers():
    """A custom autograd function defeats vmap only at run time: "auto" warns, uses the next
    implementation, and does not try (or warn about) the failing one again for this model."""
    from torchntk._memory import DEFAULT_MEMORY
    from torchntk.empirical import _cost
    from torchntk.empirical._functional import make_functional

    torch.manual_seed(0)
    norm = torch.nn.Sequential(torch.nn.PReLU(3), CubeLayer(), torch.nn.PReLU(3)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    fm = make_functional(norm)
    plans, _ = _cost.candidates(fm, x, 4, 3, "mean", "auto", DEFAULT_MEMORY, False, None)
    # no covered layer: a path of vectorized transforms is cheapest, and _Cube defeats both
    assert plans[0].backend.name in ("jacobian", "ntvp")
    ref = brute_ntk(norm, x, mode="mean")
    with pytest.warns(RuntimeWarning, match="'(jacobian|ntvp)' cannot handle this model.*_Cube.*instead"):
        assert_close(empirical_ntk(norm, x, mode="mean"), ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert_close(empirical_ntk(norm, x, mode="mean"), ref)


def test_plans_are_cached_per_model_and_input_shape(monkeypatch):
    from collections import OrderedDict

    from torchntk.empirical import _cost

    calls = []
    real = _cost.probe_layers
    monkeypatch.setattr(_cost, "probe_layers", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(_cost, "_SHARED", OrderedDict())  # no plan from another test
    model, x = build("tokens"), inputs("tokens", 3)
    k1 = empirical_ntk(model, x, mode="mean")
    k2 = empirical_ntk(model, inputs("tokens", 5, seed=2)[:4], mode="mean")  # same example shape
    assert len(calls) == 1
    empirical_ntk(model, inputs("tokens", 2)[:, :3], mode="mean")  # shorter sequences: new plan
    assert len(calls) == 2
    assert_close(k1, brute_ntk(model, x, mode="mean"))
    assert k2.shape == (4, 4)


class _CudnnLikeRNN(torch.autograd.Function):
    """``tanh`` whose backward refuses to run while cuDNN is enabled, as cuDNN's recurrent
    kernels do in eval mode on a GPU."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        if torch.backends.cudnn.enabled:
            raise RuntimeError("cudnn RNN backward can only be called in training mode")
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


def test_autograd_path_runs_again_without_cudnn_for_recurrent_kernels():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.b(_CudnnLikeRNN.apply(self.a(x)))

    torch.manual_seed(0)
    model, x = Net().double(), torch.randn(4, 3, dtype=torch.float64)
    before = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    try:
        ref = brute_ntk(model, x)
    finally:
        torch.backends.cudnn.enabled = before
    assert_close(empirical_ntk(model, x, implementation="autograd"), ref)
    assert torch.backends.cudnn.enabled == before


def test_a_fresh_instance_of_a_planned_architecture_reuses_the_plan(monkeypatch):
    """The plan is shared by structure: a new instance with other weights runs no probe and
    its kernel is exact (the shared plan's layers are bound to the new instance's modules); a
    changed attribute, a hook or a non-data attribute makes a new plan."""
    from collections import OrderedDict

    from torchntk.empirical import _cost

    calls = []
    real = _cost.probe_layers
    monkeypatch.setattr(_cost, "probe_layers", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(_cost, "_SHARED", OrderedDict())

    def net(seed, slope=0.1):
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Conv1d(2, 3, 2), torch.nn.LeakyReLU(slope), torch.nn.Flatten(), torch.nn.Linear(6, 2)
        ).double()

    x = torch.randn(3, 2, 3, dtype=torch.float64)
    for impl in ("auto", "structured"):
        empirical_ntk(net(0), x, implementation=impl)
    assert len(calls) == 1
    fresh = net(1)
    assert_close(empirical_ntk(fresh, x, implementation="structured"), brute_ntk(fresh, x))
    assert len(calls) == 1
    empirical_ntk(net(2, slope=0.2), x)  # another attribute value: another structure
    assert len(calls) == 2
    hooked = net(3)
    hooked[1].register_forward_hook(lambda m, i, o: None)
    assert _cost.structure_key(hooked) is None
    empirical_ntk(hooked, x)
    assert len(calls) == 3
    odd = net(4)
    odd.extra = lambda t: t  # a closure attribute: no structure key, the instance alone is cached
    assert _cost.structure_key(odd) is None
    assert _cost.structure_key(net(5)) == _cost.structure_key(net(6))


class _WeightGated(torch.nn.Module):
    """Runs ``lin`` once or twice depending on the sign of a weight: instances of one structure
    whose forward passes differ."""

    def __init__(self, sign: float):
        super().__init__()
        self.lin, self.head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)
        with torch.no_grad():
            self.lin.bias[0] = sign

    def forward(self, x):
        h = self.lin(x)
        if self.lin.bias[0] > 0:
            h = self.lin(torch.tanh(h))
        return self.head(torch.tanh(h))


def test_a_shared_plan_that_does_not_fit_the_forward_pass_is_never_used(monkeypatch):
    """A plan shared by structure assumes each covered layer runs once, as in the probe: a model
    that runs a layer more often is refused by "structured" and "auto" falls back (exact)."""
    from collections import OrderedDict

    from torchntk.empirical import _cost

    monkeypatch.setattr(_cost, "_SHARED", OrderedDict())
    torch.manual_seed(0)
    once, twice = _WeightGated(-1.0).double(), _WeightGated(1.0).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    assert _cost.structure_key(once) == _cost.structure_key(twice)
    assert_close(empirical_ntk(once, x, implementation="structured"), brute_ntk(once, x))
    with pytest.raises(UnsupportedLayerError, match="stale.*'lin' ran 2 times"):
        empirical_ntk(twice, x, implementation="structured")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "auto" may announce the fallback
        for mode in ("full", "mean"):
            assert_close(empirical_ntk(twice, x, mode=mode), brute_ntk(twice, x, mode=mode))
