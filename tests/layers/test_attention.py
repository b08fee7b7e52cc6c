"""GlobalSelfAttention: Monte Carlo convergence, properties, gradients, errors (no peer needed)."""

from __future__ import annotations

import pytest
import torch

from torchntk import layers as L
from torchntk.errors import InvalidArgumentError, SpecError, UnsupportedLayerError

from _attention_specs import transformer as _transformer

DT = torch.float64


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=DT, generator=torch.Generator().manual_seed(seed))


def _check_mc(make, x, n_nngp: int, n_ntk: int, tol: float) -> None:
    """``make(out_dim)``; the NNGP estimate averages 256 outputs per draw (mode 'mean')."""
    k = make(1).kernel(x)
    mc = L.monte_carlo_kernel(make(256), x, n_samples=n_nngp, seed=0, ntk=False)
    mc2 = L.monte_carlo_kernel(make(2), x, n_samples=n_ntk, seed=1, nngp=False, implementation="jacobian")
    e1, e2 = _rel(mc.nngp, k.nngp), _rel(mc2.ntk, k.ntk)
    assert e1 < tol and e2 < tol, (e1, e2)


@pytest.mark.parametrize("width,n_ntk,tol", [(192, 2, 0.2), pytest.param(1024, 4, 0.05, marks=pytest.mark.slow)])
def test_softmax_attention_matches_monte_carlo(width, n_ntk, tol):
    # Width w (keys, heads x values, outputs): the error of one draw is O(w^-1/2), ~0.03 at 1024;
    # the fast variant at 192 (errors ~0.1) still fails on any wrong term of the rule (factor 2+).
    def make(out: int) -> L.Layer:
        att = L.GlobalSelfAttention(width, width, width // 16, 16, W_key_std=1.5, b_std=0.1)
        return L.serial(att, L.Relu(), L.GlobalAvgPool(), L.Dense(out))

    _check_mc(make, _x(3, 4, 5), n_nngp=8, n_ntk=n_ntk, tol=tol)


def _wide(n: int, c: int, length: int, seed: int) -> torch.Tensor:
    """Inputs with ``c`` channels spanned by 3 patterns: an exact O(1)-correlated input kernel."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(c, 3, dtype=DT, generator=g)
    return torch.einsum("ck,nkl->ncl", u, torch.randn(n, 3, length, dtype=DT, generator=g))


@pytest.mark.slow  # ~3 min each on 2 loaded cores
@pytest.mark.parametrize("mech,pos,val", [("abs", "sum", False), ("relu", "concat", True), ("softmax", "sum", True)])
def test_attention_with_embeddings_matches_monte_carlo(mech, pos, val):
    # The embeddings' covariance concentrates only with many channels: 1024-channel inputs.
    def make(out: int) -> L.Layer:
        att = L.GlobalSelfAttention(1024, 1024, 64, 16, W_key_std=1.2, b_std=0.1, attention_mechanism=mech,
                                    pos_emb_type=pos, val_pos_emb=val, W_pos_emb_std=0.8,
                                    pos_emb_decay_fn=(lambda d: torch.exp(-d / 2)) if mech == "softmax" else None)
        return L.serial(att, L.GlobalAvgPool(), L.Dense(out))

    _check_mc(make, _wide(3, 1024, 5, seed=1), n_nngp=8, n_ntk=4, tol=0.05)


@pytest.mark.slow  # ~1.5 min
def test_sqrt_scaled_identity_attention_matches_monte_carlo():
    # linear_scaling=False: the logits stay Gaussian at infinite width; the kernel is an
    # expectation over them, which the average over draws estimates (error ~ n_samples^-1/2).
    def make(out: int) -> L.Layer:
        att = L.GlobalSelfAttention(256, 64, 16, 16, W_key_std=1.2, b_std=0.1, linear_scaling=False,
                                    attention_mechanism="identity")
        return L.serial(att, L.GlobalAvgPool(), L.Dense(out))

    _check_mc(make, _x(3, 4, 5), n_nngp=128, n_ntk=32, tol=0.05)


@pytest.mark.parametrize("mech", ["softmax", "abs"])
def test_transformer_kernel_symmetric_psd_and_finite_on_near_duplicates(mech):
    x = _x(5, 3, 6, seed=2)
    x = torch.cat([x, x[:2] + 1e-9 * _x(2, 3, 6, seed=3), x[:1]])  # near and exact duplicates
    k = _transformer(mech).kernel(x)
    for t in (k.nngp, k.ntk):
        assert torch.isfinite(t).all()
        torch.testing.assert_close(t, t.T, rtol=1e-14, atol=0)  # pooled sums round in their own order
        ev = torch.linalg.eigvalsh(t)
        assert ev.min() >= -1e-12 * ev.max(), ev
    # cross kernel = the block of the joint kernel, blocks = one block. At the (near) duplicate
    # pairs the ReLU's sqrt(q11 q22 - q12^2) turns a rounding gap d into sqrt(d): ~1e-8 relative.
    kc = _transformer(mech).kernel(x[:3], x[3:], block_size=2)
    torch.testing.assert_close(kc.ntk, k.ntk[:3, 3:], rtol=1e-7, atol=0)


def test_2d_attention_equals_1d_on_flattened_positions():
    # Without positional embeddings attention ignores the arrangement of the positions.
    x = _x(3, 4, 2, 3, seed=4)
    spec2 = L.serial(L.Dense(8), L.GlobalSelfAttention(8, 8, 8, 2), L.Relu(), L.GlobalAvgPool())
    k2 = spec2.kernel(x)
    k1 = spec2.kernel(x.flatten(2))
    torch.testing.assert_close(k2.ntk, k1.ntk, rtol=1e-13, atol=1e-13)
    full = L.GlobalSelfAttention(8, 8, 8, 2).kernel(x, diagonal_spatial=False)
    assert full.nngp.shape == (3, 3, 2, 2, 3, 3)


def test_gradcheck_inputs_and_hyperparameters():
    x = _x(2, 3, 4, seed=5).requires_grad_(True)
    qk = torch.tensor(1.2, dtype=DT, requires_grad=True)
    pe = torch.tensor(0.7, dtype=DT, requires_grad=True)

    def f(x, qk, pe):
        spec = L.serial(L.Dense(8), L.GlobalSelfAttention(8, 8, 8, 2, W_key_std=qk, W_pos_emb_std=pe, b_std=0.1,
                                                          pos_emb_type="concat", val_pos_emb=True),
                        L.Erf(), L.GlobalAvgPool())
        k = spec.kernel(x)
        return k.nngp, k.ntk

    assert torch.autograd.gradcheck(f, (x, qk, pe))


def test_module_shapes_and_module_of_2d_inputs():
    att = L.GlobalSelfAttention(6, 5, 4, 3, b_std=0.2, pos_emb_type="sum", pos_emb_decay_fn=lambda d: 1 / (1 + d))
    net = att.module((3, 2, 4), generator=torch.Generator().manual_seed(0), dtype=DT)
    assert net(_x(7, 3, 2, 4)).shape == (7, 6, 2, 4)
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == 3 * 3 * 5 + 3 * 3 * 4 + 12 * 6 + 6 + 8 * 3  # keys (tied queries), values, out, bias, embeddings


def test_linear_scaling_false_refuses_the_kernel_and_has_a_monte_carlo_kernel():
    # (identity attention has a closed form also then: see the sqrt-scaled tests)
    spec = L.serial(L.GlobalSelfAttention(64, 64, 16, 4, linear_scaling=False), L.GlobalAvgPool(), L.Dense(8))
    x = _x(3, 4, 5, seed=6)
    with pytest.raises(UnsupportedLayerError, match="monte_carlo_kernel"):
        spec.kernel(x)
    mc = L.monte_carlo_kernel(spec, x, n_samples=3, seed=0, implementation="jacobian")
    assert torch.isfinite(mc.ntk).all() and torch.isfinite(mc.nngp).all()
    torch.testing.assert_close(mc.ntk, mc.ntk.T, rtol=1e-10, atol=1e-10)
    assert torch.linalg.eigvalsh(mc.ntk).min() > -1e-8
    net = spec.module((4, 5))
    assert net[0].W_query is not None  # independent queries


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_heads": 0}, "n_heads"),
        ({"n_chan_key": 2.5}, "n_chan_key"),
        ({"attention_mechanism": "gelu"}, "attention_mechanism"),
        ({"pos_emb_type": "rotary"}, "pos_emb_type"),
        ({"W_key_std": -1.0}, "W_key_std"),
        ({"W_out_std": float("nan")}, "W_out_std"),
        ({"b_std": "0.1"}, "b_std"),
        ({"W_value_std": torch.ones(2)}, "W_value_std"),
        ({"linear_scaling": 1}, "linear_scaling"),
        ({"val_pos_emb": "yes"}, "val_pos_emb"),
        ({"pos_emb_p_norm": 0}, "pos_emb_p_norm"),
        ({"pos_emb_decay_fn": 3}, "pos_emb_decay_fn"),
        ({"n_chan_pos_emb": -2}, "n_chan_pos_emb"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"n_chan_out": 4, "n_chan_key": 4, "n_chan_val": 4, "n_heads": 2}
    args.update(kwargs)
    with pytest.raises(InvalidArgumentError, match=match):
        L.GlobalSelfAttention(**args)


def test_bad_uses():
    with pytest.raises(SpecError, match="flat"):
        L.GlobalSelfAttention(4, 4, 4, 1).kernel(_x(3, 5))
    with pytest.raises(SpecError, match="n_chan_pos_emb"):
        L.GlobalSelfAttention(4, 4, 4, 1, pos_emb_type="sum", n_chan_pos_emb=3).kernel(_x(2, 4, 5))
    bad_fn = L.GlobalSelfAttention(4, 4, 4, 1, pos_emb_type="sum", pos_emb_decay_fn=lambda d: d.sum())
    with pytest.raises(InvalidArgumentError, match="pos_emb_decay_fn"):
        bad_fn.kernel(_x(2, 4, 5))
    not_psd = L.GlobalSelfAttention(4, 4, 4, 1, pos_emb_type="sum", pos_emb_decay_fn=lambda d: -d)
    with pytest.raises(SpecError, match="not positive semi-definite"):  # the module and the kernel alike
        not_psd.module((4, 5))
    assert L.GlobalSelfAttention(4, 4, 4, 1, attention_mechanism="ReLU", pos_emb_type="CONCAT").attention_mechanism == "relu"


def test_an_indefinite_positional_decay_is_refused():
    """R[p, a] = decay(|p - a|^p_norm) is the embeddings' covariance: an indefinite R (min
    eigenvalue -575 relative in the battery's case) would make the kernel indefinite."""
    from torchntk.errors import SpecError

    x = torch.randn(4, 3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def spec(fn):
        return L.serial(L.Conv(8, (1,)), L.GlobalSelfAttention(8, 4, 4, 2, pos_emb_type="SUM", pos_emb_decay_fn=fn),
                        L.GlobalAvgPool(), L.Dense(1))

    k = spec(lambda d: torch.exp(-d)).kernel(x)  # a Gaussian of the distance: positive definite
    lam = torch.linalg.eigvalsh(k.ntk)
    assert float(lam[0]) >= -1e-12 * float(lam[-1])
    with pytest.raises(SpecError, match="pos_emb_decay_fn"):
        spec(lambda d: 3 * torch.cos(d)).kernel(x)
