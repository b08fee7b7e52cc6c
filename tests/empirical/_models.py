"""Tiny float64 test models and the brute-force NTK reference (a loop of autograd.grad)."""

from __future__ import annotations

import torch
from torch import nn

import torchntk.nn as tnn

DT = torch.float64


def brute_jacobian(model, x, names=None):
    """(N, O, P): loop over examples and outputs, one autograd.grad each."""
    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if names is None else names
    params = [named[n] for n in names]
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i : i + 1]).reshape(-1)
        for a in range(out.shape[0]):
            grads = torch.autograd.grad(out[a], params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([
                (torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)
            ]))
    o = len(rows) // x.shape[0]
    return torch.stack(rows).view(x.shape[0], o, -1)


def brute_ntk(model, x1, x2=None, mode="full", names=None):
    x2 = x1 if x2 is None else x2
    j1, j2 = brute_jacobian(model, x1, names), brute_jacobian(model, x2, names)
    full = torch.einsum("iap,jbp->ijab", j1, j2)
    if mode == "full":
        return full
    diag = torch.diagonal(full, dim1=2, dim2=3)
    return diag if mode == "diagonal" else diag.mean(-1)


def assert_close(actual, expected, rtol=1e-10):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.abs().max().clamp_min(1e-300)
    err = (actual - expected).abs().max() / scale
    assert err <= rtol, f"relative error {float(err):.3e} > {rtol}"


class ResidualLN(nn.Module):
    """LayerNorm, a residual connection and tanh: x -> W3 tanh(LN(x W1) + x W2)."""

    def __init__(self, d_in=4, width=6, d_out=2):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.norm = nn.LayerNorm(width)
        self.block = nn.Linear(width, width)
        self.head = nn.Linear(width, d_out)

    def forward(self, x):
        h = self.norm(self.inp(x))
        h = h + torch.tanh(self.block(h))
        return self.head(torch.tanh(h))


class Scalar(nn.Module):
    """Output (N,): a scalar-output network."""

    def __init__(self):
        super().__init__()
        self.net = tnn.MLP(3, [5], 1, activation="erf", beta=0.2)

    def forward(self, x):
        return self.net(x)[:, 0]


class TokenMLP(nn.Module):
    """Linear over inputs (N, S, in) with extra axes: the structured rule sums over S."""

    def __init__(self):
        super().__init__()
        self.a = tnn.Linear(3, 5, b_std=0.5)
        self.b = nn.Linear(5, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))).mean(1)


def models():
    """name -> (model, x1, x2), all float64, N ~ 4-6."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(3, 7), nn.ReLU(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 2))
    tmlp = tnn.MLP(3, [6, 5], 3, activation="relu", beta=0.3, generator=g)
    cnn = nn.Sequential(
        tnn.Conv2d(2, 3, 3, stride=2, padding="same", b_std=0.2, generator=g),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=1, padding=1),
        nn.Tanh(),
        nn.Conv2d(4, 2, 2, stride=2),
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, 3),
    )
    cnn1 = nn.Sequential(
        tnn.Conv1d(2, 3, 3, padding="same", b_std=0.1, generator=g), nn.ReLU(),
        nn.Conv1d(3, 2, 2, stride=2), nn.Flatten(), tnn.Linear(6, 2, generator=g),
    )
    out = {
        "mlp": (mlp, torch.randn(5, 3), torch.randn(4, 3)),
        "tnn_mlp": (tmlp, torch.randn(5, 3), torch.randn(4, 3)),
        "cnn": (cnn, torch.randn(4, 2, 7, 7), torch.randn(3, 2, 7, 7)),
        "cnn1d": (cnn1, torch.randn(4, 2, 6), torch.randn(3, 2, 6)),
        "residual_ln": (ResidualLN(), torch.randn(5, 4), torch.randn(4, 4)),
        "scalar": (Scalar(), torch.randn(5, 3), torch.randn(4, 3)),
        "tokens": (TokenMLP(), torch.randn(4, 3, 3), torch.randn(3, 3, 3)),
    }
    return {k: (m.double(), a.double(), b.double()) for k, (m, a, b) in out.items()}
