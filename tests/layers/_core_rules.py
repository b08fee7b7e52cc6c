"""A ReLU written inline for the core tests (independent of the activations module)."""

from __future__ import annotations

import math

import numpy as np
import torch

from torchntk.layers import ElementwiseLayer


class InlineRelu(ElementwiseLayer):
    """ReLU with the arc-cosine rule of CONVENTIONS section 2 (atan2 form)."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    def rule(self, q11, q12, q22):
        det = q11 * q22 - q12 * q12
        s = torch.sqrt(torch.clamp(det, min=1e-300)) * (det > 0)
        t = torch.atan2(s, q12)
        return (s + (math.pi - t) * q12) / (2 * math.pi), (math.pi - t) / (2 * math.pi)


class InlineErf(ElementwiseLayer):
    """Erf with the closed form of CONVENTIONS section 2."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.erf(x)

    def rule(self, q11, q12, q22):
        a = (1 + 2 * q11) * (1 + 2 * q22)
        sigma = (2 / math.pi) * torch.asin(2 * q12 / torch.sqrt(a))
        sdot = (4 / math.pi) / torch.sqrt(a - 4 * q12 * q12)
        return sigma, sdot


def numpy_relu_ntk(x: np.ndarray, depth: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Direct numpy arc-cosine recursion of Jacot et al. (W_std=1, b_std=beta), depth layers.

    Returns ``(Sigma_L, Theta_L)`` of the network with ``depth`` Dense layers and ReLU between.
    """
    sigma = x @ x.T / x.shape[1] + beta**2
    theta = sigma.copy()
    for _ in range(depth - 1):
        d = np.sqrt(np.diag(sigma))
        rho = np.clip(sigma / np.outer(d, d), -1.0, 1.0)
        ang = np.arccos(rho)
        new = np.outer(d, d) * (np.sin(ang) + (np.pi - ang) * rho) / (2 * np.pi)
        sdot = (np.pi - ang) / (2 * np.pi)
        sigma = new + beta**2
        theta = theta * sdot + sigma
    return sigma, theta
