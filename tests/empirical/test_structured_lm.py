"""The structured rules of transformer layers (embeddings, tied output heads, norms, Linear
layers over positions, positions without cotangent) against the brute-force autograd kernel,
in float64, on a small causal language model written with torch alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn


from torchntk.empirical import _cost, empirical_ntk, structured
from torchntk.empirical._functional import make_functional

from ._models import assert_close, brute_ntk

DT = torch.float64
VOCAB, LENGTH, WIDTH = 11, 5, 6
LABELS = [2, 5, 7]  # the label words whose last-position logits are the outputs


class TinyLM(nn.Module):
    """Token and position embeddings (positions as one ``(1, L)`` lookup shared by the batch),
    pre-norm causal attention (LayerNorm, Linear maps over positions), an RMSNorm MLP, a final
    LayerNorm and an output head tied to the token embedding; ``padding_idx`` and a key padding
    mask (ids equal to 0 are padding). Output: the label words' logits at the last position."""

    def __init__(self, tie: bool = True, mask: bool = True, width: int = WIDTH, vocab: int = VOCAB,
                 length: int = LENGTH):
        super().__init__()
        self.tok = nn.Embedding(vocab, width, padding_idx=0)
        self.pos = nn.Embedding(length, width)
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.RMSNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width, bias=False)
        self.lnf = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        if tie:
            self.head.weight = self.tok.weight
        self.mask, self.width = mask, width

    def forward(self, ids):
        L = ids.shape[1]
        h = self.tok(ids) + self.pos(torch.arange(L).unsqueeze(0))
        q, k, v = self.qkv(self.ln1(h)).chunk(3, dim=-1)
        att = q @ k.transpose(1, 2) / self.width**0.5
        causal = torch.ones(L, L, dtype=torch.bool).triu(1)
        att = att.masked_fill(causal, -1e9)
        if self.mask:
            att = att.masked_fill((ids == 0)[:, None, :], -1e9)
        h = h + self.proj(att.softmax(-1) @ v)
        h = h + self.down(F.gelu(self.up(self.ln2(h))))
        return self.head(self.lnf(h))[:, -1, LABELS]


def _ids(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
    x[0, :2] = 0  # left padding, masked out
    x[1, 0] = LABELS[0]  # an id that is also an output label word
    return x


def _model(**kw):
    torch.manual_seed(0)
    m = TinyLM(**kw).to(DT)
    with torch.no_grad():  # padding row not zero, so a missing padding rule would show
        m.tok.weight[0].normal_()
    return m


def test_every_parameter_of_the_language_model_is_covered():
    model = _model()
    layers, shapes, fallback, _ = structured.probe_layers(make_functional(model), _ids(3, 0))
    assert fallback == []
    kinds = {lay.name: (lay.kind, lay.tied) for lay in layers}
    assert kinds["tok"] == ("embedding", True) and kinds["head"] == ("linear", True)
    assert kinds["pos"] == ("embedding", False) and kinds["ln2"] == ("norm", False)
    # after the attention only the last position has a cotangent
    assert shapes["down"].active == 1 and shapes["head"].active == 1 and shapes["qkv"].active == LENGTH


@pytest.mark.parametrize("mode", ["full", "diagonal", "mean"])
@pytest.mark.parametrize("tie", [True, False])
def test_language_model_kernel_is_exact(mode, tie):
    # float64 throughout: the factorized and the brute-force kernels differ by rounding only
    model = _model(tie=tie)
    x1, x2 = _ids(4, 1), _ids(3, 2)
    assert_close(empirical_ntk(model, x1, x2, mode=mode, implementation="structured"),
                 brute_ntk(model, x1, x2, mode), rtol=1e-10)


def test_symmetric_blocked_and_per_layer_parts_are_exact():
    model = _model()
    x = _ids(5, 3)
    ref = brute_ntk(model, x)
    assert_close(empirical_ntk(model, x, implementation="structured"), ref, rtol=1e-10)
    # blocks of two examples: active positions and ids differ between the blocks
    assert_close(empirical_ntk(model, x, implementation="structured", block_size=2), ref, rtol=1e-10)
    parts = empirical_ntk(model, x, mode="mean", implementation="structured", per_layer=True)
    assert set(parts) == {n for n, _ in model.named_parameters()}
    assert_close(sum(parts.values()), brute_ntk(model, x, mode="mean"), rtol=1e-10)
    # one example: the probe duplicates it to see which lookups are shared by the batch
    one = x[1:2]
    assert_close(empirical_ntk(model, one, implementation="structured"), brute_ntk(model, one), rtol=1e-10)
    names = ["tok.weight", "pos.weight"]
    assert_close(parts["tok.weight"] + parts["pos.weight"], brute_ntk(model, x, mode="mean", names=names),
                 rtol=1e-10)


class RowZero(nn.Module):
    """Reads row 0 of a position lookup for every example (``pos(ids)[0]``): the same values
    as a broadcast, but the expanded rows would not be per example."""

    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, WIDTH), nn.Embedding(LENGTH, WIDTH)
        self.head = nn.Linear(WIDTH, 2)

    def forward(self, ids):
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]).unsqueeze(0))[0]
        return self.head(torch.tanh(h).mean(1))


