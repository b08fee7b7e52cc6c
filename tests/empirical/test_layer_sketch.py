"""The structured sketch: per-layer Kronecker projections of the factorized gradients.

The features are checked against the projection formula applied to brute-force per-example
gradients (a loop of ``autograd.grad``), by both routes, on a small language model holding
every covered family (tied embedding and head, an expanded position lookup, LayerNorm, RMSNorm,
Linear maps over positions, a grouped convolution, a parameter outside covered layers); then
unbiasedness over seeds, the ``k^(-1/2)`` fall of the error, and the fallback rules.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchntk
import torchntk.nn as tnn
from torchntk.empirical import _layer_sketch
from torchntk.empirical._cost import entry
from torchntk.empirical._functional import make_functional
from torchntk.empirical.sketch import _hashes, _structured_backend, gradient_features, sketched_ntk
from torchntk.errors import InvalidArgumentError, UnsupportedLayerError

from ._models import brute_jacobian
from ._sketch_checks import check_error_law, check_unbiased

DT = torch.float64


class TinyLM(nn.Module):
    """A causal one-block language model giving the last position's logits of 4 words."""

    def __init__(self, vocab: int = 30, d: int = 8, length: int = 6) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.tok = nn.Embedding(vocab, d, padding_idx=0)
        self.pos = nn.Embedding(length, d)
        self.ln = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = tnn.Linear(d, d, b_std=0.3, generator=g)
        self.conv = nn.Conv1d(d, d, 3, padding=1, groups=2)
        self.rms = nn.RMSNorm(d)
        self.fc = nn.Linear(d, 2 * d)
        self.out = nn.Linear(2 * d, d)
        self.gate = nn.Parameter(torch.linspace(0.5, 1.5, d))  # outside covered layers
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n, L = ids.shape
        h = self.tok(ids) + self.pos(torch.arange(L, device=ids.device)[None])
        q, k, v = self.qkv(self.ln(h)).chunk(3, -1)
        s = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
        s = s.masked_fill(torch.ones(L, L, dtype=torch.bool, device=ids.device).triu(1), float("-inf"))
        h = h + self.proj(torch.softmax(s, -1) @ v)
        h = h + self.conv(h.transpose(1, 2)).transpose(1, 2)
        h = h + self.out(torch.tanh(self.fc(self.rms(h)))) * self.gate
        return self.head(h)[:, -1, :4]


def _lm() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM().to(DT)


IDS = torch.randint(0, 30, (7, 6), generator=torch.Generator().manual_seed(1))
IDS[0, :2] = 0  # padding ids: the padding row of the table gets no gradient


def _expected(model, x, k: int, seed: int) -> torch.Tensor:
    """The sketch of the brute-force gradients: each covered weight's Kronecker projection,
    each other tensor's count sketch, summed into the halves, as ``(N, O, k)``."""
    fm = make_functional(model)
    names = list(fm.params)
    backend = _structured_backend(fm, entry(fm, x).probe, 4)
    kron = {lay.weight for lay in backend.layers
            if lay.weight is not None and backend.methods[lay.name] in ("p1", "pair", "use")}
    assert {"tok.weight", "qkv.weight", "proj.weight", "fc.weight", "out.weight"} <= kron
    assert "conv.weight" not in kron and "gate" in backend.fallback  # count-sketched
    half = k // 2
    out = torch.zeros(x.shape[0], 4, k, dtype=DT)
    for index, name in enumerate(names):
        J = brute_jacobian(model, x, [name])  # (N, O, numel)
        for part in range(2):
            cols = slice(part * half, (part + 1) * half)
            if name in kron:
                p = fm.params[name]
                c, kk = p.shape[0], p[0].numel()  # rows: outputs (table rows); columns: the rest
                r, m1, m2 = _layer_sketch.KronSketch(backend, half, seed, {name: index}, None).shapes[name]
                S1 = _layer_sketch.signs(seed, index, 2 * part, r * m1, c, J)
                S2 = _layer_sketch.signs(seed, index, 2 * part + 1, r * m2, kk, J)
                X = J.reshape(*J.shape[:2], c, kk)
                h = torch.einsum("rac,nock,rbk->norab", S1.view(r, m1, c), X, S2.view(r, m2, kk))
                out[:, :, cols] += h.reshape(*J.shape[:2], -1) / math.sqrt(half)
            else:
                bucket, sign = _hashes(J.shape[-1], half, seed, index, J.device)[part]
                out[:, :, cols].index_add_(2, bucket, J * sign.to(DT))
    return out / math.sqrt(2.0)


@pytest.mark.parametrize("route", ["positions", "weights", "auto"])
def test_features_are_the_projection_of_the_exact_gradients(route, monkeypatch):
    model = _lm()
    if route != "auto":  # force one route for every layer
        pick = (0.0, 1.0) if route == "positions" else (1.0, 0.0)
        monkeypatch.setattr(_layer_sketch, "route_flops", lambda *a: pick)
    phi = gradient_features(model, IDS, 512, seed=4, implementation="structured")
    # float64: the factorized and brute-force gradients differ by rounding only
    torch.testing.assert_close(phi, _expected(model, IDS, 512, 4), rtol=1e-10, atol=1e-12)


