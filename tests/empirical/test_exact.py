"""Every implementation x every mode equals the brute-force autograd loop (float64, 1e-10)."""

from __future__ import annotations

import functools

import pytest
import torch

from torchntk.empirical import empirical_ntk

from ._models import assert_close, brute_ntk, models

IMPLS = ["jacobian", "ntvp", "structured", "autograd", "auto"]
MODES = ["full", "diagonal", "mean"]
MODELS = list(models())


@functools.lru_cache(maxsize=None)
def _case(name):
    return models()[name]


@functools.lru_cache(maxsize=None)
def _reference(name, mode, symmetric):
    model, x1, x2 = _case(name)
    return brute_ntk(model, x1, None if symmetric else x2, mode)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_matches_brute_force(name, impl, mode):
    model, x1, x2 = _case(name)
    theta = empirical_ntk(model, x1, x2, mode=mode, implementation=impl)
    assert theta.dtype == torch.float64
    assert_close(theta, _reference(name, mode, False))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("impl", IMPLS)
def test_symmetric_matches_brute_force(name, impl):
    model, x1, _ = _case(name)
    theta = empirical_ntk(model, x1, mode="full", implementation=impl)
    assert_close(theta, _reference(name, "full", True))
    # x2=None equals x2=x1, and is exactly symmetric
    assert_close(theta, empirical_ntk(model, x1, x1, mode="full", implementation=impl))
    assert torch.equal(theta, theta.permute(1, 0, 3, 2))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_parameter_subset(impl, mode):
    model, x1, x2 = _case("tnn_mlp")
    names = ["2.weight", "4.bias"]
    ref = brute_ntk(model, x1, x2, mode, names=names)
    assert_close(empirical_ntk(model, x1, x2, mode=mode, implementation=impl, params=names), ref)
    pred = lambda n, p: n in names  # noqa: E731
    assert_close(empirical_ntk(model, x1, x2, mode=mode, implementation=impl, params=pred), ref)


def test_module_name_selects_its_parameters():
    model, x1, x2 = _case("tnn_mlp")
    ref = brute_ntk(model, x1, x2, "full", names=["4.weight", "4.bias"])
    assert_close(empirical_ntk(model, x1, x2, params="4"), ref)


def test_plain_function_with_params_dict():
    torch.manual_seed(1)
    p = {"w1": torch.randn(3, 6, dtype=torch.float64), "w2": torch.randn(6, 2, dtype=torch.float64)}

    def f(params, x):
        return torch.tanh(x @ params["w1"]) @ params["w2"]

    x1, x2 = torch.randn(4, 3, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    j = lambda x: torch.func.vmap(torch.func.jacrev(lambda q, xi: f(q, xi[None])[0]), (None, 0))(p, x)  # noqa: E731
    j1, j2 = j(x1), j(x2)
    ref = sum(torch.einsum("iap,jbp->ijab", j1[k].flatten(2), j2[k].flatten(2)) for k in p)
    for impl in IMPLS:
        assert_close(empirical_ntk(f, x1, x2, params=p, implementation=impl), ref)


def test_frozen_parameters_are_left_out_and_buffers_pass_through():
    torch.manual_seed(2)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.Tanh(), torch.nn.Linear(5, 2)
    ).double()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    net.eval()
    net[0].weight.requires_grad_(False)
    stats = net[1].running_mean.clone()
    x1, x2 = torch.randn(4, 3, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    names = [n for n, q in net.named_parameters() if q.requires_grad]
    ref = brute_ntk(net, x1, x2, "full", names=names)
    for impl in IMPLS:
        assert_close(empirical_ntk(net, x1, x2, implementation=impl), ref)
    assert torch.equal(net[1].running_mean, stats)


def test_float32_follows_inputs_and_accumulates_in_float64_on_request():
    model, x1, x2 = _case("mlp")
    import copy

    net = copy.deepcopy(model).float()
    t32 = empirical_ntk(net, x1.float(), x2.float())
    assert t32.dtype == torch.float32
    t64 = empirical_ntk(net, x1.float(), x2.float(), accumulate_dtype=torch.float64)
    assert t64.dtype == torch.float64
    ref = brute_ntk(net.double(), x1, x2)  # float32 weights are exact in float64
    assert_close(t32.double(), ref, rtol=1e-5)
    assert_close(t64, ref, rtol=1e-5)
