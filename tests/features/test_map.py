"""FeatureMap: exact rules on the linear layers, Monte Carlo accuracy on the nonlinear ones."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from torchntk import layers as L
from torchntk.errors import InvalidArgumentError, SpecError, UnsupportedLayerError
from torchntk.features import FeatureMap, relative_error

D64 = torch.float64


def _fc(depth: int, act) -> L.Layer:
    layers = []
    for _ in range(depth):
        layers += [L.Dense(256, b_std=0.1), act()]
    return L.serial(*layers, L.Dense(1, b_std=0.1))


def _cnn() -> L.Layer:
    return L.serial(
        L.Conv(32, (3, 3), padding="SAME", b_std=0.1), L.Relu(),
        L.Conv(32, (2, 2), padding="SAME", b_std=0.1), L.Relu(),
        L.GlobalAvgPool(), L.Dense(1, b_std=0.1),
    )


def _errors(spec, x, m, seed=0, x2=None):
    fm = FeatureMap(spec, m, seed=seed)
    f1 = fm(x)
    f2 = f1 if x2 is None else fm(x2)
    k = spec.kernel(x, x2)
    return (relative_error(f1.nngp @ f2.nngp.T, k.nngp), relative_error(f1.ntk @ f2.ntk.T, k.ntk))


# -- exact rules: without a nonlinearity every step is an exact feature map -----------------

LINEAR_SPECS = {
    "dense": L.serial(L.Dense(8, W_std=1.3, b_std=0.2), L.Dense(4, b_std=0.5), L.Dense(1)),
    "standard": L.serial(L.Dense(7, W_std=1.1, b_std=0.3, parameterization="standard"),
                         L.Dense(1, b_std=0.2, parameterization="standard")),
    "residual": L.serial(L.Dense(6, b_std=0.1), L.FanOut(2), L.parallel(L.Identity(), L.Dense(6, W_std=0.7)),
                         L.FanInSum(), L.Dense(1)),
    "concat": L.serial(L.FanOut(2), L.parallel(L.Dense(3), L.Dense(5, b_std=0.4)), L.FanInConcat(), L.Dense(1)),
    "layernorm": L.serial(L.Dense(6, b_std=0.3), L.LayerNorm(), L.Dense(1, b_std=0.1)),
}

SPATIAL_SPECS = {
    "conv_same_avgpool_flatten": L.serial(L.Conv(4, (2, 2), padding="SAME", b_std=0.1), L.AvgPool((2, 2)),
                                          L.Flatten(), L.Dense(1)),
    "conv_valid_strided_gap": L.serial(L.Conv(4, (3, 2), strides=(2, 1), b_std=0.2), L.GlobalAvgPool(), L.Dense(1)),
    "conv_circular_sumpool": L.serial(L.Conv(3, 3, padding="CIRCULAR", W_std=0.8), L.SumPool((2, 2), padding="SAME"),
                                      L.Flatten(), L.Dense(1, b_std=0.1)),
    "conv1d_layernorm": L.serial(L.Conv(4, 3, padding="SAME"), L.LayerNorm(axis=(1, 2)), L.Flatten(), L.Dense(1)),
    # regressions: these inherited the rule of their parent class (GlobalAvgPool's mean, Conv's window)
    "conv_global_sum_pool": L.serial(L.Conv(4, (2, 2), b_std=0.3), L.GlobalSumPool(), L.Dense(1, b_std=0.1)),
    "conv1d_global_sum_pool": L.serial(L.Conv(3, 2, padding="SAME"), L.GlobalSumPool(), L.Dense(1)),
    "conv_transpose_valid_strided": L.serial(L.ConvTranspose(3, (3, 2), strides=2, b_std=0.2), L.Flatten(), L.Dense(1)),
    "conv_transpose_same_gap": L.serial(L.ConvTranspose(3, 3, strides=(2, 1), padding="SAME"), L.GlobalAvgPool(),
                                        L.Dense(1)),
    "conv_transpose_circular_sumpool": L.serial(L.ConvTranspose(2, 3, strides=2, padding="CIRCULAR", b_std=0.1),
                                                L.SumPool((2, 2)), L.Flatten(), L.Dense(1)),
    "conv_transpose_explicit_pads": L.serial(L.ConvTranspose(2, 3, strides=2, padding=((1, -1), (0, 2))),
                                             L.GlobalSumPool(), L.Dense(1)),
    "conv1d_transpose_strided": L.serial(L.ConvTranspose(3, 3, strides=3), L.GlobalAvgPool(), L.Dense(1)),
}


@pytest.mark.parametrize("name", sorted(LINEAR_SPECS))
def test_linear_specs_are_exact(name):
    spec = LINEAR_SPECS[name]
    x1 = torch.randn(9, 5, dtype=D64)
    x2 = torch.randn(4, 5, dtype=D64)
    fm = FeatureMap(spec, 64)
    f1, f2 = fm(x1), fm(x2)
    k = spec.kernel(x1, x2)
    torch.testing.assert_close(f1.nngp @ f2.nngp.T, k.nngp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f1.ntk @ f2.ntk.T, k.ntk, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SPATIAL_SPECS))
def test_conv_and_pooling_rules_are_exact(name):
    spec = SPATIAL_SPECS[name]
    shape = (2, 7) if name.startswith("conv1d") else (2, 5, 4)
    x = torch.randn(6, *shape, dtype=D64)
    f = FeatureMap(spec, 4096)(x)  # wide enough for no compression: every step exact
    k = spec.kernel(x)
    torch.testing.assert_close(f.nngp @ f.nngp.T, k.nngp, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(f.ntk @ f.ntk.T, k.ntk, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("pool", [L.GlobalAvgPool, L.GlobalSumPool])
def test_conv_local_decorrelates_positions(pool):
    # ConvLocal: independent weights per position, so Sigma'(o, o') = 0 for o != o'; the
    # features' cross-position products vanish only in expectation (random signs per position,
    # after a rotation to d_p >= m' = 2048 columns): their error is ~ d_p^(-1/2) per pair, and
    # the pooled kernel sums P^2 pairs, P = 9 here, so about sqrt(P^2) / P / sqrt(2048) ~ 0.02
    # relative; 0.1 is five times that. The old rule (Conv's, shared weights) is > 0.5 off.
    spec = L.serial(L.ConvLocal(4, 2, b_std=0.5), pool(), L.Dense(1, b_std=0.1))
    x = torch.randn(6, 2, 4, 4, dtype=D64)
    nngp, ntk = _errors(spec, x, 2048)
    assert nngp < 0.1 and ntk < 0.1, (nngp, ntk)


def test_compressed_flatten_is_unbiased_sketch():
    # Flatten of a wide conv output is compressed by an SRHT: unbiased, error ~ 1/sqrt(m)
    spec = L.serial(L.Conv(4, (2, 2), padding="SAME"), L.Flatten(), L.Dense(1))
    x = torch.randn(8, 3, 6, 6, dtype=D64)
    k = spec.kernel(x).nngp
    ests = []
    for s in range(16):
        f = FeatureMap(spec, 32, seed=s)(x).nngp  # 4 channels * 36 pixels = 144 columns -> 32
        ests.append(f @ f.T)
    single = relative_error(ests[0], k)
    averaged = relative_error(sum(ests) / len(ests), k)
    assert single > 0.05  # really compressed
    assert averaged < single / 2  # 16 draws: about 4 times smaller if unbiased


# -- Monte Carlo accuracy on nonlinear networks ---------------------------------------------


@pytest.mark.parametrize("kind", ["relu4", "erf3"])
def test_fast_accuracy_and_rate(kind):
    # the small variant of the slow acceptance test: m = 128 -> 1024 (Gaussian rows), two seeds
    torch.manual_seed(0)
    x = torch.randn(16, 8, dtype=D64)
    spec = _fc(4, L.Relu) if kind == "relu4" else _fc(3, L.Erf)
    e128 = np.mean([_errors(spec, x, 128, seed=s) for s in range(2)], axis=0)
    e1024 = np.mean([_errors(spec, x, 1024, seed=s) for s in range(2)], axis=0)
    assert (e1024 < 0.2).all(), e1024
    slope = np.log(e1024 / e128) / math.log(8)
    assert (slope < -0.3).all(), slope


def test_cnn_fast_accuracy():
    torch.manual_seed(0)
    nngp, ntk = _errors(_cnn(), torch.randn(6, 2, 4, 4, dtype=D64), 512)
    assert nngp < 0.2 and ntk < 0.2


def test_cross_kernels_from_one_map():
    spec = _fc(2, L.Relu)
    x1, x2 = torch.randn(10, 6, dtype=D64), torch.randn(7, 6, dtype=D64)
    nngp, ntk = _errors(spec, x1, 2048, x2=x2)
    assert nngp < 0.1 and ntk < 0.1


@pytest.mark.parametrize("act", [L.Gelu, L.Sin, L.Abs, lambda: L.LeakyRelu(0.2),
                                 lambda: L.Elementwise(torch.tanh)])
def test_other_activations(act):
    spec = _fc(2, act)
    x = torch.randn(12, 5, dtype=D64)
    nngp, ntk = _errors(spec, x, 2048)
    assert nngp < 0.12 and ntk < 0.12


@pytest.mark.slow
def test_acceptance_error_at_4096_with_bfloat16_products():
    # the benchmark's setting: float32 features, bfloat16 products (dense projections)
    torch.manual_seed(1)
    spec = _fc(4, L.Relu)
    x, x2 = torch.randn(64, 16, dtype=D64), torch.randn(20, 16, dtype=D64)
    k, kx = spec.kernel(x), spec.kernel(x, x2)
    for s in range(2):
        fm = FeatureMap(spec, 4096, seed=s, dtype=torch.float32, precision="bfloat16")
        f, f2 = fm(x), fm(x2)
        for kind in ("nngp", "ntk"):
            a, b = f[kind].double(), f2[kind].double()
            err = relative_error(a @ a.T, getattr(k, kind))
            cross = relative_error(a @ b.T, getattr(kx, kind))
            print(f"bfloat16 relu4 seed {s} {kind}: error {err:.4f}, cross {cross:.4f}")
            assert err <= 0.1 and cross <= 0.1, (kind, err, cross)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["relu4", "erf3", "cnn"])
def test_acceptance_error_at_4096_and_rate(kind):
    torch.manual_seed(1)
    if kind == "cnn":
        spec, x, x2, bound = _cnn(), torch.randn(16, 3, 6, 6, dtype=D64), torch.randn(5, 3, 6, 6, dtype=D64), 0.15
    else:
        spec = _fc(4, L.Relu) if kind == "relu4" else _fc(3, L.Erf)
        x, x2, bound = torch.randn(64, 16, dtype=D64), torch.randn(20, 16, dtype=D64), 0.1
    ms = [1024, 4096, 16384]
    errs = np.array([np.mean([_errors(spec, x, m, seed=s) for s in range(2)], axis=0) for m in ms])
    assert (errs[1] <= bound).all(), errs
    slopes = np.polyfit(np.log(ms), np.log(errs), 1)[0]
    assert (slopes <= -0.35).all(), slopes
    cross = _errors(spec, x, 4096, x2=x2)
    print(f"{kind}: errors (nngp, ntk) at m = {ms}: {errs.round(4).tolist()}, slopes {slopes.round(3).tolist()}, "
          f"cross at 4096: {np.round(cross, 4).tolist()}")
    assert max(cross) <= bound, cross


# -- the map's contract ----------------------------------------------------------------------


def test_draws_belong_to_the_map_and_batches_do_not_matter():
    spec = _fc(2, L.Relu)
    x = torch.randn(11, 4, dtype=D64)
    fm = FeatureMap(spec, 64, seed=3)
    a, b = fm(x), fm(x, block_size=4)
    torch.testing.assert_close(a.ntk, b.ntk, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(fm(x[:5]).nngp, a.nngp[:5], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(FeatureMap(spec, 64, seed=3)(x).ntk, a.ntk)
    assert not torch.allclose(FeatureMap(spec, 64, seed=4)(x).ntk, a.ntk)
    assert a.nngp.shape == (11, 65) and a.ntk.shape == (11, 129) and fm.dims(4) == (65, 129)
    rows = fm.rows(x, "NNGP", block_size=3)
    torch.testing.assert_close(rows.materialize(), a.nngp)
    need = fm._held[(4,)] + fm._row_bytes(fm._plan((4,))[2])  # the draws and one row
    tiny = FeatureMap(spec, 64, seed=3, memory=need)  # one row per batch
    assert tiny.block_rows(4) == 1
    torch.testing.assert_close(tiny(x).ntk, a.ntk, rtol=1e-12, atol=1e-13)
    with pytest.raises(InvalidArgumentError, match="memory="):
        FeatureMap(spec, 64, seed=3, memory="1 KB")(x)
    with pytest.raises(InvalidArgumentError, match="memory"):
        FeatureMap(spec, 64, memory="lots")


@pytest.mark.parametrize("method", ["gaussian", "STRUCTURED"])
def test_methods_and_dtype(method):
    spec = _fc(1, L.Relu)
    x = torch.randn(5, 3)
    f = FeatureMap(spec, 128, method=method, dtype=torch.float32)(x)
    assert f.ntk.dtype == torch.float32 and torch.isfinite(f.ntk).all()


@pytest.mark.parametrize("d_in,d_out,kind", [(65, 300, "srht"), (1100, 512, "srht"), (600, 512, "structured"),
                                              (20, 48, "gaussian")])
def test_projection_matrix_is_the_map(d_in, d_out, kind):
    from torchntk.features import _sketch

    gen = torch.Generator().manual_seed(d_in)
    cls = {"srht": _sketch.Srht, "structured": _sketch.StructuredProjection, "gaussian": _sketch.GaussianProjection}
    p = cls[kind](d_in, d_out, gen)
    x = torch.randn(7, d_in, dtype=D64)
    torch.testing.assert_close(x @ p.matrix(D64, chunk=256), p(x), rtol=1e-12, atol=1e-12)
    dense = p.to(torch.float32, torch.device("cpu"), "bfloat16")
    assert isinstance(dense, _sketch.DenseProjection)
    y = dense(x.float())
    assert y.dtype == torch.bfloat16
    # inputs and matrix rounded to 8-bit mantissas, float32 sums, output rounded: ~2^-8 relative
    assert relative_error(y.double(), p(x)) < 2.0**-6


@pytest.mark.parametrize("m", [512, 1024])
def test_bfloat16_precision_keeps_the_draws(m):
    # the same map (Gaussian rows at 512, structured at 1024) with bfloat16 products
    spec = _fc(3, L.Relu)
    x = torch.randn(40, 16, dtype=D64, generator=torch.Generator().manual_seed(2))
    full = FeatureMap(spec, m, seed=4, dtype=torch.float32)
    fast = FeatureMap(spec, m, seed=4, dtype=torch.float32, precision="BFloat16")
    a, b = full(x), fast(x)
    assert b.ntk.dtype == torch.float32 and fast.precision == "bfloat16" and fast.method == full.method
    # the NNGP features: 2^-8 roundings per entry and layer
    assert relative_error(b.nngp, a.nngp) < 0.02
    # the NTK features also flip a'(u) where |u| is within the rounding of 0: a few % of the
    # entries' energy, but the kernel estimate moves by far less than its Monte Carlo error
    k = spec.kernel(x)
    for kind in ("nngp", "ntk"):
        exact = getattr(k, kind)
        ka, kb = a[kind].double() @ a[kind].double().T, b[kind].double() @ b[kind].double().T
        err_full = relative_error(ka, exact)
        assert relative_error(kb, ka) < 0.2 * err_full, kind
        assert relative_error(kb, exact) < 1.1 * err_full, kind


def test_bfloat16_precision_with_hermite_steps():
    # smooth activations take Hermite steps (kept in the map's dtype), the ReLU the dense products
    spec = L.serial(L.Dense(64, b_std=0.1), L.Erf(), L.Dense(64, b_std=0.1), L.Relu(), L.Dense(1, b_std=0.1))
    x = torch.randn(30, 8, dtype=D64, generator=torch.Generator().manual_seed(0))
    k = spec.kernel(x)
    full = FeatureMap(spec, 1024, seed=1, dtype=torch.float32)(x)
    fast = FeatureMap(spec, 1024, seed=1, dtype=torch.float32, precision="bfloat16")(x)
    for kind in ("nngp", "ntk"):
        a, b = full[kind].double(), fast[kind].double()
        err_full = relative_error(a @ a.T, getattr(k, kind))
        assert relative_error(b @ b.T, a @ a.T) < 0.2 * err_full, kind
        assert fast[kind].dtype == torch.float32


def test_errors_name_the_problem():
    with pytest.raises(UnsupportedLayerError, match="FanInProd"):
        FeatureMap(L.serial(L.Dense(3), L.FanOut(2), L.parallel(L.Relu(), L.Erf()), L.FanInProd(), L.Dense(1)), 8)(
            torch.randn(2, 3))
    with pytest.raises(UnsupportedLayerError, match="Dropout"):
        FeatureMap(L.serial(L.Dense(3), L.Dropout(0.5), L.Dense(1)), 8)(torch.randn(2, 3))
    with pytest.raises(SpecError, match="Gaussian"):
        FeatureMap(L.serial(L.Relu(), L.Dense(1)), 8)(torch.randn(2, 3))
    with pytest.raises(SpecError, match="flat output"):
        FeatureMap(L.serial(L.Conv(2, 2)), 8)(torch.randn(2, 1, 3, 3))
    with pytest.raises(InvalidArgumentError, match="n_features"):
        FeatureMap(_fc(1, L.Relu), 1)
    with pytest.raises(InvalidArgumentError, match="method"):
        FeatureMap(_fc(1, L.Relu), 8, method="exact")
    with pytest.raises(InvalidArgumentError, match="precision"):
        FeatureMap(_fc(1, L.Relu), 8, precision="half")
    with pytest.raises(InvalidArgumentError, match="spec"):
        FeatureMap("relu", 8)
    with pytest.raises(InvalidArgumentError, match="kind"):
        FeatureMap(_fc(1, L.Relu), 8).rows(torch.randn(2, 3), "cov")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_features_on_the_inputs_device():
    spec = _fc(2, L.Relu)
    x = torch.randn(9, 4, dtype=D64)
    fm = FeatureMap(spec, 2048)  # structured rows: Hadamard products on the device
    cpu, gpu = fm(x), fm(x.cuda())
    assert gpu.ntk.device.type == "cuda"
    torch.testing.assert_close(gpu.ntk.cpu(), cpu.ntk, rtol=1e-10, atol=1e-12)


def test_output_features_compress_without_bias():
    spec = _fc(1, L.Relu)
    x = torch.randn(10, 4, dtype=D64)
    k = spec.kernel(x).ntk
    ests = []
    for s in range(12):
        f = FeatureMap(spec, 256, seed=s, output_features=64)(x)
        assert f.ntk.shape == (10, 64) and f.nngp.shape == (10, 64)
        ests.append(f.ntk @ f.ntk.T)
    single = relative_error(ests[0], k)
    assert relative_error(sum(ests) / len(ests), k) < single / 2  # unbiased: averages converge
    with pytest.raises(InvalidArgumentError, match="output_features"):
        FeatureMap(spec, 8, output_features=0)


def test_from_module_adaptive_pool_keeps_its_feature_rule():
    # nn.AdaptiveAvgPool2d(1) becomes a global mean that keeps size-1 axes; it declares the
    # global pool's feature rule for itself (a subclass inherits no rule). Monte Carlo error of
    # one ReLU layer at m = 4096: about 2 / sqrt(4096) = 0.03; 0.1 leaves three times that.
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 1))
    spec = L.from_module(net)
    nngp, ntk = _errors(spec, torch.randn(5, 2, 5, 5, dtype=D64), 4096)
    assert nngp < 0.1 and ntk < 0.1, (nngp, ntk)


# -- budgets (issues 19 and 24) ----------------------------------------------------------------


def test_a_budget_too_small_for_one_row_is_refused_before_drawing():
    # was: the budget ignored (443 s at m = 10^7), or a raw allocator error at m = 10^12
    spec = _fc(1, L.Relu)
    x = torch.randn(3, 4, dtype=D64)
    for m, memory in ((10**7, "10MiB"), (10**12, None)):
        with pytest.raises(InvalidArgumentError, match=r"need at least memory='[0-9.]+[KMGT]iB'"):
            FeatureMap(spec, m, memory=memory)(x)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_tiny_maps_need_no_hermite_tolerance(m):
    # was: "`hermite_tolerance` must be a number in (0, 1), got 2.0" for an argument not given
    fm = FeatureMap(L.serial(L.Dense(4), L.Erf(), L.Dense(1)), m)
    assert 0 < fm.hermite_tolerance < 1
    f = fm(torch.randn(3, 2, dtype=D64))
    assert f.nngp.shape[0] == 3 and torch.isfinite(f.ntk).all()


_RSS_SCRIPT = """
import resource, sys, torch
from torchntk import layers as L
from torchntk.errors import InvalidArgumentError
from torchntk.features import FeatureMap
if {conv}:
    spec = L.serial(L.Conv(32, 3, padding="SAME", b_std=0.1), L.Relu(), L.Conv(32, 3, padding="SAME"), L.Relu(),
                    L.GlobalAvgPool(), L.Dense(1))
    x = torch.randn({n}, 3, 8, 8, dtype=torch.float64)
