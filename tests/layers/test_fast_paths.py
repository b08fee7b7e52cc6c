"""The no-grad fast paths of the analytic recursion give the same numbers as the safe paths."""

import pytest
import torch

from torchntk import layers as L

DT = torch.float64


def _grid():
    g = torch.Generator().manual_seed(0)
    q11 = torch.rand(200, generator=g, dtype=DT) * 3
    q22 = torch.rand(200, generator=g, dtype=DT) * 3
    c = torch.rand(200, generator=g, dtype=DT) * 2 - 1
    c[:10], c[10:20] = 1.0, -1.0  # correlation exactly +-1
    q11[20:25] = 0.0  # zero variance
    q12 = c * (q11 * q22).sqrt()
    q12[25:30] = 0.0
    q11[25:30] = q22[25:30] = 0.0  # all zero: the angle is pi/2 by convention
    return q11, q12, q22


@pytest.mark.parametrize("layer", [L.Relu(), L.LeakyRelu(0.2), L.Abs(), L.ABRelu(-0.3, 1.7)])
def test_no_grad_rule_equals_safe_rule(layer):
    q11, q12, q22 = _grid()
    fast = layer.rule(q11, q12, q22)  # no input requires grad: the fast path
    safe = layer.rule(q11, q12.clone().requires_grad_(True), q22)  # autograd-safe path
    for f, s in zip(fast, safe):
        assert torch.isfinite(f).all()
        torch.testing.assert_close(f, s.detach(), rtol=1e-15, atol=1e-15)


def test_threaded_blocks_equal_one_block_and_grad_path():
    # Many blocks (small batch_size) run on worker threads; they must equal one block, and the
    # kernel computed with autograd recording (serial, safe rules).
    spec = L.serial(L.Dense(64, W_std=1.5, b_std=0.1), L.Relu(), L.Dense(64, W_std=1.5, b_std=0.1),
                    L.Relu(), L.Dense(1))
    x = torch.randn(300, 5, dtype=DT, generator=torch.Generator().manual_seed(1))
    one = spec.kernel(x, batch_size=300)
    many = spec.kernel(x, batch_size=17)
    xg = x.clone().requires_grad_(True)
    with_grad = spec.kernel(xg, batch_size=300)
    # Off the diagonal the three agree to rounding (the input Gram's matmul rounds differently
    # per block shape). The diagonal (correlation 1, where the ReLU's s = sqrt(q11 q22 - q12^2)
    # would amplify any last-bit gap to ~1e-8) sees q12 = q11 = q22 exactly in every blocking, so
    # s = 0 and t = 0 exactly: only the per-op rounding of the elementwise rules remains, a few
    # ulp through two layers (other SIMD code paths may round a vectorized op differently).
    off = ~torch.eye(300, dtype=torch.bool)
    for a, b, c in [(one.nngp, many.nngp, with_grad.nngp), (one.ntk, many.ntk, with_grad.ntk)]:
        c = c.detach()
        torch.testing.assert_close(a[off], b[off], rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(a[off], c[off], rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(a.diagonal(), b.diagonal(), rtol=1e-14, atol=0)
        torch.testing.assert_close(a.diagonal(), c.diagonal(), rtol=1e-15, atol=0)
        # Symmetric to rounding, not bit for bit: entry (i, j) and (j, i) get the same input
        # bits, but a vectorized loop and its scalar tail (or SIMD lanes of another width, AVX2
        # vs AVX-512) may round atan2 differently by an ulp; through two layers that stays a few
        # ulp of the entry.
        torch.testing.assert_close(a, a.T, rtol=1e-14, atol=0)
        torch.testing.assert_close(b, b.T, rtol=1e-14, atol=0)


def test_graph_blocks_agree_and_keep_the_self_covariance_on_the_diagonal():
    # Dense Aggregate in blocks (per-pair maps shared by Sigma and Theta, Theta = Sigma mapped
    # once after the first Dense, cov1 of a symmetric block taken from its diagonal) against one
    # block; the ReLU rules then see q12 = sqrt(q11 q22) exactly on the diagonal.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(13, 3, 6, generator=g, dtype=DT)
    p = torch.rand(13, 6, 6, generator=g, dtype=DT) * (torch.rand(13, 6, 6, generator=g) < 0.4)
    head = L.serial(L.Dense(64, b_std=0.1), L.Aggregate(), L.Relu(), L.Dense(64, W_std=1.3), L.Aggregate(), L.Relu())
    one = head.kernel(x, pattern=p, diagonal_spatial=False, block_size=13)
    many = head.kernel(x, pattern=p, diagonal_spatial=False, block_size=4)
    n = torch.arange(13)
    for k in (one, many):
        # The last Aggregate takes cov1 from the diagonal (the same bits); the last ReLU then runs
        # its rule on cov1 (N, V, V) and on nngp (N, N, V, V) apart: the same inputs, but an entry
        # may take atan2's SIMD loop in one tensor and its scalar tail in the other (an ulp of
        # t <= pi/2, ~1e-16 of sigma).
        torch.testing.assert_close(k.cov1, k.nngp[n, n], rtol=1e-14, atol=0)
    for a, b in [(one.nngp, many.nngp), (one.ntk, many.ntk)]:
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)
    # (Theta is symmetric only to ~1e-8 relative: two nodes with the same single predecessor have
    # correlation 1, where sdot's angle turns a last-bit gap into ~1e-8; the peer alike.)
    torch.testing.assert_close(many.nngp, many.nngp.permute(1, 0, 3, 2), rtol=1e-13, atol=1e-14)
    # Theta mapped once where it equals Sigma: the same numbers as mapping both (autograd path)
    xg = x.clone().requires_grad_(True)
    safe = head.kernel(xg, pattern=p, diagonal_spatial=False, block_size=13)
    torch.testing.assert_close(one.ntk, safe.ntk.detach(), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(one.nngp, safe.nngp.detach(), rtol=1e-13, atol=1e-14)
