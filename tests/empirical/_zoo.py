"""Models that the vectorized paths cannot all handle: recurrent layers, attention, a custom
autograd function, in-place writes, token ids, and outputs that are not plain tensors."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

DT = torch.float64


class Recurrent(nn.Module):
    """``nn.LSTM`` or ``nn.GRU`` over (N, L, 3), its last state through a Linear head."""

    def __init__(self, cell=nn.LSTM):
        super().__init__()
        self.rnn = cell(3, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


class Encoder(nn.Module):
    """``nn.TransformerEncoder`` (one layer, two heads) over (N, L, 4), mean-pooled, Linear head."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.enc(x).mean(1))


class _Cube(torch.autograd.Function):
    """``x^3`` with a hand-written backward and no vmap/jvp rule."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * g


class CustomFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.b(_Cube.apply(torch.tanh(self.a(x))))


class InPlace(nn.Module):
    """Writes a batched activation into a fresh tensor in place."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.zeros(x.shape[0], 6, dtype=x.dtype, device=x.device)
        h[:, :4] = torch.tanh(self.a(x))
        h[:, 4:] = x[:, :2] ** 2
        return self.b(h)


class Tokens(nn.Module):
    """Token ids (N, L) -> embedding -> Linear over positions -> mean -> Linear head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.mix = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, ids):
        return self.head(torch.tanh(self.mix(self.emb(ids))).mean(1))


class DictOut(nn.Module):
    """Returns {"logits": (N, 2), "hidden": (N, 5)}; its kernel of choice is that of "logits"."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return {"logits": self.b(h), "hidden": h}


class TupleOut(DictOut):
    def forward(self, x):
        out = super().forward(x)
        return out["logits"], out["hidden"]


class ObjectOut(DictOut):
    def forward(self, x):
        return SimpleNamespace(**super().forward(x))


def inputs(name, n, seed=0):
    """A float64 (or token-id) batch of ``n`` inputs for the zoo model ``name``."""
    g = torch.Generator().manual_seed(seed)
    if name in ("lstm", "gru"):
        return torch.randn(n, 4, 3, generator=g, dtype=DT)
    if name == "encoder":
        return torch.randn(n, 3, 4, generator=g, dtype=DT)
    if name == "tokens":
        return torch.randint(0, 7, (n, 5), generator=g)
    return torch.randn(n, 3, generator=g, dtype=DT)


def build(name):
    torch.manual_seed(3)
    model = {
        "lstm": lambda: Recurrent(nn.LSTM),
        "gru": lambda: Recurrent(nn.GRU),
        "encoder": Encoder,
        "custom_function": CustomFunction,
        "in_place": InPlace,
        "tokens": Tokens,
    }[name]()
    return model.double().eval()


ZOO = ["lstm", "gru", "encoder", "custom_function", "in_place", "tokens"]
