"""An independent closed form of the ReLU network's kernels (numpy, arc-cosine form).

This module is the yardstick of the kernel-convergence study: it recomputes the infinite-width
NNGP ``Sigma`` and NTK ``Theta`` of the theory's fully connected ReLU network with plain numpy
and ``arccos``, sharing no code with :mod:`torchntk.layers` (which uses the ``atan2`` form of
CONVENTIONS section 2). Two independent recursions that agree to 1e-8 check each other.

The network has ``depth`` affine layers ``z = W_std * W a / sqrt(n) + b_std * b`` with ReLU
between them (none after the last). With ``q = Sigma(x, x')`` and the correlation
``cos(t) = q12 / sqrt(q11 q22)``, the degree-1 arc-cosine kernel gives::

    Sigma_1(x, x') = W_std^2 * x . x' / n0 + b_std^2,          Theta_1 = Sigma_1
    relu:   E[phi(u) phi(v)]   = sqrt(q11 q22) (sin t + (pi - t) cos t) / (2 pi)
            E[phi'(u) phi'(v)] = (pi - t) / (2 pi)
    Sigma_{l+1} = W_std^2 E[phi phi] + b_std^2
    Theta_{l+1} = W_std^2 Theta_l E[phi' phi'] + Sigma_{l+1}

Example:
    >>> g = np.linspace(-np.pi, np.pi, 5)
    >>> x = np.stack([np.cos(g), np.sin(g)], 1)
    >>> sigma, theta = relu_kernels(np.array([[1.0, 0.0]]), x, depth=4, b_std=0.1)
    >>> theta.shape
    (1, 5)
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError

__all__ = ["relu_kernels", "circle_points", "fig1_reference"]


def relu_kernels(
    x1: np.ndarray,
    x2: np.ndarray | None = None,
    *,
    depth: int,
    W_std: float = 1.0,
    b_std: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """NNGP and NTK ``(N1, N2)`` float64 of a depth-``depth`` ReLU MLP (arc-cosine recursion).

    Args:
        x1: ``(N1, n0)`` inputs.
        x2: ``(N2, n0)`` inputs; ``None`` means ``x1``.
        depth: number of affine layers ``L >= 1`` (``L - 1`` ReLU hidden layers).
        W_std, b_std: the layers' weight and bias factors (the theory: ``1`` and ``beta``).

    Returns:
        ``(sigma, theta)``: the output layer's NNGP and NTK, both ``(N1, N2)`` float64.
    """
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = x1 if x2 is None else np.asarray(x2, dtype=np.float64)
    if depth < 1:
        raise InvalidArgumentError(f"`depth` must be >= 1, got {depth}")
    n0 = x1.shape[1]
    w2, b2 = W_std**2, b_std**2
    s12 = w2 * (x1 @ x2.T) / n0 + b2
    s11 = w2 * np.sum(x1 * x1, 1) / n0 + b2
    s22 = w2 * np.sum(x2 * x2, 1) / n0 + b2
    t12 = s12.copy()
    for _ in range(depth - 1):
        norm = np.sqrt(np.outer(s11, s22))
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.where(norm > 0, s12 / np.where(norm > 0, norm, 1.0), 0.0)
        ang = np.arccos(np.clip(cos, -1.0, 1.0))
        e_phi = norm * (np.sin(ang) + (np.pi - ang) * np.cos(ang)) / (2 * np.pi)
        e_dphi = (np.pi - ang) / (2 * np.pi)
        s12 = w2 * e_phi + b2
        # the diagonal: angle 0, E[phi(u)^2] = q / 2
        s11 = w2 * s11 / 2 + b2
        s22 = w2 * s22 / 2 + b2
        t12 = w2 * t12 * e_dphi + s12
    return s12, t12


def circle_points(n: int) -> np.ndarray:
    """``(n, 2)`` points ``(cos g, sin g)`` for ``n`` angles ``g`` evenly spaced in ``[-pi, pi]``."""
    g = np.linspace(-np.pi, np.pi, n)
    return np.stack([np.cos(g), np.sin(g)], axis=1)


def fig1_reference(n_angles: int = 101, *, depth: int = 4, b_std: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Jacot et al.'s Figure 1 curve: ``(gamma, Theta_inf(x0, x(gamma)))`` with ``x0 = (1, 0)``.

    ``x(gamma) = (cos gamma, sin gamma)`` on the unit circle, ``n0 = 2``, ReLU, ``W_std = 1``.
    Returns the angles ``(n_angles,)`` and the kernel values ``(n_angles,)``, float64.
    """
    gamma = np.linspace(-np.pi, np.pi, n_angles)
    x = np.stack([np.cos(gamma), np.sin(gamma)], axis=1)
    _, theta = relu_kernels(np.array([[1.0, 0.0]]), x, depth=depth, W_std=1.0, b_std=b_std)
    return gamma, theta[0]
