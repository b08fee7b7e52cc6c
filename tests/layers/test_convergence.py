"""Analytic kernels of torchntk.layers against Monte Carlo averages of the finite networks.

The finite network of a spec is ``spec.module(...)``; averaging its output covariance and its
empirical NTK over random initializations estimates ``spec.kernel`` with an error of order
``width^(-1/2)`` (plus ``n_samples^(-1/2)``). Sizes are small to keep the suite fast.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchntk import layers as L


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _check(make, x: torch.Tensor, n_samples: int, seed: int = 0, tol: float = 0.05) -> tuple[float, float]:
    """``make(out_dim)`` builds the spec with ``out_dim`` outputs (the kernel does not depend on it).

    The NNGP estimate averages ``f(x) f(x')`` over ``4 * n_samples * 256`` outputs (forward passes
    only); the NTK estimate averages the empirical NTK of networks with 2 outputs.
    """
    k = make(1).kernel(x)
    mc_nngp = L.monte_carlo_kernel(make(256), x, n_samples=4 * n_samples, seed=seed, ntk=False)
    mc_ntk = L.monte_carlo_kernel(make(2), x, n_samples=n_samples, seed=seed + 1, nngp=False)
    e_nngp, e_ntk = _rel(mc_nngp.nngp, k.nngp), _rel(mc_ntk.ntk, k.ntk)
    assert e_nngp < tol and e_ntk < tol, (e_nngp, e_ntk)
    return e_nngp, e_ntk


def _inputs(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def test_mlp_relu_matches_monte_carlo():
    def make(out: int) -> L.Layer:
        return L.serial(L.Dense(1024, b_std=0.1), L.Relu(), L.Dense(1024, b_std=0.1), L.Relu(), L.Dense(out, b_std=0.1))

    _check(make, _inputs(4, 3), n_samples=8)


@pytest.mark.slow  # ~15 s; Erf's closed form is also checked against quadrature and the peer
def test_mlp_erf_matches_monte_carlo():
    def make(out: int) -> L.Layer:
        return L.serial(L.Dense(1024, W_std=1.5, b_std=0.2), L.Erf(), L.Dense(1024, W_std=1.5), L.Erf(), L.Dense(out))

    _check(make, _inputs(4, 3, seed=1), n_samples=8)


def test_cnn_flatten_matches_monte_carlo():
    def make(out: int) -> L.Layer:
        return L.serial(
            L.Conv(1024, (3, 3), padding="SAME", b_std=0.1), L.Relu(),
            L.Conv(1024, (2, 2), strides=(2, 1), padding="VALID"), L.Relu(),
            L.Flatten(), L.Dense(out),
        )

    _check(make, _inputs(3, 2, 4, 3, seed=2), n_samples=4)


def test_cnn_global_avg_pool_matches_monte_carlo():
    def make(out: int) -> L.Layer:
        return L.serial(
            L.Conv(1024, (3, 3), padding="CIRCULAR"), L.Relu(),
            L.Conv(1024, (2, 2), padding="SAME", b_std=0.2), L.Relu(),
            L.GlobalAvgPool(), L.Dense(out),
        )

    _check(make, _inputs(3, 2, 4, 3, seed=3), n_samples=4)


def test_residual_block_with_layernorm_matches_monte_carlo():
    block = L.serial(
        L.FanOut(2),
        L.parallel(L.Identity(), L.serial(L.Relu(), L.Dense(1024, W_std=1.3, b_std=0.1))),
        L.FanInSum(),
        L.LayerNorm(),
    )
    def make(out: int) -> L.Layer:
        return L.serial(L.Dense(1024, b_std=0.1), block, L.Relu(), L.Dense(out))

    _check(make, _inputs(4, 3, seed=4), n_samples=8)


@pytest.mark.slow
def test_cnn_avgpool_standard_parameterization_matches_monte_carlo():
    # standard parameterization: the NTK carries the fan-ins of the spec's finite widths
    def make(out: int) -> L.Layer:
        return L.serial(
            L.Conv(1024, 2, padding="SAME", parameterization="standard", b_std=0.3), L.Relu(),
            L.AvgPool(2), L.Flatten(), L.Dense(out, parameterization="standard"),
        )

    _check(make, _inputs(3, 2, 5, seed=5), n_samples=8)


@pytest.mark.slow
def test_error_falls_as_inverse_sqrt_width():
    x = _inputs(4, 3, seed=6)
    widths = [64, 256, 1024, 4096]
    errors = []
    for w in widths:
        spec = L.serial(L.Dense(w, b_std=0.1), L.Relu(), L.Dense(w, b_std=0.1), L.Relu(), L.Dense(1))
        k = spec.kernel(x)
        # one output, many draws: the spread of the single-draw NTK around its limit
        est = []
        for s in range(40):
            mc = L.monte_carlo_kernel(spec, x, n_samples=1, seed=1000 * w + s, nngp=False)
            est.append(_rel(mc.ntk, k.ntk) ** 2)
        errors.append(math.sqrt(float(np.mean(est))))
    slope = np.polyfit(np.log(widths), np.log(errors), 1)[0]
    assert -0.7 <= slope <= -0.3, (slope, errors)