class TiedUsedOutside(TinyLM):
    """The tied table also enters the output directly (a weight-norm penalty term); the head
    has a bias of its own, which stays factorized."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(WIDTH, VOCAB)
        self.head.weight = self.tok.weight

    def forward(self, ids):
        return super().forward(ids) + self.tok.weight.pow(2).sum() * 1e-2


@pytest.mark.parametrize("cls, left", [(RowZero, ["pos.weight"]), (TiedUsedOutside, ["tok.weight"])])
def test_lookups_that_cannot_be_factorized_are_left_to_the_jacobian_path(cls, left):
    """A shared lookup read by row, and a tied table also used outside its layers."""
    torch.manual_seed(2)
    model = cls().to(DT)
    x = _ids(4, 7)
    assert structured.probe_layers(make_functional(model), x)[2] == left
    assert_close(empirical_ntk(model, x, implementation="structured"), brute_ntk(model, x), rtol=1e-10)


def test_auto_plans_the_structured_path_for_a_language_model_of_useful_width():
    """At width 128 and a 1000-word vocabulary (tied head) the per-example Jacobians of the
    Jacobian path (P = 330k numbers per output) cost far more than the factorized layers."""
    from torchntk._memory import DEFAULT_MEMORY

    torch.manual_seed(0)
    model = TinyLM(width=128, vocab=1000, length=16)
    x = torch.randint(1, 1000, (32, 16), generator=torch.Generator().manual_seed(0))
    plans, _ = _cost.candidates(make_functional(model), x, 32, len(LABELS), "mean", "auto", DEFAULT_MEMORY,
                                False, None)
    assert plans[0].backend.name == "structured"
    assert plans[0].flops < 0.5 * next(p.flops for p in plans if p.backend.name == "jacobian")


def test_first_auto_call_plans_on_two_examples_and_passes_over_the_batch_once():
    """The first call on a fresh model plans from a few passes on at most two examples, then
    runs one forward pass over the whole batch (and its batched backward pass)."""
    model = _model()
    sizes = []
    model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    x = _ids(6, 6)
    k = empirical_ntk(model, x, mode="mean")
    assert sizes.count(6) == 1 and max(s for s in sizes if s != 6) <= 2 and len(sizes) <= 8, sizes
    assert_close(k, brute_ntk(model, x, mode="mean"), rtol=1e-10)


@pytest.mark.parametrize("small", [True, False])
def test_mean_gram_as_one_product_or_per_output_agree_with_the_definition(monkeypatch, small):
    from torchntk.empirical import _modes

    monkeypatch.setattr(_modes, "SMALL_GRAM", 1 << 30 if small else 0)
    g = torch.Generator().manual_seed(0)
    u1, u2 = torch.randn(3, 5, 7, generator=g, dtype=DT), torch.randn(3, 4, 7, generator=g, dtype=DT)
    ref = torch.einsum("aif,ajf->ij", u1, u2)
    # float64 sums of 21 products in another order: rounding only
    assert_close(_modes.gram(u1, u2, "mean"), ref, rtol=1e-13)
    sym = _modes.mirror(_modes.gram_sym(u1, "mean"), "mean")
    assert_close(sym, torch.einsum("aif,ajf->ij", u1, u1), rtol=1e-13)


def test_planning_runs_on_one_thread_and_restores_the_thread_count():
    before = torch.get_num_threads()
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            seen.append((x.shape[0], torch.get_num_threads()))
            return self.lin(x)

    torch.set_num_threads(2)
    try:
        x = torch.randn(5, 3, dtype=torch.float32)
        empirical_ntk(Probe(), x, implementation="structured")
        assert torch.get_num_threads() == 2
        assert {t for n, t in seen if n <= 2} == {1} and {t for n, t in seen if n == 5} == {2}
        with pytest.raises(RuntimeError, match="inside"), _cost.planning_threads():
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

