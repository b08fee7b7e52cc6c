"""Attention specs shared by the attention and masking tests."""

from __future__ import annotations

import torch

from torchntk import layers as L


def transformer(mech: str = "softmax", width: int = 32, pos: str = "sum", head: L.Layer | None = None) -> L.Layer:
    """Two pre-LayerNorm blocks: x + Att(LN(x)), then x + MLP(LN(x)); a pooled readout."""
    def att(m: str) -> L.Layer:
        return L.GlobalSelfAttention(width, width, width, 2, W_key_std=1.3, W_value_std=0.8, W_out_std=1.1, b_std=0.1,
                                     attention_mechanism=m, pos_emb_type=pos, pos_emb_decay_fn=lambda d: torch.exp(-d / 3))

    def res(f: L.Layer) -> L.Layer:
        return L.serial(L.FanOut(2), L.parallel(L.Identity(), L.serial(L.LayerNorm(), f)), L.FanInSum())

    mlp = L.serial(L.Dense(width, b_std=0.1), L.Relu(), L.Dense(width, W_std=1.2))
    return L.serial(L.Dense(width), res(att(mech)), res(mlp), res(att("abs")), res(mlp),
                    head if head is not None else L.GlobalAvgPool(), L.Dense(1))
