"""Shared helpers of the dynamics tests: random PSD kernels and reference formulas."""

from __future__ import annotations

import numpy as np
import scipy.linalg as sl
import torch


def random_kernels(n: int, m: int, o: int | None = None, seed: int = 0, rank: int | None = None):
    """Joint PSD kernel over n train + m test points; returns (K_train, K_test_train, K_test_test).

    Scalar ``(n, n)`` blocks when ``o`` is None, else full ``(n, n, o, o)`` ones.
    """
    g = torch.Generator().manual_seed(seed)
    dim = (n + m) * (o or 1)
    a = torch.randn(dim, rank or dim, generator=g, dtype=torch.float64)
    k = a @ a.T / (rank or dim) + 0.05 * torch.eye(dim, dtype=torch.float64)
    if o is None:
        return k[:n, :n], k[n:, :n], k[n:, n:]
    # sample-major flattened -> (n+m, n+m, o, o)
    full = k.reshape(n + m, o, n + m, o).permute(0, 2, 1, 3)
    return full[:n, :n], full[n:, :n], full[n:, n:]


def flat(k: torch.Tensor) -> np.ndarray:
    """Scalar kernels unchanged; full (N1, N2, O, O) -> sample-major (N1*O, N2*O)."""
    if k.ndim == 2:
        return k.numpy()
    n1, n2, o, _ = k.shape
    return k.permute(0, 2, 1, 3).reshape(n1 * o, n2 * o).numpy()


def reference(ktt, ktx, y, f0, f0x, t=None, lr=None, steps=None):
    """Train and test outputs from scipy.linalg.expm or a matrix power (CONVENTIONS sec. 4)."""
    n = y.shape[0]
    kn, kx = flat(ktt), flat(ktx)
    full = ktt.ndim == 4
    vec = (lambda a: a.numpy().reshape(-1, 1)) if full else (lambda a: a.numpy())
    r0 = vec(f0) - vec(y)
    if lr is None:
        prop = sl.expm(-t * kn / n)
    else:
        prop = np.linalg.matrix_power(np.eye(kn.shape[0]) - lr * kn / n, steps)
    rt = prop @ r0
    ftest = vec(f0x) - kx @ np.linalg.solve(kn, (np.eye(kn.shape[0]) - prop) @ r0)
    return (vec(y) + rt).reshape(y.shape), ftest.reshape(f0x.shape)
