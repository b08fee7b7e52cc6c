"""Infinite-width kernels of torchntk.layers against neural-tangents' stax (the peer), float64.

Skipped unless neural_tangents imports (run with the peer environment:
``.peer-venv/bin/python -m pytest tests/peer``). Images are channels-first
here and channels-last in the peer; the kernels must agree entry by entry to 1e-9 relative.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

nt = pytest.importorskip("neural_tangents")
jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
stax = nt.stax

from torchntk import layers as L  # noqa: E402

from ._convert import to_peer as _to_peer  # noqa: E402

pytestmark = pytest.mark.peer
RTOL = 1e-9




def _compare(spec: L.Layer, peer: tuple, x1: torch.Tensor, x2: torch.Tensor | None = None, *, ntk: bool = True) -> None:
    ours = spec.kernel(x1, x2)
    _, _, kernel_fn = peer
    theirs = kernel_fn(_to_peer(x1), None if x2 is None else _to_peer(x2), ("nngp", "ntk") if ntk else "nngp")
    pairs = [("nngp", ours.nngp, theirs.nngp if ntk else theirs)]
    if ntk:
        pairs.append(("ntk", ours.ntk, theirs.ntk))
    for name, a, b in pairs:
        b = np.asarray(b)
        assert a.dtype == torch.float64 and b.dtype == np.float64
        assert tuple(a.shape) == b.shape, (name, tuple(a.shape), b.shape)
        scale = float(np.abs(b).max())
        np.testing.assert_allclose(a.numpy(), b, rtol=RTOL, atol=RTOL * scale, err_msg=name)


def _flat(n: int = 5, d: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _images(n: int = 3, c: int = 2, h: int = 5, w: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _fc(ours_act, peer_act, depth: int = 3, W_std: float = 1.4, b_std: float = 0.2, parameterization: str = "ntk"):
    ours, theirs = [], []
    for _ in range(depth - 1):
        ours += [L.Dense(64, W_std=W_std, b_std=b_std, parameterization=parameterization), ours_act]
        theirs += [stax.Dense(64, W_std=W_std, b_std=b_std, parameterization=parameterization), peer_act]
    ours.append(L.Dense(1, W_std=W_std, b_std=b_std, parameterization=parameterization))
    theirs.append(stax.Dense(1, W_std=W_std, b_std=b_std, parameterization=parameterization))
    return L.serial(*ours), stax.serial(*theirs)


ACTIVATIONS = [
    ("relu", L.Relu(), stax.Relu()),
    ("erf", L.Erf(), stax.Erf()),
    ("gelu", L.Gelu(), stax.Gelu()),
    ("leaky_relu", L.LeakyRelu(0.1), stax.LeakyRelu(0.1)),
    ("abs", L.Abs(), stax.Abs()),
    ("abrelu", L.ABRelu(-0.4, 1.3), stax.ABRelu(-0.4, 1.3)),
    ("erf_abc", L.Erf(1.5, 0.6, 0.2), stax.Erf(1.5, 0.6, 0.2)),
    ("sigmoid_like", L.Sigmoid_like(), stax.Sigmoid_like()),
    ("sin", L.Sin(1.2, 0.7, 0.3), stax.Sin(1.2, 0.7, 0.3)),
    ("cos", L.Cos(0.9, 1.1, 0.1), stax.Cos(0.9, 1.1, 0.1)),
    ("rbf", L.Rbf(0.6), stax.Rbf(0.6)),
    ("sign", L.Sign(), stax.Sign()),
    ("exp", L.Exp(0.8, 0.3), stax.Exp(0.8, 0.3)),
    ("gaussian", L.Gaussian(1.3, -0.4), stax.Gaussian(1.3, -0.4)),
    ("monomial", L.Monomial(2), stax.Monomial(2)),
    ("polynomial", L.Polynomial([0.1, 1.0, 0.3]), stax.Polynomial([0.1, 1.0, 0.3])),
]


@pytest.mark.parametrize("name, ours_act, peer_act", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_fully_connected(name, ours_act, peer_act):
    spec, peer = _fc(ours_act, peer_act)
    _compare(spec, peer, _flat())
    _compare(spec, peer, _flat(), _flat(4, seed=1))


def test_fully_connected_standard_parameterization():
    spec, peer = _fc(L.Relu(), stax.Relu(), parameterization="standard")
    _compare(spec, peer, _flat(), _flat(3, seed=2))


def test_theory_network_unit_circle_deep_relu():
    # Jacot et al.'s setting: W_std = 1, b_std = beta, inputs on the unit circle, depth 6
    gamma = torch.linspace(-math.pi, math.pi, 21, dtype=torch.float64)
    x = torch.stack([torch.cos(gamma), torch.sin(gamma)], 1)
    spec, peer = _fc(L.Relu(), stax.Relu(), depth=6, W_std=1.0, b_std=0.1)
    _compare(spec, peer, x)


def _conv_stack(ours_act, peer_act, padding: str = "SAME"):
    ours = [L.Conv(8, (3, 3), padding=padding, W_std=1.3, b_std=0.1), ours_act,
            L.Conv(8, (2, 2), strides=(1, 1), padding="VALID", W_std=1.2, b_std=0.05), ours_act]
    theirs = [stax.Conv(8, (3, 3), padding=padding, W_std=1.3, b_std=0.1), peer_act,
              stax.Conv(8, (2, 2), strides=(1, 1), padding="VALID", W_std=1.2, b_std=0.05), peer_act]
    return ours, theirs


@pytest.mark.parametrize("padding", ["SAME", "VALID", "CIRCULAR"])
def test_cnn_flatten(padding):
    ours, theirs = _conv_stack(L.Relu(), stax.Relu(), padding)
    spec = L.serial(*ours, L.Flatten(), L.Dense(1, b_std=0.1))
    peer = stax.serial(*theirs, stax.Flatten(), stax.Dense(1, b_std=0.1))
    _compare(spec, peer, _images(), _images(2, seed=1))


@pytest.mark.parametrize("act", ["relu", "erf"])
def test_cnn_global_avg_pool(act):
    pair = (L.Relu(), stax.Relu()) if act == "relu" else (L.Erf(), stax.Erf())
    ours, theirs = _conv_stack(*pair)
    spec = L.serial(*ours, L.GlobalAvgPool(), L.Dense(1, b_std=0.1))
    peer = stax.serial(*theirs, stax.GlobalAvgPool(), stax.Dense(1, b_std=0.1))
    _compare(spec, peer, _images())
    _compare(spec, peer, _images(), _images(2, seed=1))


def test_cnn_avg_pool_then_flatten():
    ours, theirs = _conv_stack(L.Gelu(), stax.Gelu())
    spec = L.serial(*ours, L.AvgPool((2, 2), strides=(1, 2)), L.Flatten(), L.Dense(1))
    peer = stax.serial(*theirs, stax.AvgPool((2, 2), strides=(1, 2)), stax.Flatten(), stax.Dense(1))
    _compare(spec, peer, _images(h=6, w=6))


def test_cnn_1d_sum_pool():
    x = torch.randn(3, 2, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    spec = L.serial(L.Conv(6, (3,), padding="SAME", b_std=0.1), L.Abs(), L.SumPool((2,)), L.Flatten(), L.Dense(1))
    peer = stax.serial(
        stax.Conv(6, (3,), padding="SAME", b_std=0.1, dimension_numbers=("NWC", "WIO", "NWC")),
        stax.Abs(),
        stax.SumPool((2,)),
        stax.Flatten(),
        stax.Dense(1),
    )
    _compare(spec, peer, x)


def _residual(ours_norm, peer_norm):
    ours_block = L.serial(L.FanOut(2), L.parallel(L.serial(L.Relu(), L.Dense(64, W_std=1.4, b_std=0.1)), L.Identity()), L.FanInSum())
    peer_block = stax.serial(stax.FanOut(2), stax.parallel(stax.serial(stax.Relu(), stax.Dense(64, W_std=1.4, b_std=0.1)), stax.Identity()), stax.FanInSum())
    spec = L.serial(L.Dense(64, b_std=0.1), ours_block, *ours_norm, ours_block, L.Relu(), L.Dense(1))
    peer = stax.serial(stax.Dense(64, b_std=0.1), peer_block, *peer_norm, peer_block, stax.Relu(), stax.Dense(1))
    return spec, peer


def test_residual_block():
    spec, peer = _residual([], [])
    _compare(spec, peer, _flat(), _flat(3, seed=3))


def test_residual_block_with_layer_norm():
    spec, peer = _residual([L.LayerNorm()], [stax.LayerNorm()])
    _compare(spec, peer, _flat(), _flat(3, seed=3))


def test_conv_residual_with_layer_norm_and_global_avg_pool():
    branch = L.serial(L.Relu(), L.Conv(8, (3, 3), padding="SAME", b_std=0.1))
    pbranch = stax.serial(stax.Relu(), stax.Conv(8, (3, 3), padding="SAME", b_std=0.1))
    spec = L.serial(
        L.Conv(8, (3, 3), padding="SAME"), L.FanOut(2), L.parallel(branch, L.Identity()), L.FanInSum(),
        L.LayerNorm(), L.Relu(), L.GlobalAvgPool(), L.Dense(1),
    )
    peer = stax.serial(
        stax.Conv(8, (3, 3), padding="SAME"), stax.FanOut(2), stax.parallel(pbranch, stax.Identity()), stax.FanInSum(),
        stax.LayerNorm(axis=-1), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1),
    )
    _compare(spec, peer, _images(h=4, w=4))


def test_fan_in_concat_and_prod():
    spec = L.serial(
        L.Dense(64, b_std=0.1), L.FanOut(2), L.parallel(L.Erf(), L.Relu()), L.FanInConcat(), L.Dense(32),
        L.FanOut(2), L.parallel(L.Identity(), L.Dense(32)), L.FanInProd(), L.Dense(1),
    )
    peer = stax.serial(
        stax.Dense(64, b_std=0.1), stax.FanOut(2), stax.parallel(stax.Erf(), stax.Relu()), stax.FanInConcat(), stax.Dense(32),
        stax.FanOut(2), stax.parallel(stax.Identity(), stax.Dense(32)), stax.FanInProd(), stax.Dense(1),
    )
    _compare(spec, peer, _flat())


def test_elementwise_with_closed_form_nngp_fn_matches_peer_elementwise():
    # Elementwise(fn, nngp_fn) derives sdot by autograd (Price's theorem); the peer by JAX.
    def ours_nngp(cov12, var1, var2):
        return (2 / math.pi) * torch.asin(2 * cov12 / torch.sqrt((1 + 2 * var1) * (1 + 2 * var2)))

    def peer_nngp(cov12, var1, var2):
        import jax.numpy as jnp

        return (2 / jnp.pi) * jnp.arcsin(2 * cov12 / jnp.sqrt((1 + 2 * var1) * (1 + 2 * var2)))

    spec, peer = _fc(L.Elementwise(torch.erf, ours_nngp), stax.Elementwise(jax.scipy.special.erf, peer_nngp))
    _compare(spec, peer, _flat())


def test_quadrature_tanh_close_to_peer_numerical():
    # Both numerical: our default rule ("auto": the Hermite series here, or polar where it has
    # not converged) against the peer's Gauss-Hermite (degree 120). At these variances (up to
    # ~7) the peer's product rule is the less accurate one (3e-5 relative on the largest NTK
    # entry; our polar degrees 96 and 128 agree to 1e-7), hence 1e-4.
    spec = L.serial(L.Dense(64, W_std=1.4, b_std=0.2), L.Elementwise(torch.tanh), L.Dense(1, W_std=1.4, b_std=0.2))
    peer = stax.serial(stax.Dense(64, W_std=1.4, b_std=0.2), stax.ElementwiseNumerical(jax.numpy.tanh, deg=120), stax.Dense(1, W_std=1.4, b_std=0.2))
    x = _flat()
    ours = spec.kernel(x)
    theirs = peer[2](_to_peer(x), None, ("nngp", "ntk"))
    np.testing.assert_allclose(ours.nngp.numpy(), np.asarray(theirs.nngp), rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(ours.ntk.numpy(), np.asarray(theirs.ntk), rtol=1e-4, atol=1e-8)


def test_strided_conv_standard_parameterization_global_avg_pool():
    spec = L.serial(
        L.Conv(8, (3, 3), strides=(2, 2), padding="SAME", W_std=1.5, b_std=0.2, parameterization="standard"), L.Relu(),
        L.Conv(8, (2, 2), strides=(1, 2), padding="VALID", parameterization="standard"), L.Erf(),
        L.GlobalAvgPool(), L.Dense(1, parameterization="standard"),
    )
    peer = stax.serial(
        stax.Conv(8, (3, 3), strides=(2, 2), padding="SAME", W_std=1.5, b_std=0.2, parameterization="standard"), stax.Relu(),
        stax.Conv(8, (2, 2), strides=(1, 2), padding="VALID", parameterization="standard"), stax.Erf(),
        stax.GlobalAvgPool(), stax.Dense(1, parameterization="standard"),
    )
    _compare(spec, peer, _images(h=7, w=6), _images(2, h=7, w=6, seed=4))


def test_layer_norm_over_channels_and_pixels_then_flatten():
    # (torchntk only allows LayerNorm on Gaussian pre-activations, where the mean it removes is 0
    # at infinite width; the peer's kernel ignores the mean everywhere.)
    spec = L.serial(L.Conv(8, (3, 3), padding="SAME", b_std=0.3), L.LayerNorm(axis=(1, 2, 3)), L.Gelu(), L.Flatten(), L.Dense(1))
    peer = stax.serial(stax.Conv(8, (3, 3), padding="SAME", b_std=0.3), stax.LayerNorm(axis=(1, 2, 3)), stax.Gelu(), stax.Flatten(), stax.Dense(1))
    _compare(spec, peer, _images(h=4, w=4))
