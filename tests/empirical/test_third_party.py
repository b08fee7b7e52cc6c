"""Real architectures from Hugging Face ``transformers``, small and randomly initialized offline
(no weights are downloaded): a ResNet with BatchNorm in eval mode, a ViT, a BERT encoder on token
ids and a GPT-2 decoder. Each is checked against a brute-force autograd kernel in float64 for
every implementation and mode: exact to 1e-8 relative to the largest entry, or (for an explicit
implementation that cannot handle it) a torchntk error saying which one to use.
``nn.LSTM``, ``nn.GRU`` and ``nn.TransformerEncoder`` are in ``test_any_model.py`` (default
suite). Opt-in: marked slow (``--runslow``) and skipped when ``transformers`` is absent.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from torchntk.empirical import empirical_ntk
from torchntk.empirical._functional import SelectOutput
from torchntk.errors import UnsupportedLayerError

from ._models import assert_close, brute_ntk

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

DT = torch.float64
IMPLS = ["auto", "jacobian", "ntvp", "structured", "autograd"]
# scaled_dot_product_attention has no forward-mode derivative on the CPU
UNSUPPORTED = {("vit", "ntvp"), ("bert", "ntvp"), ("gpt2", "ntvp")}


def _build(name: str):
    """(model, output selector, x1, x2) of a tiny random configuration."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "resnet":
        cfg = transformers.ResNetConfig(num_channels=2, embedding_size=4, hidden_sizes=[4, 6],
                                        depths=[1, 1], layer_type="basic")
        model = transformers.ResNetModel(cfg)
        # running statistics that are not the defaults, so eval-mode BatchNorm is a real affine map
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
        x = torch.randn(5, 2, 8, 8, generator=g, dtype=DT)
        sel = lambda out: out.pooler_output.flatten(1)  # noqa: E731
    elif name == "vit":
        cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=2, hidden_size=8,
                                     num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
        model = transformers.ViTModel(cfg)
        x = torch.randn(5, 2, 8, 8, generator=g, dtype=DT)
        sel = lambda out: out.last_hidden_state[:, 0]  # noqa: E731
    elif name == "bert":
        cfg = transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=8, max_position_embeddings=16)
        model = transformers.BertModel(cfg)
        x = torch.randint(0, 20, (5, 6), generator=g)
        sel = "pooler_output"
    else:
        cfg = transformers.GPT2Config(vocab_size=20, n_embd=8, n_layer=1, n_head=2, n_positions=16,
                                      bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2Model(cfg)
        x = torch.randint(0, 20, (5, 6), generator=g)
        sel = lambda out: out.last_hidden_state[:, -1]  # noqa: E731
    return model.double().eval(), sel, x[:3], x[3:]


@pytest.fixture(scope="module", params=["resnet", "vit", "bert", "gpt2"])
def case(request):
    model, sel, x1, x2 = _build(request.param)
    full = brute_ntk(SelectOutput(model, sel), x1, x2)
    diag = torch.diagonal(full, dim1=2, dim2=3)
    return request.param, model, sel, x1, x2, {"full": full, "diagonal": diag, "mean": diag.mean(-1)}


@pytest.mark.parametrize("impl", IMPLS)
def test_architecture_every_implementation_and_mode(case, impl):
    name, model, sel, x1, x2, ref = case
    if (name, impl) in UNSUPPORTED:
        with pytest.raises(UnsupportedLayerError, match=f"implementation='{impl}'.*use implementation="):
            empirical_ntk(model, x1, x2, output=sel, implementation=impl)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mode in ("full", "diagonal", "mean"):
            k = empirical_ntk(model, x1, x2, mode=mode, output=sel, implementation=impl)
            assert_close(k, ref[mode], rtol=1e-8)


def test_gpt2_conv1d_is_covered_by_the_structured_path():
    """GPT-2's ``Conv1D`` (a Linear with a transposed weight) is factorized, not left to vmap."""
    from torchntk.empirical import structured
    from torchntk.empirical._functional import make_functional

    model, sel, x1, _ = _build("gpt2")
    fallback = structured.probe_layers(make_functional(model, output=sel), x1)[2]
    assert not any(".attn." in n or ".mlp." in n for n in fallback), fallback


class _MaskedLM(torch.nn.Module):
    """A causal LM on ``(N, 2, L)`` inputs, ids and attention mask stacked (the mask passed to
    the model as a keyword), giving the logits of label words at the last position."""

    def __init__(self, lm, labels):
        super().__init__()
        self.lm, self.labels = lm, labels

    def forward(self, x):
        return self.lm(input_ids=x[:, 0], attention_mask=x[:, 1]).logits[:, -1, self.labels]


def _gpt2_lm():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=20, n_embd=8, n_layer=2, n_head=2, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "eager"
    return transformers.GPT2LMHeadModel(cfg).double().eval()


@pytest.mark.parametrize("mode", ["full", "mean"])
def test_gpt2_lm_head_label_logits_every_parameter_factorized_and_exact(mode):
    """GPT-2 with its head tied to the token embedding, last-token logits of 3 label words (the
    kernel view of prompt-based fine-tuning): nothing is left to the Jacobian path (embeddings,
    tied head, LayerNorms, Conv1D all factorized), and the kernel matches brute force; also with
    an attention mask over left padding, passed as a keyword by a wrapper."""
    from torchntk.empirical import structured
    from torchntk.empirical._functional import make_functional

    lm, labels = _gpt2_lm(), [3, 5, 7]
    sel = lambda out: out.logits[:, -1, labels]  # noqa: E731
    g = torch.Generator().manual_seed(2)
    x1, x2 = torch.randint(0, 20, (3, 6), generator=g), torch.randint(0, 20, (2, 6), generator=g)
    assert structured.probe_layers(make_functional(lm, output=sel), x1)[2] == []
    ref = brute_ntk(SelectOutput(lm, sel), x1, x2, mode)
    for impl in ("structured", "auto"):
        # float64: the factorized and brute-force kernels differ by rounding only
        assert_close(empirical_ntk(lm, x1, x2, mode=mode, output=sel, implementation=impl), ref, rtol=1e-9)
    masked = _MaskedLM(lm, labels)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[0, :2] = 0  # left padding of the first sequence
    xm = torch.stack([x1, mask], 1)
    assert_close(empirical_ntk(masked, xm, mode=mode, implementation="structured"),
                 brute_ntk(masked, xm, mode=mode), rtol=1e-9)


def test_gpt2_structured_sketch_meets_its_error_at_k_4096():
    """The structured sketch on the GPT-2 style model of ``benchmarks/empirical.py`` (2 layers,
    d = 256, vocabulary 5000, head tied to the embedding, float32), 32 sequences of 16 tokens,
    last-token logits of 10 label words, mode "mean": relative Frobenius error under 0.05 at
    k = 4096 for three seeds (measured 0.022-0.034), the halves' estimate within 2x of it, and
    the error at k = 1024 about twice as large (the k^(-1/2) law)."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=5000, n_positions=64, n_embd=256, n_layer=2, n_head=4,
                                  bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "eager"
    lm = transformers.GPT2LMHeadModel(cfg).eval()
    sel = lambda out: out.logits[:, -1, 100:110]  # noqa: E731
    ids = torch.randint(0, 5000, (32, 16), generator=torch.Generator().manual_seed(0))
    exact = empirical_ntk(lm, ids, mode="mean", output=sel).double()
    from torchntk.empirical import sketched_ntk

    def errors(k):
        out = []
        for seed in range(3):
            est = sketched_ntk(lm, ids, k=k, seed=seed, mode="mean", output=sel, implementation="structured")
            err = float((est.kernel.double() - exact).norm() / exact.norm())
            assert 0.5 < est.error / err < 2.0, (est.error, err)
            out.append(err)
        return out

    big, small = errors(4096), errors(1024)
    assert max(big) < 0.05, big
    assert 1.4 < sum(small) / sum(big) < 2.8, (small, big)
