"""The eNTK view of few-shot fine-tuning (Malladi et al. 2023) on a small GPT-2, offline.

A task made here: token sequences of length 12 over a 64-word vocabulary; the label is whether
word 1 occurs more often than word 2, read from the logits of two label words (ids 62 and 63)
at the last position. The model is a 2-layer GPT-2 with random weights built from a
configuration (``transformers``; without it, the same architecture written in torch). Then:

1. the empirical NTK of the label-word logits (``output=``), exact and sketched (``sketch=``);
2. kernel regression with it (``torchntk.dynamics.mse`` at ``t = inf``): the prediction of
   fine-tuning the linearized model, and its accuracy on held-out sequences;
3. attribution: the training sequences that move one test prediction most, by the exact
   leave-one-out change of the linearized model (``torchntk.empirical.attribution``).
"""

import sys

import torch

import torchntk

VOCAB, LENGTH, LABELS = 64, 12, [62, 63]
N_TRAIN, N_TEST = (32, 32) if len(sys.argv) < 2 else map(int, sys.argv[1:3])


def task(n: int, seed: int):
    """Sequences with more 1s than 2s (label 0) or more 2s than 1s (label 1); ties removed."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB - 2, (4 * n, LENGTH), generator=g)
    ones = torch.rand(4 * n, LENGTH, generator=g) < 0.25
    twos = torch.rand(4 * n, LENGTH, generator=g) < 0.25
    ids[ones] = 1
    ids[twos & ~ones] = 2
    diff = (ids == 1).sum(1) - (ids == 2).sum(1)
    keep = diff != 0
    return ids[keep][:n], (diff[keep][:n] < 0).long()


def model():
    torch.manual_seed(0)
    try:
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=64, n_layer=2, n_head=4,
                         attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0, bos_token_id=0, eos_token_id=0)
        cfg._attn_implementation = "eager"
        net = GPT2LMHeadModel(cfg).eval()
        return net, "transformers GPT-2", lambda out: out.logits[:, -1, LABELS]
    except ImportError:
        layer = torch.nn.TransformerEncoderLayer(64, 4, 256, dropout=0.0, activation="gelu", batch_first=True,
                                                 norm_first=True)

        class TinyGPT(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.tok, self.pos = torch.nn.Embedding(VOCAB, 64), torch.nn.Embedding(LENGTH, 64)
                self.blocks = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
                self.head = torch.nn.Linear(64, VOCAB, bias=False)

            def forward(self, ids):
                mask = torch.nn.Transformer.generate_square_subsequent_mask(ids.shape[1])
                h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
                return self.head(self.blocks(h, mask=mask, is_causal=True))

        return TinyGPT().eval(), "torch GPT-style (transformers not installed)", lambda out: out[:, -1, LABELS]


net, kind, label_logits = model()
x, y = task(N_TRAIN, 1)
xt, yt = task(N_TEST, 2)
params = sum(p.numel() for p in net.parameters())
print(f"model: {kind}, {params} parameters; {len(x)} training and {len(xt)} test sequences")

theta = torchntk.empirical_ntk(net, x, mode="mean", output=label_logits).double()
theta_t = torchntk.empirical_ntk(net, xt, x, mode="mean", output=label_logits).double()
est = torchntk.empirical.sketched_ntk(net, x, k=4096, mode="mean", output=label_logits)
rel = float((est.kernel.double() - theta).norm() / theta.norm())
print(f"sketched eNTK (k = 4096): relative error {rel:.3f}, estimated {est.error:.3f}")

Y = torch.nn.functional.one_hot(y, 2).double() - 0.5          # centred one-hot targets
with torch.no_grad():
    f0, f0t = label_logits(net(x)).double(), label_logits(net(xt)).double()
pred = torchntk.dynamics.mse(theta, Y, f0_train=f0, diag_reg=1e-3)
_, f_test = pred(float("inf"), theta_t, f0t)
acc = float((f_test.argmax(1) == yt).double().mean())
print(f"kernel regression with the eNTK (fine-tuning the linearized model): test accuracy {acc:.3f}")

feats = torchntk.empirical.gradient_features(net, x, 2048, output=lambda out: label_logits(out)[:, 1])
feats_t = torchntk.empirical.gradient_features(net, xt[:1], 2048, output=lambda out: label_logits(out)[:, 1])
scores = torchntk.empirical.attribution(feats, Y[:, 1] - f0[:, 1], feats_t, ridge=1e-3 * float(theta.diagonal().mean()))
top = scores[0].abs().argsort(descending=True)[:3].tolist()
print(f"test sequence 0 (label {int(yt[0])}): the training sequences that move it most: {top} "
      f"(labels {[int(y[j]) for j in top]})")
