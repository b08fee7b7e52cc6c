"""The Fig. 1 values: torchntk.layers against the independent arc-cosine recursion (1e-8)."""

from __future__ import annotations

import numpy as np
import torch

from torchntk import layers as L
from torchntk.lab import circle_points, fig1_reference, relu_kernels
from torchntk.layers import mlp


def test_fig1_setting_matches_layers_to_1e8():
    gamma, theta = fig1_reference(181)
    spec = L.serial(L.Dense(500, W_std=1.0, b_std=0.1), L.Relu(), L.Dense(500, W_std=1.0, b_std=0.1), L.Relu(),
                    L.Dense(500, W_std=1.0, b_std=0.1), L.Relu(), L.Dense(1, W_std=1.0, b_std=0.1))
    x = torch.from_numpy(np.stack([np.cos(gamma), np.sin(gamma)], 1))
    k = spec.kernel(torch.tensor([[1.0, 0.0]], dtype=torch.float64), x)
    np.testing.assert_allclose(k.ntk[0].numpy(), theta, rtol=0, atol=1e-8)
    # the lab's own spec builder gives the same network
    k2 = mlp(7, 4, 1).kernel(torch.tensor([[1.0, 0.0]], dtype=torch.float64), x)
    np.testing.assert_allclose(k2.ntk[0].numpy(), theta, rtol=0, atol=1e-8)
    # shape of the curve: maximum at gamma = 0, symmetric, positive
    assert np.argmax(theta) == 90 and np.allclose(theta, theta[::-1]) and theta.min() > 0


def test_reference_closed_forms():
    x = circle_points(9)
    # depth 1: a linear model, Theta = Sigma = x.x'/n0 + b^2
    s, t = relu_kernels(x, depth=1, b_std=0.3)
    np.testing.assert_allclose(t, x @ x.T / 2 + 0.09)
    np.testing.assert_allclose(s, t)
    # on the diagonal, angle 0: Sigma_{l+1} = W^2 Sigma_l / 2 + b^2, Theta_{l+1} = W^2 Theta_l / 2 + Sigma_{l+1}
    s4, t4 = relu_kernels(x, depth=4, b_std=0.1)
    sig, th = 0.5 + 0.01, 0.5 + 0.01
    for _ in range(3):
        sig = sig / 2 + 0.01
        th = th / 2 + sig
    np.testing.assert_allclose(np.diag(t4), th)
    np.testing.assert_allclose(np.diag(s4), sig)


def test_reference_against_monte_carlo_expectation():
    # one ReLU step by sampling the Gaussian pair: E[relu(u) relu(v)], E[relu'(u) relu'(v)]
    rng = np.random.default_rng(0)
    q = np.array([[1.3, 0.4], [0.4, 0.8]])
    uv = rng.multivariate_normal([0, 0], q, size=2_000_000)
    e_phi = np.mean(np.maximum(uv[:, 0], 0) * np.maximum(uv[:, 1], 0))
    e_dphi = np.mean((uv[:, 0] > 0) & (uv[:, 1] > 0))
    # x1, x2 in 2-D with Sigma_1 = q (W_std = 1, b_std = 0, n0 = 2): x.x'/2 = q
    L_ = np.linalg.cholesky(2 * q)
    x = L_  # rows x_i with x_i . x_j = 2 q_ij
    s, t = relu_kernels(x, depth=2, W_std=1.0, b_std=0.0)
    assert abs(s[0, 1] - e_phi) < 3e-3
    assert abs(t[0, 1] - (q[0, 1] * e_dphi + e_phi)) < 3e-3
