"""The sparse head of the structured backward pass (:mod:`torchntk.empirical._sparse_head`):
the graph cut at a head's input, its input cotangent formed from the used output columns, the
other layers' cotangents from a second pass. Checked against brute-force autograd in float64
(1e-10 of the largest entry: the same products summed in another order)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchntk.nn as tnn
from torchntk.empirical import _sparse_head, empirical_ntk, structured
from torchntk.empirical._functional import make_functional

from ._models import assert_close, brute_ntk
from .test_structured_lm import DT, LABELS, TinyLM, _ids, _model


def _force_sparse_head(monkeypatch) -> list[str]:
    """Every Linear layer with unused output features qualifies as the sparse head; returns the
    names of the layers whose input cotangent :func:`_sparse_head.input_cotangent` formed."""
    calls: list[str] = []
    real = _sparse_head.input_cotangent

    def spy(lay, g, w):
        calls.append(lay.name)
        return real(lay, g, w)

    monkeypatch.setattr(_sparse_head, "SPARSE_HEAD_MIN", 1)
    monkeypatch.setattr(_sparse_head, "input_cotangent", spy)
    return calls


@pytest.mark.parametrize("mode", ["full", "mean"])
@pytest.mark.parametrize("tie", [True, False])
def test_the_sparse_head_keeps_the_language_model_kernel_exact(monkeypatch, mode, tie):
    """The head's input cotangent formed from the 3 label words' columns only (the graph cut at
    the head's input, then a second backward pass from the output and the head's input)."""
    calls = _force_sparse_head(monkeypatch)
    model = _model(tie=tie)
    layers, shapes, _, _ = structured.probe_layers(make_functional(model), _ids(3, 0))
    assert shapes["head"].Ca == len(LABELS) and _sparse_head.sparse_head(layers, shapes).name == "head"
    x1, x2 = _ids(4, 1), _ids(3, 2)
    assert_close(empirical_ntk(model, x1, x2, mode=mode, implementation="structured"),
                 brute_ntk(model, x1, x2, mode), rtol=1e-10)
    assert calls and set(calls) == {"head"}


def test_the_sparse_head_is_only_taken_where_it_saves_enough():
    model = _model()
    layers, shapes, _, _ = structured.probe_layers(make_functional(model), _ids(3, 0))
    # the tiny head saves (11 - 3) x 6 products per position: below the threshold
    assert _sparse_head.sparse_head(layers, shapes) is None
    torch.manual_seed(0)
    wide = TinyLM(width=64, vocab=2000, length=4).to(DT)
    x = torch.randint(1, 2000, (2, 4), generator=torch.Generator().manual_seed(0))
    layers, shapes, _, _ = structured.probe_layers(make_functional(wide), x)
    assert _sparse_head.sparse_head(layers, shapes).name == "head"  # (2000 - 3) x 64 saved


class HeadInTheMiddle(nn.Module):
    """A head over positions whose input also reaches the output by two other paths, and a
    covered layer called after it on 3 of its 30 outputs (an NTK-scaled head: ``ws != 1``)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.head = tnn.Linear(8, 30, W_std=1.5, b_std=0.5)
        self.after, self.side = nn.Linear(3, 3), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x))  # (N, L, 8)
        z = self.head(h)[:, -1, 5:8]
        return self.after(torch.tanh(z)) + self.side(h).sum(1) + h[:, 0, :3]


def test_the_sparse_head_is_exact_in_the_middle_of_a_model(monkeypatch):
    calls = _force_sparse_head(monkeypatch)
    torch.manual_seed(3)
    model = HeadInTheMiddle().to(DT)
    x = torch.randn(4, 3, 4, dtype=DT)
    layers, shapes, _, _ = structured.probe_layers(make_functional(model), x)
    assert _sparse_head.sparse_head(layers, shapes).name == "head"
    assert_close(empirical_ntk(model, x, implementation="structured"), brute_ntk(model, x), rtol=1e-10)
    assert set(calls) == {"head"}