def test_structured_sketch_is_unbiased():
    model = _lm()
    exact = torchntk.empirical_ntk(model, IDS, mode="full")
    check_unbiased(lambda s: sketched_ntk(model, IDS, k=64, seed=s, implementation="structured").kernel, exact)


def test_structured_error_falls_like_k_to_the_minus_half_and_is_estimated():
    model = _lm()
    exact = torchntk.empirical_ntk(model, IDS, mode="mean")
    check_error_law(lambda k, s: sketched_ntk(model, IDS, k=k, seed=s, mode="mean", implementation="structured"),
                    exact, seeds=4)


def test_rows_blocks_and_the_cross_kernel_share_the_projection():
    model = _lm()
    phi = gradient_features(model, IDS, 256, seed=2)
    # the same call repeated: the same bytes
    assert torch.equal(phi, gradient_features(model, IDS, 256, seed=2))
    # a sub-batch and blocks of two examples: the same numbers up to rounding
    torch.testing.assert_close(gradient_features(model, IDS[2:5], 256, seed=2), phi[2:5], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(gradient_features(model, IDS, 256, seed=2, block_size=2), phi, rtol=1e-10, atol=1e-13)
    # numpy token ids, as empirical_ntk takes them: converted to the same int64 tensor, then the
    # same call on the same bytes (bitwise equality holds on every CPU)
    assert torch.equal(gradient_features(model, IDS.numpy(), 256, seed=2), phi)
    cross = sketched_ntk(model, IDS, IDS[:3], k=256, seed=2, mode="full", exact_parts=False).kernel
    torch.testing.assert_close(cross, torch.einsum("iak,jbk->ijab", phi, phi[:3]), rtol=1e-10, atol=1e-13)


class _Recalled(nn.Module):
    """Calls its layer a second time on batches of more than two examples (value unchanged):
    the structured plan, probed on two examples, is stale for larger batches."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        y = self.lin(x)
        if x.ndim == 2 and x.shape[0] > 2:
            y = y + 0.0 * self.lin(x)
        return y


def test_auto_falls_back_to_the_jacobian_sketch_and_explicit_choices_report():
    torch.manual_seed(0)
    model = _Recalled().to(DT)
    x = torch.randn(5, 3, dtype=DT)
    auto = gradient_features(model, x, 64, seed=1)
    torch.testing.assert_close(auto, gradient_features(model, x, 64, seed=1, implementation="jacobian"),
                               rtol=1e-12, atol=1e-14)
    with pytest.raises(UnsupportedLayerError, match="structured"):
        gradient_features(model, x, 64, seed=1, implementation="structured")
    fn_params = {"w": torch.randn(3, dtype=DT)}
    with pytest.raises(InvalidArgumentError, match="covered layers"):
        gradient_features(lambda p, x: x @ p["w"], x, 64, params=fn_params, implementation="structured")
    with pytest.raises(InvalidArgumentError, match="implementation"):
        gradient_features(model, x, 64, implementation="ntvp")
    via_api = torchntk.empirical_ntk(_lm(), IDS, sketch=128, seed=3, mode="mean", implementation="structured")
    torch.testing.assert_close(via_api, sketched_ntk(_lm(), IDS, k=128, seed=3, mode="mean").kernel,
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("k_h,c,k,o_c,o_k,several", [
    (2048, 256, 256, 10, 1, True), (2048, 256, 1024, 10, 1, True), (2048, 5000, 256, 10, 11, True),
    (2048, 5000, 256, 0, 10, True), (1024, 64, 32, 1, 1, False), (999, 64, 64, 3, 1, True),
    (64, 2, 3, 4, 1, True), (2, 1, 1, 1, 1, True)])
def test_kron_shape_rule(k_h, c, k, o_c, o_k, several):
    r, m1, m2 = _layer_sketch.kron_shape(k_h, c, k, o_c, o_k, several)
    assert r * m1 * m2 == k_h and 1 <= m1 <= max(1, c) and 1 <= m2 <= max(1, k)
    assert m1 + m2 <= _layer_sketch.MAX_SIDES
    if not several or k_h % 2:  # a rank-one gradient, or no power of two divides k_h
        assert (m1, m2) == (1, 1)
        return

    def score(a, b):  # the rule minimizes this over the allowed shapes: brute force over all
        return (o_c * c / b + o_k * k / a) * (1 + (a + b) / _layer_sketch.ASSUMED_RANK)

    shapes = [(a, b) for a in (1, 2, 4, 8, 16, 32) for b in (1, 2, 4, 8, 16, 32)
              if a <= c and b <= k and k_h % (a * b) == 0 and a + b <= _layer_sketch.MAX_SIDES]
    assert score(m1, m2) <= min(score(a, b) for a, b in shapes) * (1 + 1e-12)
    if o_c == 0:  # nothing to save on a gathered side: no variance spent there
        assert m2 == 1


def test_signs_are_reproducible_balanced_and_cached_within_a_bound(monkeypatch):
    like = torch.zeros((), dtype=DT)
    s = _layer_sketch.signs(5, 3, 1, 64, 1000, like)
    _layer_sketch.clear_signs()  # drawn again, not taken from the cache: the same draw repeated
    assert torch.equal(s, _layer_sketch.signs(5, 3, 1, 64, 1000, like))
    monkeypatch.setattr(_layer_sketch, "SIGNS_CACHE_BYTES", 3 * 64 * 1000 * 8)
    for part in range(6):
        _layer_sketch.signs(5, 3, part, 64, 1000, like)
    assert sum(t.numel() * t.element_size() for t in _layer_sketch._SIGNS.values()) <= 3 * 64 * 1000 * 8
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    # independent fair signs: S^T S / rows has unit diagonal and off-diagonal entries of
    # standard deviation 1/sqrt(rows) = 0.125; 6 standard deviations
    gram = s.T @ s / 64
    off = gram - torch.eye(1000, dtype=DT)
    assert float(off.abs().max()) < 6 * 0.125 and abs(float(off.mean())) < 0.01
    assert not torch.equal(s, _layer_sketch.signs(5, 3, 2, 64, 1000, like))


def _exact_names(model, x, k: int) -> frozenset:
    fm = make_functional(model)
    ent = entry(fm, x)
    backend = _structured_backend(fm, ent.probe, ent.out_dim)
    return _layer_sketch.KronSketch(backend, k // 2, 0, {n: i for i, n in enumerate(fm.params)},
                                    lambda *a: None, exact=True).exact, fm, backend


def test_exact_parts_choose_rank_one_weights_then_vectors_within_the_features_size():
    model = _lm()
    names, fm, backend = _exact_names(model, IDS, 256)
    # after the last attention only the last position has a cotangent: fc and out are rank one
    assert {"fc.weight", "out.weight"} <= names
    # never a weight of several positions or a group of tied uses
    assert not names & {"tok.weight", "pos.weight", "qkv.weight", "proj.weight"}
    o = backend.out_dim
    size = {lay.weight: o * backend.shapes[lay.name].C + backend.shapes[lay.name].K
            for lay in backend.layers if lay.weight in ("fc.weight", "out.weight")}
    for k in (8, 64, 256):  # the kept factors never hold more than the O k numbers of the features
        chosen = _exact_names(model, IDS, k)[0]
        assert sum(size.get(n, o * fm.params[n].numel()) for n in chosen) <= o * k
    assert not _exact_names(model, IDS, 2)[0]


@pytest.mark.parametrize("mode", ["full", "diagonal", "mean"])
def test_a_model_whose_parameters_all_qualify_gets_its_exact_kernel(mode):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)).to(DT)
    x = torch.randn(9, 5, dtype=DT, generator=torch.Generator().manual_seed(2))
    for x2 in (None, x[:4]):
        est = sketched_ntk(net, x, x2, k=512, seed=1, mode=mode, block_size=4)
        exact = torchntk.empirical_ntk(net, x, x2, mode=mode)
        # float64 products of the same factors in another order
        torch.testing.assert_close(est.kernel, exact, rtol=1e-10, atol=1e-12)
        assert est.error == 0.0


def test_exact_parts_keep_the_estimate_unbiased_and_blocks_consistent():
    model = _lm()
    exact = torchntk.empirical_ntk(model, IDS, mode="mean")
    check_unbiased(lambda s: sketched_ntk(model, IDS, k=64, seed=s, mode="mean").kernel, exact)
    whole = sketched_ntk(model, IDS, IDS[:3], k=256, seed=4, mode="full")
    blocks = sketched_ntk(model, IDS, IDS[:3], k=256, seed=4, mode="full", block_size=2)
    torch.testing.assert_close(blocks.kernel, whole.kernel, rtol=1e-10, atol=1e-12)
    # the exact parts are exact: the projected parameters' error is all that is left
    pure = [sketched_ntk(model, IDS, k=256, seed=s, mode="full", exact_parts=False) for s in range(8)]
    hybrid = [sketched_ntk(model, IDS, k=256, seed=s, mode="full") for s in range(8)]
    full = torchntk.empirical_ntk(model, IDS, mode="full")

    def rel(e):
        return float(torch.linalg.vector_norm(e.kernel - full) / torch.linalg.vector_norm(full))
    assert sum(map(rel, hybrid)) < sum(map(rel, pure))
    with pytest.raises(InvalidArgumentError, match="exact_parts"):
        sketched_ntk(model, IDS, k=256, exact_parts="yes")
