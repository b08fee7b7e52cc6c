"""Monte Carlo kernels: bookkeeping against manual draws, and convergence to the analytic kernels."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchntk
from torchntk import layers as L
from torchntk.errors import InvalidArgumentError, ShapeError

F64 = torch.float64


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_running_estimate_is_the_mean_of_the_individual_draws():
    spec = L.serial(L.Dense(16, b_std=0.1), L.Erf(), L.Dense(3))
    x = torch.randn(5, 2, dtype=F64)
    x2 = torch.randn(4, 2, dtype=F64)
    running = list(L.monte_carlo_kernels(spec, x, x2, n_samples=3, seed=7, mode="full"))
    assert [r.n_samples for r in running] == [1, 2, 3]
    # the same draws by hand: one generator, one spec.module per draw
    g = torch.Generator().manual_seed(7)
    nngps, ntks = [], []
    for _ in range(3):
        net = spec.module((2,), generator=g, dtype=F64)
        with torch.no_grad():
            f1, f2 = net(x), net(x2)
        nngps.append(torch.einsum("ia,jb->ijab", f1, f2))
        ntks.append(torchntk.empirical_ntk(net, x, x2, mode="full"))
    for s, r in enumerate(running, start=1):
        torch.testing.assert_close(r.nngp, torch.stack(nngps[:s]).mean(0))
        torch.testing.assert_close(r.ntk, torch.stack(ntks[:s]).mean(0))
    final = L.monte_carlo_kernel(spec, x, x2, n_samples=3, seed=7, mode="full")
    torch.testing.assert_close(final.ntk, running[-1].ntk, rtol=0, atol=0)
    # the other modes are reductions of the full one
    diag = L.monte_carlo_kernel(spec, x, x2, n_samples=3, seed=7, mode="diagonal")
    mean = L.monte_carlo_kernel(spec, x, x2, n_samples=3, seed=7, mode="mean")
    torch.testing.assert_close(diag.nngp, final.nngp.diagonal(dim1=2, dim2=3))
    torch.testing.assert_close(mean.ntk, final.ntk.diagonal(dim1=2, dim2=3).mean(-1))
    torch.testing.assert_close(mean.nngp, final.nngp.diagonal(dim1=2, dim2=3).mean(-1))


def test_factories_with_and_without_generator_are_reproducible_and_keep_the_global_rng():
    x = torch.randn(4, 3)

    def plain():
        return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))

    def seeded(g):
        with torch.random.fork_rng():
            net = plain()
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(generator=g)
        return net

    for factory in (plain, seeded):
        state = torch.get_rng_state()
        a = L.monte_carlo_kernel(factory, x, n_samples=2, seed=3)
        assert torch.equal(torch.get_rng_state(), state)
        b = L.monte_carlo_kernel(factory, x, n_samples=2, seed=3)
        c = L.monte_carlo_kernel(factory, x, n_samples=2, seed=4)
        assert a.nngp.dtype == a.ntk.dtype == F64
        assert torch.equal(a.ntk, b.ntk) and not torch.equal(a.ntk, c.ntk)
        torch.testing.assert_close(a.ntk, a.ntk.T)


def test_fallback_for_layers_without_a_rule_maxpool_and_batchnorm():
    # MaxPool and BatchNorm have no infinite-width rule in torchntk.layers: Monte Carlo covers them.
    def factory():
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32, 1)
        )

    x = torch.randn(3, 1, 4, 4, dtype=F64)
    est = L.monte_carlo_kernel(lambda: factory().double(), x, n_samples=2, seed=0, nngp=False)
    assert est.nngp is None and est.ntk.shape == (3, 3)
    torch.testing.assert_close(est.ntk, est.ntk.T)
    assert float(torch.linalg.eigvalsh(est.ntk).min()) > -1e-10


def test_eval_mode_batchnorm_is_the_network_without_it_rescaled():
    # At initialization an eval-mode BatchNorm1d is x / sqrt(1 + eps): the Monte Carlo NTK of a
    # network with it equals (same draws) that of the network without it, up to that factor.
    eps = 0.25

    def net(bn: bool):
        def make(g):
            with torch.random.fork_rng():
                torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
                lin1, lin2 = nn.Linear(2, 32).double(), nn.Linear(32, 1, bias=False).double()
            norm = nn.BatchNorm1d(32, eps=eps, affine=False).double() if bn else nn.Identity()
            return nn.Sequential(lin1, norm, lin2)

        return make

    x = torch.randn(4, 2, dtype=F64)
    with_bn = L.monte_carlo_kernel(net(True), x, n_samples=2, seed=1, params="2")
    without = L.monte_carlo_kernel(net(False), x, n_samples=2, seed=1, params="2")
    torch.testing.assert_close(with_bn.ntk, without.ntk / (1 + eps))
    torch.testing.assert_close(with_bn.nngp, without.nngp / (1 + eps))


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"n_samples": 0}, InvalidArgumentError),
        ({"n_samples": 2, "mode": "trace"}, InvalidArgumentError),
        ({"n_samples": 2, "nngp": False, "ntk": False}, InvalidArgumentError),
        ({"n_samples": 2, "seed": 1, "generator": torch.Generator()}, InvalidArgumentError),
    ],
)
def test_bad_arguments(kwargs, error):
    spec = L.serial(L.Dense(4), L.Relu(), L.Dense(1))
    with pytest.raises(error):
        L.monte_carlo_kernels(spec, torch.randn(2, 3), **kwargs)  # raised eagerly, not at next()


def test_bad_factory_and_inputs():
    x = torch.randn(2, 3)
    with pytest.raises(InvalidArgumentError, match="model_factory"):
        L.monte_carlo_kernel(nn.Linear(3, 1), x, n_samples=1)
    with pytest.raises(InvalidArgumentError, match="nn.Module"):
        L.monte_carlo_kernel(lambda: 3, x, n_samples=1)
    with pytest.raises(ShapeError):
        L.monte_carlo_kernel(lambda: nn.Linear(3, 1), x, torch.randn(2, 4), n_samples=1)


def _tanh_mlp(out: int) -> L.Layer:
    tanh = L.Elementwise(torch.tanh)
    return L.serial(L.Dense(1024, W_std=1.5, b_std=0.2), tanh, L.Dense(1024, W_std=1.5, b_std=0.2), tanh, L.Dense(out, b_std=0.1))


def test_tanh_mlp_quadrature_kernel_matches_monte_carlo_at_width_1024():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, generator=g, dtype=F64)
    exact = _tanh_mlp(1).kernel(x)
    # NNGP: each draw's outputs are rank one; average many independent outputs (a wide last layer).
    est_nngp = L.monte_carlo_kernel(_tanh_mlp(256), x, n_samples=16, seed=1, ntk=False)
    assert _rel(est_nngp.nngp, exact.nngp) < 0.05
    # NTK: concentrates with the width already for one output.
    est_ntk = L.monte_carlo_kernel(_tanh_mlp(1), x, n_samples=2, seed=2, nngp=False)
    assert _rel(est_ntk.ntk, exact.ntk) < 0.05


@pytest.mark.slow
def test_tanh_mlp_running_error_falls_with_draws_and_width():
    x = torch.randn(3, 4, dtype=F64)
    exact = _tanh_mlp(1).kernel(x)
    errors = [_rel(e.nngp, exact.nngp) for e in L.monte_carlo_kernels(_tanh_mlp(64), x, n_samples=64, seed=0, ntk=False)]
    assert errors[-1] < 0.5 * max(errors[:4])


@pytest.mark.slow
def test_single_draw_ntk_error_falls_as_inverse_sqrt_width():
    # The finite-width NTK fluctuates around the limit with standard deviation ~ width^(-1/2):
    # the mean relative error of single draws has a log-log slope near -1/2.
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=F64)

    def spec(width: int) -> L.Layer:
        return L.serial(L.Dense(width, b_std=0.1), L.Elementwise(torch.tanh), L.Dense(width, b_std=0.1), L.Relu(), L.Dense(1))

    exact = spec(8).kernel(x).ntk
    widths = [32, 64, 128, 256, 512, 1024]
    errors = []
    for w in widths:
        draws = L.monte_carlo_kernels(spec(w), x, n_samples=32 if w <= 256 else 16, seed=w, nngp=False)
        prev, errs = None, []
        for est in draws:  # recover each draw from the running means
            single = est.ntk * est.n_samples - (0 if prev is None else prev.ntk * prev.n_samples)
            errs.append(_rel(single, exact))
            prev = est
        errors.append(math.sqrt(sum(e * e for e in errs) / len(errs)))  # RMS over draws
    slope = torch.linalg.lstsq(
        torch.stack([torch.log(torch.tensor(widths, dtype=F64)), torch.ones(len(widths), dtype=F64)], 1),
        torch.log(torch.tensor(errors, dtype=F64))[:, None],
    ).solution[0, 0]
    assert -0.7 <= float(slope) <= -0.3, (errors, float(slope))


def test_masked_padded_batch_converges_to_the_analytic_masked_kernel():
    """``mask=``: each draw sees a padded batch as the unpadded one (same weights, same
    outputs), and the average converges to ``spec.kernel(..., mask=...)``. At width W, S draws
    and O outputs averaged the NTK's relative error is about ``1/sqrt(W S)`` (~0.04 here), the
    NNGP's about ``sqrt(2 / (S O))`` (~0.14): bounds 0.15 and 0.4."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    x2 = torch.randn(3, 3, 4, generator=g, dtype=torch.float64)
    xp = torch.cat([x, 9.0 + torch.randn(4, 3, 2, generator=g, dtype=torch.float64)], 2)  # padding: junk
    x2p = torch.cat([x2, torch.randn(3, 3, 3, generator=g, dtype=torch.float64)], 2)
    m1 = torch.zeros(4, 7, dtype=torch.bool)
    m1[:, 5:] = True
    m2 = torch.zeros(3, 7, dtype=torch.bool)
    m2[:, 4:] = True
    spec = L.serial(L.Conv(64, 1, b_std=0.1), L.Relu(), L.GlobalAvgPool(), L.Dense(8))
    est = L.monte_carlo_kernel(spec, xp, x2p, n_samples=12, seed=1, mask=(m1, m2))
    exact = spec.kernel(xp, x2p, mask=(m1, m2))
    assert _rel(est.ntk, exact.ntk) < 0.15 and _rel(est.nngp, exact.nngp) < 0.4, (_rel(est.ntk, exact.ntk), _rel(est.nngp, exact.nngp))
    # the same draws on the unpadded sequences agree
    # to rounding: the masked positions take no part
    same = L.monte_carlo_kernel(spec, xp, n_samples=2, seed=1, mask=m1)
    plain = L.monte_carlo_kernel(spec, x, n_samples=2, seed=1)
    torch.testing.assert_close(same.ntk, plain.ntk, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(same.nngp, plain.nngp, rtol=1e-12, atol=1e-12)
    with pytest.raises(ShapeError, match="mask"):
        L.monte_carlo_kernel(spec, xp, n_samples=1, mask=m2)
    with pytest.raises(InvalidArgumentError, match="mask"):
        L.monte_carlo_kernel(spec, xp, n_samples=1, mask=(m1, m1))
