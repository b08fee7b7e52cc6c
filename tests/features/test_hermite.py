"""Hermite-expansion features of smooth nonlinearities (features._hermite, _variance, TensorSrht)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import integrate, special

from torchntk import layers as L
from torchntk.errors import AccuracyWarning, InvalidArgumentError, ShapeError, UnsupportedLayerError
from torchntk.features import FeatureMap, relative_error
from torchntk.features import _hermite as H
from torchntk.features import _steps as S
from torchntk.features._sketch import TensorSrht

D64 = torch.float64


def _fc(depth: int, act, width: int = 256, w_std: float = 1.0) -> L.Layer:
    layers = []
    for _ in range(depth):
        layers += [L.Dense(width, W_std=w_std, b_std=0.1), act()]
    return L.serial(*layers, L.Dense(1, b_std=0.1))


def _inputs(n: int, d: int = 12, seed: int = 0) -> torch.Tensor:
    """Rows of different norms: |x|^2 / d from about 0.25 to 2.3."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=D64)
    return x / x.norm(dim=1, keepdim=True) * math.sqrt(d) * torch.linspace(0.5, 1.5, n, dtype=D64)[:, None]


def _errors(spec, x, m, seed=0, x2=None, method="auto"):
    fm = FeatureMap(spec, m, seed=seed, method=method)
    steps = _hermite_steps(fm, tuple(x.shape[1:]))
    assert all(not s.use_fallback for s in steps) and bool(steps) == (method != "monte_carlo")
    f1 = fm(x)
    f2 = f1 if x2 is None else fm(x2)
    k = spec.kernel(x, x2)
    return np.array([relative_error(f1.nngp @ f2.nngp.T, k.nngp), relative_error(f1.ntk @ f2.ntk.T, k.ntk)])


def _hermite_steps(fm: FeatureMap, shape: tuple[int, ...]) -> list[H.HermiteActivation]:
    found = []

    def walk(step):
        if isinstance(step, H.HermiteActivation):
            found.append(step)
        for v in vars(step).values():
            for w in v if isinstance(v, list) else [v]:
                if isinstance(w, S.Step):
                    walk(w)

    walk(fm._plan(shape)[0])
    return found


# -- coefficients against closed forms and scipy ----------------------------------------------