else:
    spec = L.serial(L.Dense(64, b_std=0.1), L.Relu(), L.Dense(64, b_std=0.1), L.Relu(), L.Dense(1, b_std=0.1))
    x = torch.randn({n}, 5, dtype=torch.float64)
FeatureMap(spec, 64)(x[:2])  # torch's own first-use buffers, outside the measure
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    fm = FeatureMap(spec, {m}, memory={memory}, dtype=torch.{dtype})
    total = 0.0
    for lo, hi, phi in fm.rows(x, "ntk"):  # the rows a batch at a time, none kept
        total += float(phi.sum())
except InvalidArgumentError:
    print("refused", 0)
    sys.exit(0)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(fm.block_rows(tuple(x.shape[1:])), (after - before) * 1024)  # ru_maxrss is in KiB on Linux
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB (Linux)")
@pytest.mark.parametrize("config", [
    # m, budget (MiB), rows, conv, dtype, whether the budget must set the batches
    (4096, 12, 48, False, "float64", True),
    (2**17, 8, 2, False, "float64", False),  # one row does not fit: refused (it used to run, ~80 MiB)
    (1024, 64, 16, True, "float32", False),  # was 2.7x: the calibration pass of 3 float64 rows
], ids=["mlp", "one-row-too-big", "cnn-float32"])
def test_measured_peak_memory_stays_within_the_budget(config):
    # issue 24: FeatureMap(m=10^6, memory="10MiB") ran ~730 MB over budget. The peak RSS of a
    # fresh process while it streams the rows must stay within 1.5x the budget (the budget
    # counts the map's draws and a batch's working set; 1.5x leaves room for the allocator).
    m, mib, n, conv, dtype, batched = config
    budget = mib * 2**20
    code = _RSS_SCRIPT.format(m=m, memory=budget, n=n, conv=conv, dtype=dtype)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    rows, grown = out.stdout.split()
    if batched:
        assert 1 < int(rows) < n  # the budget, not the data, set the batches
    assert rows == "refused" or float(grown) <= 1.5 * budget, (float(grown) / 2**20, mib)
