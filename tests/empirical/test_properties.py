"""Blocks, per-layer parts, symmetry and positive semi-definiteness, the flattened form."""

from __future__ import annotations

import pytest
import torch

from torchntk.empirical import empirical_ntk, flatten_kernel

from ._models import assert_close, models

IMPLS = ["jacobian", "ntvp", "structured", "autograd"]


@pytest.fixture(scope="module")
def cases():
    return models()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["full", "diagonal", "mean"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.filterwarnings("ignore::torchntk.errors.BudgetWarning")  # the tiny budget is the point
def test_blocked_equals_unblocked(cases, impl, mode, symmetric):
    model, x1, x2 = cases["cnn"]
    x2 = None if symmetric else x2
    whole = empirical_ntk(model, x1, x2, mode=mode, implementation=impl)
    for b in (1, 3):
        assert_close(empirical_ntk(model, x1, x2, mode=mode, implementation=impl, block_size=b), whole)
    tiny = empirical_ntk(model, x1, x2, mode=mode, implementation=impl, memory=20_000)
    assert_close(tiny, whole)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["full", "diagonal", "mean"])
@pytest.mark.parametrize("name", ["tnn_mlp", "residual_ln", "cnn"])
def test_per_layer_parts_sum_to_total(cases, impl, mode, name):
    model, x1, x2 = cases[name]
    parts = empirical_ntk(model, x1, x2, mode=mode, implementation=impl, per_layer=True)
    assert set(parts) == {n for n, _ in model.named_parameters()}
    total = empirical_ntk(model, x1, x2, mode=mode, implementation=impl)
    assert_close(sum(parts.values()), total)
    # each part is the kernel of that parameter alone
    one = next(iter(parts))
    assert_close(parts[one], empirical_ntk(model, x1, x2, mode=mode, implementation="jacobian", params=[one]))


@pytest.mark.parametrize("impl", IMPLS)
def test_symmetric_psd(cases, impl):
    model, x1, _ = cases["residual_ln"]
    x = torch.cat([x1, x1[:2] + 1e-3])  # nearly repeated inputs: a stress test for PSD
    theta = flatten_kernel(empirical_ntk(model, x, implementation=impl, block_size=3))
    assert torch.equal(theta, theta.T)
    evals = torch.linalg.eigvalsh(theta)
    assert evals.min() >= -1e-10 * evals.max()
    mean = empirical_ntk(model, x, mode="mean", implementation=impl)
    assert torch.equal(mean, mean.T)
    assert torch.linalg.eigvalsh(mean).min() >= -1e-10 * mean.diagonal().max()


def test_flatten_kernel_is_sample_major(cases):
    model, x1, x2 = cases["tnn_mlp"]
    theta = empirical_ntk(model, x1, x2)
    flat = flatten_kernel(theta)
    o = theta.shape[2]
    assert flat.shape == (x1.shape[0] * o, x2.shape[0] * o)
    assert flat[1 * o + 2, 3 * o + 0] == theta[1, 3, 2, 0]


def test_modes_are_consistent(cases):
    model, x1, x2 = cases["tnn_mlp"]
    full = empirical_ntk(model, x1, x2, implementation="jacobian")
    diag = empirical_ntk(model, x1, x2, mode="diagonal", implementation="jacobian")
    mean = empirical_ntk(model, x1, x2, mode="mean", implementation="jacobian")
    assert_close(diag, torch.diagonal(full, dim1=2, dim2=3))
    assert_close(mean, diag.mean(-1))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["full", "diagonal", "mean"])
def test_symmetric_gram_split_into_chunks(impl, mode):
    """N*O and N large enough that the symmetric Gram is computed by upper chunks and mirrored."""
    torch.manual_seed(7)
    net = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 10)).double()
    x = torch.randn(400 if mode != "full" else 45, 2, dtype=torch.float64)
    if impl == "ntvp":
        x = x[:45]
    sym = empirical_ntk(net, x, mode=mode, implementation=impl)
    assert_close(sym, empirical_ntk(net, x, x, mode=mode, implementation="jacobian"))
    assert torch.equal(sym, sym.transpose(0, 1) if mode != "full" else sym.permute(1, 0, 3, 2))


@pytest.mark.parametrize("impl", IMPLS)
def test_works_under_no_grad_and_inference_mode(cases, impl):
    model, x1, x2 = cases["tnn_mlp"]
    ref = empirical_ntk(model, x1, x2, implementation=impl)
    with torch.no_grad():
        assert_close(empirical_ntk(model, x1, x2, implementation=impl), ref)
    with torch.inference_mode():
        assert_close(empirical_ntk(model, x1, x2, implementation=impl), ref)
        xi = x1.clone()  # an inference tensor
    assert_close(empirical_ntk(model, xi, x2, implementation=impl), ref)