def _conv1d_class():
    """A stand-in for ``transformers``' ``Conv1D`` (``y = a W + b``, ``W (K, C)``), recognized by
    its name and module as the real one is."""

    class Conv1D(nn.Module):
        def __init__(self, nf, nx):
            super().__init__()
            self.nf = nf
            self.weight = nn.Parameter(torch.randn(nx, nf, dtype=DT))
            self.bias = nn.Parameter(torch.randn(nf, dtype=DT))

        def forward(self, a):
            return a @ self.weight + self.bias

    Conv1D.__module__ = "transformers.pytorch_utils"
    return Conv1D


@pytest.mark.parametrize("kind", ["linear", "ntk", "conv1d"])
def test_input_cotangent_is_the_vjp_of_the_layer(kind):
    """``ws * g W`` over the used columns and positions equals autograd's vector-Jacobian
    product of the layer, columns and positions without cotangent included."""
    from torchntk.empirical._layers import find_layers

    torch.manual_seed(4)
    module = {"linear": lambda: nn.Linear(5, 7), "ntk": lambda: tnn.Linear(5, 7, W_std=2.0),
              "conv1d": lambda: _conv1d_class()(7, 5)}[kind]().to(DT)
    lay = find_layers(module, dict(module.named_parameters()))[0]
    a = torch.randn(2, 4, 5, dtype=DT, requires_grad=True)
    y = module(a)
    g = torch.randn(3, *y.shape, dtype=DT)
    g[..., [0, 2, 3, 6]] = 0  # unused output features
    g[:, :, 1] = 0  # a position without cotangent
    ref = torch.stack([torch.autograd.grad(y, a, g[o], retain_graph=True)[0] for o in range(3)])
    got = _sparse_head.input_cotangent(lay, g, module.weight.detach())
    assert_close(got.reshape(ref.shape), ref, rtol=1e-13)  # sums of 3 products in float64


def test_batched_grads_of_several_outputs_match_the_loop_over_cotangents():
    from torchntk.empirical.autograd import batched_grads

    g = torch.Generator().manual_seed(5)
    w = torch.randn(3, 4, dtype=DT, generator=g, requires_grad=True)
    h = torch.tanh(w)
    out = (h * 2).sum(1, keepdim=True).expand(3, 2)
    cots = [torch.randn(4, 3, 2, dtype=DT, generator=g), torch.randn(4, 3, 4, dtype=DT, generator=g)]
    batched = batched_grads([out, h], [w], cots)[0]
    looped = batched_grads([out, h], [w], cots, {"batched": False})[0]
    ref = torch.stack([torch.autograd.grad([out, h], [w], [c[k] for c in cots], retain_graph=True)[0]
                       for k in range(4)])
    assert_close(batched, ref, rtol=1e-13)
    assert_close(looped, ref, rtol=1e-13)


def test_the_sparse_head_in_blocks_per_layer_and_in_the_sketch(monkeypatch):
    """Blocks of two examples, the per-parameter parts and the sketch's features are unchanged
    by the cut (each block cuts its own forward pass; the features are the same projection of
    the same cotangents, to rounding)."""
    from torchntk.empirical import gradient_features

    model = _model()
    x = _ids(5, 3)
    plain = gradient_features(model, x, 64, seed=1)
    calls = _force_sparse_head(monkeypatch)
    assert_close(empirical_ntk(model, x, mode="mean", implementation="structured", block_size=2),
                 brute_ntk(model, x, mode="mean"), rtol=1e-10)
    parts = empirical_ntk(model, x, mode="mean", implementation="structured", per_layer=True)
    for names in (["tok.weight"], ["qkv.weight", "qkv.bias"], ["lnf.weight"]):
        assert_close(sum(parts[n] for n in names), brute_ntk(model, x, mode="mean", names=names), rtol=1e-10)
    assert_close(gradient_features(model, x, 64, seed=1), plain, rtol=1e-12)
    assert calls.count("head") >= 5  # 3 blocks, the per-layer call and the features