def test_sin_coefficients_closed_form():
    # E[sin(sqrt(q) z) He_k(z)] = Im(i^k) q^(k/2) exp(-q/2)
    q = torch.tensor([0.3, 1.0, 2.5], dtype=D64)
    a, m2, b, m2d = H.coefficients(L.Sin(), q, 12, derivative=True)
    k = np.arange(13)
    im = np.array([0.0 if j % 2 == 0 else (-1.0) ** ((j - 1) // 2) for j in k])
    for i, qi in enumerate(q.tolist()):
        expected = im * qi ** (k / 2) * math.exp(-qi / 2) / np.sqrt(special.factorial(k))
        np.testing.assert_allclose(a[i].numpy(), expected, atol=1e-13)
        # cos: Re(i^k) q^(k/2) exp(-q/2)
        re = np.array([(-1.0) ** (j // 2) if j % 2 == 0 else 0.0 for j in k])
        np.testing.assert_allclose(b[i].numpy(), re * qi ** (k / 2) * math.exp(-qi / 2) / np.sqrt(special.factorial(k)),
                                   atol=1e-13)
    torch.testing.assert_close(m2, (1 - torch.exp(-2 * q)) / 2, rtol=1e-13, atol=1e-15)


def test_erf_coefficients_give_the_arcsin_dual_kernel():
    # sum_k a_k(q1) a_k(q2) rho^k = (2/pi) asin(2c / sqrt((1 + 2 q1)(1 + 2 q2))), and for erf'
    # (4/pi) / sqrt((1 + 2 q1)(1 + 2 q2) - 4 c^2) (CONVENTIONS section 2); |a_k| from the arcsin series
    q = torch.tensor([0.2, 0.7], dtype=D64)
    a, m2, b, _ = H.coefficients(L.Erf(), q, 80, derivative=True)
    for rho in (-0.6, 0.3, 0.9):
        c = rho * math.sqrt(q[0] * q[1])
        d = (1 + 2 * q[0]) * (1 + 2 * q[1])
        series = float((a[0] * a[1] * rho ** torch.arange(81, dtype=D64)).sum())
        assert abs(series - 2 / math.pi * math.asin(2 * c / math.sqrt(d))) < 1e-12
        series_d = float((b[0] * b[1] * rho ** torch.arange(81, dtype=D64)).sum())
        assert abs(series_d - 4 / math.pi / math.sqrt(d - 4 * c * c)) < 1e-10
    s = math.sqrt(2 * 0.7 / (1 + 1.4))
    for n in range(6):
        k = 2 * n + 1
        c_k = math.factorial(2 * n) / (4**n * math.factorial(n) ** 2 * k)
        assert abs(abs(float(a[1, k])) - math.sqrt(2 * c_k / math.pi) * s**k) < 1e-13
        assert abs(float(a[1, k - 1])) < 1e-14  # erf is odd
    torch.testing.assert_close(m2, 2 / math.pi * torch.asin(2 * q / (1 + 2 * q)), rtol=1e-12, atol=0)


def test_gelu_coefficients_against_scipy_quadrature():
    q = 1.7
    a, m2, _, _ = H.coefficients(L.Gelu(), torch.tensor([q], dtype=D64), 8, derivative=False)

    def gelu(t):
        return t * special.ndtr(t)

    for k in range(9):
        def integrand(z, k=k):
            return gelu(math.sqrt(q) * z) * special.eval_hermitenorm(k, z) * math.exp(-z * z / 2)

        ref = integrate.quad(integrand, -15, 15, epsabs=1e-12, epsrel=1e-12, limit=400)[0]
        ref /= math.sqrt(2 * math.pi * math.factorial(k))
        assert abs(float(a[0, k]) - ref) < 1e-11, k


def test_hermite_polynomial_layer_is_one_degree():
    a, m2, _, _ = H.coefficients(L.Hermite(3), torch.ones(1, dtype=D64), 6, derivative=False)
    torch.testing.assert_close(a[0], torch.eye(7, dtype=D64)[3], rtol=0, atol=1e-12)


# -- the sketches ---------------------------------------------------------------------------


def test_tensor_srht_is_unbiased():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 7, generator=g, dtype=D64), torch.randn(2, 40, generator=g, dtype=D64)
    exact = float((x[0] @ x[1]) * (y[0] @ y[1]))
    ests = []
    for s in range(400):
        t = TensorSrht(7, 40, 16, torch.Generator().manual_seed(s))
        z = t(x, y)
        ests.append(float(z[0] @ z[1]))
    ests = np.array(ests)
    scale = float(x.norm(dim=1).prod() * y.norm(dim=1).prod())
    # the mean of 400 draws is within 4 standard errors of the exact product
    assert abs(ests.mean() - exact) < 4 * ests.std() / math.sqrt(len(ests)) + 1e-12 * scale


def test_expansion_is_unbiased_over_draws():
    # one hidden Erf layer: the average of the NNGP features' kernels over draws approaches the
    # exact kernel (the truncation tail, 1e-3 of the second moment, is far below the check)
    spec = L.serial(L.Dense(8, W_std=1.0, b_std=0.2), L.Erf(), L.Dense(1))
    x = _inputs(6, d=5)
    k = spec.kernel(x).nngp
    ests = [(lambda f: f @ f.T)(FeatureMap(spec, 48, seed=s, method="hermite", hermite_tolerance=1e-3)(x).nngp)
            for s in range(40)]
    single = np.mean([relative_error(e, k) for e in ests])
    averaged = relative_error(sum(ests) / len(ests), k)
    assert averaged < 2.5 * single / math.sqrt(len(ests)), (single, averaged)


def test_truncation_degree_honours_the_tolerance():
    # at the calibration rows' variances, the fitted degree K is the smallest whose relative tail
    # is within the tolerance, and the dropped terms (120-term reference) obey the documented
    # bound |sum_{k>K} a_k(q1) a_k(q2) rho^k| <= tol sqrt(m2(q1) m2(q2))
    for act, tol in ((L.Erf, None), (L.Gelu, 1e-3), (L.Sin, 1e-4)):
        fm = FeatureMap(_fc(2, act, width=16), 256, method="hermite", hermite_tolerance=tol)
        steps = _hermite_steps(fm, (12,))
        assert len(steps) == 2
        tol = tol or 4 / 256  # the default: max(1e-3, 4 / m), the sampling floor at small m
        for step in steps:
            assert step.tolerance == tol
            q = step.fit_variances
            a, m2, b, m2d = H.coefficients(act(), q, 120, derivative=True)
            for c, m, deg in ((a, m2, step.degree), (b, m2d, step.degree_ntk)):
                tails = H.relative_tails(c, m)
                assert bool((tails[:, deg] <= tol).all())
                assert deg == 0 or bool((tails[:, deg - 1] > tol).any())  # the smallest such K
                for rho in (1.0, 0.8, -0.5):
                    powers = rho ** torch.arange(deg + 1, 121, dtype=D64)
                    dropped = ((c[:, None, deg + 1:] * c[None, :, deg + 1:]) * powers).sum(-1).abs()
                    assert bool((dropped <= tol * torch.sqrt(m[:, None] * m[None, :]) + 1e-15).all())


def test_exact_variances_are_carried():
    # State.q follows the exact diagonal through Dense, Conv, nonlinearities, FanInSum, LayerNorm, Flatten
    specs = {
        (12,): L.serial(L.Dense(8, W_std=1.4, b_std=0.3), L.Erf(), L.Dense(6, b_std=0.2), L.FanOut(2),
                        L.parallel(L.Identity(), L.serial(L.Gelu(), L.Dense(6, W_std=0.8))), L.FanInSum(),
                        L.Sin(), L.Dense(4, b_std=0.5), L.LayerNorm(), L.Dense(1, W_std=2.0, b_std=0.1)),
        (2, 5, 4): L.serial(L.Conv(3, (2, 2), padding="SAME", W_std=1.3, b_std=0.2), L.Gelu(),
                            L.Conv(3, (3, 2), strides=(2, 1), b_std=0.1), L.Erf(), L.Flatten(), L.Dense(1)),
    }
    for shape, spec in specs.items():
        x = torch.randn(5, *shape, dtype=D64) * 1.3
        step = FeatureMap(spec, 64)._plan(shape)[0]
        q = step(S.input_state(x)).q
        torch.testing.assert_close(q, spec.kernel(x).nngp.diagonal(), rtol=1e-12, atol=1e-14)


# -- accuracy on deep networks ----------------------------------------------------------------


@pytest.mark.parametrize("act", [L.Erf, L.Gelu])
def test_accuracy_at_4096_with_rows_of_different_norms(act):
    x = _inputs(24)
    err = _errors(_fc(3, act), x, 4096)
    assert (err <= 0.1).all(), err


def test_cross_kernels_from_one_map():
    x1, x2 = _inputs(16, seed=1), _inputs(10, seed=2)
    err = _errors(_fc(2, L.Gelu), x1, 4096, x2=x2)
    assert (err <= 0.1).all(), err


@pytest.mark.slow
@pytest.mark.parametrize("act", [L.Erf, L.Gelu])
def test_acceptance_rate_from_1024_to_16384(act):
    spec = _fc(4, act)
    x1, x2 = _inputs(48, seed=3), _inputs(20, seed=4)
    ms = [1024, 4096, 16384]
    errs = np.array([np.mean([_errors(spec, x1, m, seed=s) for s in range(2)], axis=0) for m in ms])
    assert (errs[1] <= 0.1).all(), errs
    slope = np.polyfit(np.log(ms), np.log(errs), 1)[0]
    assert (slope <= -0.35).all(), (errs, slope)
    cross = np.mean([_errors(spec, x1, 4096, seed=s, x2=x2) for s in range(2)], axis=0)
    assert (cross <= 0.1).all(), cross


@pytest.mark.slow
@pytest.mark.parametrize("act", [L.Erf, L.Gelu])
def test_hermite_beats_monte_carlo_on_the_nngp(act):
    # same m, same inputs, mean of 3 draws: the expansion's NNGP error is the smaller one
    # (the NTK errors are close: both sketch the tensor product psi (x) a'; see docs/features.md)
    spec, x = _fc(3, act), _inputs(32, seed=5)
    herm = np.mean([_errors(spec, x, 2048, seed=s) for s in range(3)], axis=0)
    mc = np.mean([_errors(spec, x, 2048, seed=s, method="monte_carlo") for s in range(3)], axis=0)
    assert herm[0] < mc[0], (herm, mc)


# -- dispatch and errors ----------------------------------------------------------------------


def test_auto_keeps_arc_cosine_features_for_the_relu_family():
    spec = L.serial(L.Dense(16, b_std=0.1), L.Relu(), L.Dense(16), L.LeakyRelu(0.1), L.Dense(1))
    x = _inputs(5)
    auto, mc = FeatureMap(spec, 128, seed=3)(x), FeatureMap(spec, 128, seed=3, method="monte_carlo")(x)
    assert torch.equal(auto.nngp, mc.nngp) and torch.equal(auto.ntk, mc.ntk)
    assert not _hermite_steps(FeatureMap(spec, 128), (12,))


def test_auto_falls_back_to_monte_carlo_beyond_the_tolerance():
    # calibrated on rows of variance 50, erf's expansion needs far more than 32 degrees
    spec = _fc(1, L.Erf, width=8)
    big = 7 * torch.ones(2, 12, dtype=D64)
    fm = FeatureMap(spec, 64, calibration=big)
    (step,) = _hermite_steps(fm, (12,))
    assert step.use_fallback
    with pytest.raises(UnsupportedLayerError, match="Erf.*Hermite expansion within the tolerance"):
        FeatureMap(spec, 64, calibration=big, method="HERMITE")(big)


def test_hermite_errors_name_the_problem():
    x = _inputs(3)
    with pytest.raises(UnsupportedLayerError, match="Relu.*tolerance"):
        FeatureMap(_fc(1, L.Relu, width=8), 64, method="hermite", hermite_tolerance=1e-3)(x)
    with pytest.raises(UnsupportedLayerError, match="ExpNormalized.*no scalar activation"):
        FeatureMap(_fc(1, L.ExpNormalized, width=8), 64, method="hermite")(x)
    with pytest.raises(InvalidArgumentError, match="hermite_tolerance"):
        FeatureMap(_fc(1, L.Erf), 64, hermite_tolerance=0.0)
    with pytest.raises(ShapeError, match="calibration"):
        FeatureMap(_fc(1, L.Erf), 64, calibration=torch.ones(2, 5, dtype=D64))(x)


def test_rows_beyond_the_calibration_warn():
    spec = _fc(1, L.Erf, width=8)
    fm = FeatureMap(spec, 128, method="hermite")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AccuracyWarning)
        fm(_inputs(3))  # within the calibration: no warning
    with pytest.warns(AccuracyWarning, match="Erf.*truncated at degree"):
        fm(6 * _inputs(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hermite_features_on_the_inputs_device():
    # the draws are made on the CPU and cast; the GPU's float64 sums round differently (rtol 1e-9)
    spec, x = _fc(2, L.Gelu), _inputs(9)
    fm = FeatureMap(spec, 512, seed=2)
    cpu, gpu = fm(x), fm(x.to("cuda"))
    assert gpu.nngp.device.type == "cuda" and gpu.ntk.device.type == "cuda"
    torch.testing.assert_close(gpu.nngp.cpu(), cpu.nngp, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gpu.ntk.cpu(), cpu.ntk, rtol=1e-9, atol=1e-12)


def test_cnn_with_pooling_before_an_expanded_nonlinearity():
    # after AvgPool the exact variance is unknown (it needs pixel pairs): the step uses |phi|^2
    spec = L.serial(L.Conv(16, (3, 3), padding="SAME", b_std=0.1), L.Gelu(), L.AvgPool((2, 2)),
                    L.Conv(16, (2, 2), padding="SAME", b_std=0.1), L.Erf(), L.GlobalAvgPool(), L.Dense(1, b_std=0.1))
    x = torch.randn(6, 2, 4, 4, dtype=D64)
    fm = FeatureMap(spec, 512, seed=1)
    assert [s.use_fallback for s in _hermite_steps(fm, (2, 4, 4))] == [False, False]
    f = fm(x)
    k = spec.kernel(x)
    nngp, ntk = relative_error(f.nngp @ f.nngp.T, k.nngp), relative_error(f.ntk @ f.ntk.T, k.ntk)
    assert nngp < 0.2 and ntk < 0.2, (nngp, ntk)


def test_hermite_on_relu_is_checked_against_its_tail():
    # issue 19, defect 5: method="hermite" on ReLU. Its expansion's relative tail at degree 32
    # is 0.035 (of a', a step), so with the default tolerance max(1e-3, 4/m) it is refused from
    # m = 128 on, naming the tail; below, 4/m exceeds the tail: the truncation bias (~0.035)
    # is smaller than the sampling error (~1/sqrt(m) per layer), and the features must then be
    # no worse than the Monte Carlo ones (mean of 3 seeds, the same draws for both sides' data).
    spec = _fc(2, L.Relu, width=16)
    x = _inputs(12)
    with pytest.raises(UnsupportedLayerError, match="Relu.*tail of a' is 0.03"):
        FeatureMap(spec, 1024, method="hermite")(x)
    k = spec.kernel(x)

    def err(method: str) -> float:
        out = []
        for seed in range(3):
            f = FeatureMap(spec, 64, seed=seed, method=method)(x)
            out.append(float((f.ntk @ f.ntk.T - k.ntk).norm() / k.ntk.norm()))
        return sum(out) / len(out)

    assert err("hermite") < err("monte_carlo")
