"""Empirical kernels at scale: tiled kernel functions of a model, and NTK-vector products."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchntk.scale import KernelOperator, cg_solve, kernel_fn_from_model, tiled_kernel

empirical = pytest.importorskip("torchntk.empirical")


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3)).double().eval()


def _x(n, seed=0):
    return torch.randn(n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _brute_full(net, x):
    """Theta[i, j, a, b] from per-example Jacobians by torch.autograd (brute force)."""
    params = [p for p in net.parameters()]
    rows = []
    for i in range(x.shape[0]):
        out = net(x[i : i + 1])[0]
        for a in range(out.shape[0]):
            g = torch.autograd.grad(out[a], params, retain_graph=True)
            rows.append(torch.cat([t.reshape(-1) for t in g]))
    j = torch.stack(rows)  # (N*O, P), row i*O + a
    return (j @ j.T).reshape(x.shape[0], 3, x.shape[0], 3).permute(0, 2, 1, 3)


@pytest.mark.parametrize("mode", ["full", "mean"])
def test_tiled_model_kernel_equals_empirical_ntk(mode):
    net, x, x2 = _net(), _x(40), _x(25, seed=1)
    fn = kernel_fn_from_model(net, mode=mode)
    brute = _brute_full(net, x)
    ref = brute if mode == "full" else torch.diagonal(brute, dim1=2, dim2=3).mean(-1)
    torch.testing.assert_close(tiled_kernel(fn, x, block_size=16, progress=False), ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(tiled_kernel(fn, x, x2, block_size=16, progress=False),
                               empirical.empirical_ntk(net, x, x2, mode=mode), rtol=1e-10, atol=1e-12)


def test_model_identity_follows_the_weights():
    a = kernel_fn_from_model(_net(0)).torchntk_identity
    b = kernel_fn_from_model(_net(1)).torchntk_identity
    assert a["model"] != b["model"] and a == kernel_fn_from_model(_net(0)).torchntk_identity


@pytest.mark.parametrize("mode", ["full", "mean"])
def test_ntvp_operator_without_storing_theta(mode):
    net, x = _net(), _x(30)
    brute = _brute_full(net, x)
    dense = brute.permute(0, 2, 1, 3).reshape(90, 90) if mode == "full" else torch.diagonal(brute, dim1=2, dim2=3).mean(-1)
    op = KernelOperator.from_model(net, x, mode=mode, block_size=16, diag_reg=1.0)
    n = dense.shape[0]
    # the whole operator in one block product with the identity
    np.testing.assert_allclose(op @ np.eye(n), dense.numpy() + np.eye(n), rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_cg_on_the_ntvp_operator():
    net, x = _net(), _x(30)
    brute = _brute_full(net, x)
    dense = torch.diagonal(brute, dim1=2, dim2=3).mean(-1).numpy()
    op = KernelOperator.from_model(net, x, mode="mean", block_size=16, diag_reg=1.0)
    y = torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    alpha, info = cg_solve(op, y, rtol=1e-9)
    assert info["converged"]
    np.testing.assert_allclose(alpha.numpy(), np.linalg.solve(dense + np.eye(30), y.numpy()), rtol=1e-6, atol=1e-9)
