"""Every public computation on CUDA tensors equals the CPU computation (skipped without a GPU).

The CPU results are the references the rest of the suite checks against brute force, closed
forms and the peer; here each path runs again with the model and inputs on the GPU, and the
result must stay there and agree to float64 rounding (rtol 1e-10: the GPU's float64 GEMMs
and reductions sum in another order than the CPU's, which moves the last few bits).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import torchntk
from torchntk import layers as L
from torchntk.errors import TorchNTKError

sys.path.insert(0, str(Path(__file__).parent / "empirical"))
sys.path.insert(0, str(Path(__file__).parent / "layers"))

from _attention_specs import transformer  # noqa: E402
from _models import assert_close, brute_ntk, models  # noqa: E402
from _zoo import ZOO, build, inputs  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

D = torch.float64
CUDA = "cuda"
IMPLEMENTATIONS = ["auto", "jacobian", "ntvp", "structured", "autograd"]


def _on_gpu(t: torch.Tensor) -> None:
    assert t.device.type == CUDA, t.device


# -- empirical NTK -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "tnn_mlp", "cnn", "cnn1d", "residual_ln", "tokens"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("mode", ["full", "mean"])
def test_empirical_ntk_on_gpu_equals_brute_force(name, implementation, mode):
    model, x1, x2 = models()[name]
    ref = brute_ntk(model, x1, x2, mode)
    gpu = torchntk.empirical_ntk(model.to(CUDA), x1.to(CUDA), x2.to(CUDA), mode=mode,
                                 implementation=implementation)
    _on_gpu(gpu)
    assert_close(gpu.cpu(), ref, rtol=1e-10)


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_zoo_on_gpu_works_or_raises_a_torchntk_error(name, implementation):
    """LSTM, GRU, TransformerEncoder, custom autograd and in-place models on CUDA (cuDNN
    kernels, fused attention): ``"auto"`` is exact, each explicit path exact or a torchntk error."""
    model, x = build(name), inputs(name, 4)
    ref = brute_ntk(model, x, mode="mean")
    model, xg = model.to(CUDA), x.to(CUDA)
    try:
        gpu = torchntk.empirical_ntk(model, xg, mode="mean", implementation=implementation)
    except TorchNTKError:
        assert implementation != "auto", f"auto failed on {name}"
        return
    _on_gpu(gpu)
    assert_close(gpu.cpu(), ref, rtol=1e-9)


def test_linearize_on_gpu():
    model, x1, _ = models()["mlp"]
    lin = torchntk.linearize(model.to(CUDA))
    out = lin(x1.to(CUDA))
    _on_gpu(out)
    assert_close(out.cpu(), model.cpu()(x1).detach(), rtol=1e-12)


# -- infinite-width kernels ----------------------------------------------------------------


def _graphs(n: int, v: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, v, v, generator=g, dtype=D) * (torch.rand(n, v, v, generator=g) < 0.5)


def _edges(p: torch.Tensor) -> torch.Tensor:
    """Dense weights with 0/1 entries as a padded (N, E, 2) edge list (-1 rows are padding)."""
    lists = [torch.nonzero(a > 0) for a in p]
    e = max(len(t) for t in lists)
    out = torch.full((len(lists), e, 2), -1, dtype=torch.long)
    for i, t in enumerate(lists):
        out[i, : len(t)] = t
    return out


def _analytic_cases():
    g = torch.Generator().manual_seed(1)
    fc = L.serial(L.Dense(512, b_std=0.1), L.Erf(), L.Dense(512), L.Gelu(), L.Dense(512), L.Relu(), L.Dense(1))
    cnn = L.serial(L.Conv(64, (3, 3), padding="SAME", b_std=0.2), L.Relu(), L.AvgPool((2, 2)),
                   L.Conv(64, (3, 3), strides=(2, 2)), L.Relu(), L.GlobalAvgPool(), L.Dense(1))
    graph = L.serial(L.Dense(64, b_std=0.1), L.Aggregate(), L.Relu(), L.Dense(64), L.Aggregate(), L.Relu(),
                     L.GlobalSumPool(), L.Dense(1))
    graph_sparse = L.serial(L.Dense(64, b_std=0.1), L.Aggregate("sparse"), L.Relu(), L.GlobalSumPool(), L.Dense(1))
    p1, p2 = (_graphs(5, 6, 2) > 0).to(D), (_graphs(4, 6, 3) > 0).to(D)
    m1 = torch.zeros(5, 7, dtype=torch.bool)
    m1[0, 4:] = True
    m2 = torch.zeros(4, 7, dtype=torch.bool)
    m2[1, 2:] = True
    return {
        "fc": (fc, torch.randn(5, 4, generator=g, dtype=D), torch.randn(3, 4, generator=g, dtype=D), {}),
        "cnn": (cnn, torch.randn(4, 2, 8, 8, generator=g, dtype=D), torch.randn(3, 2, 8, 8, generator=g, dtype=D), {}),
        "transformer": (transformer("softmax", width=16), torch.randn(5, 3, 7, generator=g, dtype=D),
                        torch.randn(4, 3, 7, generator=g, dtype=D), {"mask": (m1, m2)}),
        "graph": (graph, torch.randn(5, 3, 6, generator=g, dtype=D), torch.randn(4, 3, 6, generator=g, dtype=D),
                  {"pattern": (_graphs(5, 6, 2), _graphs(4, 6, 3))}),
        "graph_sparse": (graph_sparse, torch.randn(5, 3, 6, generator=g, dtype=D),
                         torch.randn(4, 3, 6, generator=g, dtype=D), {"pattern": (_edges(p1), _edges(p2))}),
    }


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


@pytest.mark.parametrize("name", list(_analytic_cases()))
def test_analytic_kernels_on_gpu_equal_cpu(name):
    spec, x1, x2, side = _analytic_cases()[name]
    cpu = spec.kernel(x1, x2, **side)
    gpu = spec.kernel(x1.to(CUDA), x2.to(CUDA), **_to(side, CUDA))
    for a, b in ((gpu.nngp, cpu.nngp), (gpu.ntk, cpu.ntk)):
        _on_gpu(a)
        assert_close(a.cpu(), b, rtol=1e-10)


def test_from_module_kernel_on_gpu():
    model = nn.Sequential(nn.Linear(4, 32), nn.GELU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    spec = L.from_module(model)
    x = torch.randn(6, 4, dtype=D)
    gpu = spec.kernel(x.to(CUDA))
    _on_gpu(gpu.ntk)
    assert_close(gpu.ntk.cpu(), spec.kernel(x).ntk, rtol=1e-10)


def test_monte_carlo_kernel_on_gpu_converges_to_the_analytic_kernel():
    """The NTK concentrates with width (the NNGP estimate does not: its error is
    ``O(n_samples^(-1/2))`` at any width), so the NTK average of 16 width-1024 nets is
    within 5% of the limit."""
    spec = L.serial(L.Dense(1024, b_std=0.1), L.Relu(), L.Dense(1024), L.Relu(), L.Dense(1))
    x = torch.randn(6, 5, dtype=D)
    mc = torchntk.monte_carlo_kernel(spec, x.to(CUDA), n_samples=16, seed=0, nngp=False)
    _on_gpu(mc.ntk)
    exact = spec.kernel(x).ntk
    rel = torch.linalg.norm(mc.ntk.cpu() - exact) / torch.linalg.norm(exact)
    assert rel < 0.05, float(rel)


# -- dynamics, features, scale -------------------------------------------------------------


def test_feature_ridge_on_gpu_equals_cpu():
    from torchntk.features import FeatureMap, ridge_regression

    spec = L.serial(L.Dense(256, b_std=0.1), L.Relu(), L.Dense(256), L.Relu(), L.Dense(1))
    g = torch.Generator().manual_seed(4)
    x, xt = torch.randn(40, 5, generator=g, dtype=D), torch.randn(7, 5, generator=g, dtype=D)
    y = torch.randn(40, 2, generator=g, dtype=D)
    fm = FeatureMap(spec, 1024, seed=3)
    cpu = ridge_regression(fm.rows(x), y, (1e-2,)).predict(fm.rows(xt))
    gpu = ridge_regression(fm.rows(x.to(CUDA)), y.to(CUDA), (1e-2,)).predict(fm.rows(xt.to(CUDA)))
    _on_gpu(gpu)
    assert_close(gpu.cpu(), cpu, rtol=1e-9)


def test_bfloat16_features_on_gpu_keep_the_kernel():
    """The same draws in bfloat16 products: each feature moves by ~2^-8 relative, so the
    kernel of 24 rows moves by far less than the sampling error of m = 1024 features (~0.05)."""
    from torchntk.features import FeatureMap

    spec = L.serial(L.Dense(256, b_std=0.1), L.Relu(), L.Dense(256), L.Erf(), L.Dense(1))
    x = torch.randn(24, 5, dtype=torch.float32, device=CUDA)
    full = FeatureMap(spec, 1024, seed=2, dtype=torch.float32)(x)
    half = FeatureMap(spec, 1024, seed=2, dtype=torch.float32, precision="bfloat16")(x)
    for a, b in ((half.nngp, full.nngp), (half.ntk, full.ntk)):
        _on_gpu(a)
        ka, kb = (a @ a.T).double(), (b @ b.T).double()
        assert float(torch.linalg.norm(ka - kb) / torch.linalg.norm(kb)) < 0.01


def test_tiled_kernel_on_gpu_equals_one_block():
    from torchntk.scale import kernel_fn_from_spec, tiled_kernel

    spec = L.serial(L.Dense(512, b_std=0.1), L.Relu(), L.Dense(1))
    x = torch.randn(37, 4, dtype=D)
    tiled = tiled_kernel(kernel_fn_from_spec(spec), x, block_size=8, device=CUDA, progress=False)
    ref = spec.kernel(x)
    for name in ("nngp", "ntk"):
        assert_close(torch.as_tensor(tiled[name]).cpu(), getattr(ref, name), rtol=1e-10)


def test_model_operator_cg_on_gpu():
    """The matrix-free operator of a CUDA model's empirical NTK solves the regression."""
    from torchntk.scale import KernelOperator, cg_solve

    model, x, _ = models()["mlp"]
    y = torch.randn(x.shape[0] * 2, dtype=D, generator=torch.Generator().manual_seed(5))
    k = brute_ntk(model, x).permute(0, 2, 1, 3).reshape(y.shape[0], y.shape[0])
    op = KernelOperator.from_model(model.to(CUDA), x.to(CUDA), diag_reg=1e-1, block_size=2)
    alpha, info = cg_solve(op, y, rtol=1e-12)
    assert info["converged"]
    assert_close(alpha, torch.linalg.solve(k + 1e-1 * torch.eye(y.shape[0], dtype=D), y), rtol=1e-8)
