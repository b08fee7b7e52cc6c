"""GlobalSelfAttention and padding masks against neural-tangents' stax (the peer), float64.

Skipped unless neural_tangents imports. The peer is channels-last: sequences ``(N, L, C)``,
images ``(N, H, W, C)``; its masks come from ``mask_constant`` (entries equal to it are padding).
Kernels must agree entry by entry to 1e-9 relative.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

nt = pytest.importorskip("neural_tangents")
jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
stax = nt.stax

from torchntk import layers as L  # noqa: E402

from ._convert import to_peer as _to_peer  # noqa: E402

pytestmark = [pytest.mark.peer, pytest.mark.filterwarnings("ignore:Linear scaling attention")]
RTOL = 1e-9




def _close(ours: torch.Tensor, theirs) -> None:
    b = np.asarray(theirs)
    assert tuple(ours.shape) == b.shape, (tuple(ours.shape), b.shape)
    np.testing.assert_allclose(ours.numpy(), b, rtol=RTOL, atol=RTOL * float(np.abs(b).max()))


def _compare(spec: L.Layer, peer: tuple, x1: torch.Tensor, x2: torch.Tensor | None = None, **peer_kw) -> None:
    ours = spec.kernel(x1, x2)
    theirs = peer[2](_to_peer(x1), None if x2 is None else _to_peer(x2), ("nngp", "ntk"), **peer_kw)
    _close(ours.nngp, theirs.nngp)
    _close(ours.ntk, theirs.ntk)


def _seq(n: int, c: int = 4, length: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, length, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


ATT = {"W_key_std": 1.3, "W_value_std": 0.8, "W_query_std": 0.9, "W_out_std": 1.1, "b_std": 0.1}


def _transformer(mech: str, width: int = 32):
    """Two pre-LayerNorm blocks (x + Att(LN x), x + MLP(LN x)), both libraries."""

    def build(lib, att_mech: str):
        att = lib.GlobalSelfAttention(width, width, width, 4, attention_mechanism=att_mech, **ATT)
        ln = lib.LayerNorm(axis=1) if lib is L else lib.LayerNorm(axis=-1)
        id_ = L.Identity() if lib is L else stax.Identity()
        fan_out = L.FanOut(2) if lib is L else stax.FanOut(2)
        fan_in = L.FanInSum() if lib is L else stax.FanInSum()

        def res(f):
            return lib.serial(fan_out, lib.parallel(id_, lib.serial(ln, f)), fan_in)

        mlp = lib.serial(lib.Dense(width, b_std=0.1), lib.Relu(), lib.Dense(width, W_std=1.2))
        return lib.serial(lib.Dense(width), res(att), res(mlp), res(
            lib.GlobalSelfAttention(width, width, width, 4, attention_mechanism=att_mech, **ATT)), res(mlp),
            lib.GlobalAvgPool(), lib.Dense(1))

    return build(L, mech.lower()), build(stax, mech.upper())


@pytest.mark.parametrize("mech", ["softmax", "abs"])
def test_two_block_transformer(mech):
    ours, peer = _transformer(mech)
    x1, x2 = _seq(5, seed=1), _seq(3, seed=2)
    _compare(ours, peer, x1)
    _compare(ours, peer, x1, x2)


@pytest.mark.parametrize(
    "kw",
    [
        {"pos_emb_type": "sum"},
        {"pos_emb_type": "sum", "pos_emb_decay_fn": lambda d: 1.0 / (1.0 + d), "pos_emb_p_norm": 1.5,
         "W_pos_emb_std": 0.7, "val_pos_emb": True},
        {"pos_emb_type": "concat", "n_chan_pos_emb": 24},
        {"pos_emb_type": "concat", "W_pos_emb_std": 1.3, "val_pos_emb": True,
         "pos_emb_decay_fn": lambda d: (1.0 + d) ** -0.5},
    ],
    ids=["sum", "sum_decay_val", "concat", "concat_decay_val"],
)
@pytest.mark.parametrize("mech", ["softmax", "relu", "identity"])
def test_positional_embeddings(kw, mech):
    def build(lib, m):
        args = dict(kw, pos_emb_type=kw["pos_emb_type"].upper()) if lib is stax else kw  # the peer's spelling
        return lib.serial(lib.Dense(16), lib.GlobalSelfAttention(16, 16, 16, 2, attention_mechanism=m, **ATT, **args),
                          lib.Relu(), lib.GlobalAvgPool(), lib.Dense(1))

    ours, peer = build(L, mech), build(stax, mech.upper())
    x1, x2 = _seq(4, seed=3), _seq(3, seed=4)
    _compare(ours, peer, x1)
    _compare(ours, peer, x1, x2)


@pytest.mark.parametrize(
    "kw",
    [{}, {"pos_emb_type": "sum", "W_pos_emb_std": 0.7},
     {"pos_emb_type": "concat", "n_chan_pos_emb": 8, "val_pos_emb": True, "pos_emb_decay_fn": lambda d: 1.0 / (1.0 + d)}],
    ids=["none", "sum", "concat_decay_val"],
)
def test_sqrt_scaled_identity_attention(kw):
    # linear_scaling=False has a closed form for the identity mechanism only.
    def build(lib):
        args = dict(kw, pos_emb_type=kw["pos_emb_type"].upper()) if lib is stax and kw else kw
        return lib.serial(lib.Dense(16), lib.GlobalSelfAttention(16, 16, 16, 2, linear_scaling=False,
                                                                 attention_mechanism="identity" if lib is L else "IDENTITY",
                                                                 **ATT, **args),
                          lib.Relu(), lib.GlobalAvgPool(), lib.Dense(1))

    x1, x2 = _seq(4, seed=8), _seq(3, seed=9)
    _compare(build(L), build(stax), x1)
    _compare(build(L), build(stax), x1, x2)


def test_2d_attention_per_pixel_kernel():
    # Images: attention over the H x W positions; the output kept per pixel (Flatten readout).
    def build(lib):
        return lib.serial(lib.Dense(16), lib.GlobalSelfAttention(16, 16, 16, 2, pos_emb_type="SUM",
                                                                 pos_emb_decay_fn=lambda d: np.exp(-d) if lib is stax else torch.exp(-d), **ATT),
                          lib.Erf(), lib.Flatten(), lib.Dense(1))

    x1 = torch.randn(3, 3, 3, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x2 = torch.randn(2, 3, 3, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    _compare(build(L), build(stax), x1)
    _compare(build(L), build(stax), x1, x2)


def test_masked_transformer_equals_peer_with_mask_constant():
    # Padded positions carry the peer's mask constant in every channel; ours takes the mask.
    ours, peer = _transformer("softmax", width=16)
    x = _seq(4, c=3, length=7, seed=7)
    lengths = [7, 4, 6, 2]
    m = torch.arange(7)[None, :] >= torch.tensor(lengths)[:, None]
    const = -1234.5
    xp = x.masked_fill(m[:, None, :], const)
    k = ours.kernel(x, mask=m)
    theirs = peer[2](_to_peer(xp), None, ("nngp", "ntk"), mask_constant=const)
    _close(k.nngp, theirs.nngp)
    _close(k.ntk, theirs.ntk)
    kc = ours.kernel(x[:2], x[2:], mask=(m[:2], m[2:]))
    theirs = peer[2](_to_peer(xp[:2]), _to_peer(xp[2:]), ("nngp", "ntk"), mask_constant=const)
    _close(kc.nngp, theirs.nngp)
    _close(kc.ntk, theirs.ntk)
