"""A seeded generator of random architectures that both torchntk and neural-tangents support.

``random_case(seed)`` draws one :class:`Case`: a family (fully connected, 1-D or 2-D CNN,
attention over sequences or images, graph network), a recipe (see ``_convert``) of depth 1 to
12 with random ``W_std``/``b_std``, both parameterizations, activations with random parameters,
residual branches (``FanOut`` > ``parallel`` > ``FanInSum``/``FanInConcat``), ``LayerNorm``,
pooling and a ``Flatten``/``GlobalAvgPool``/``GlobalSumPool`` readout, and the inputs (two
batches, and graph patterns). The same seed always gives the same case.

Only architectures that torchntk defines are drawn: ``LayerNorm`` right after an affine layer
(Gaussian pre-activations), ``linear_scaling=False`` attention with the identity mechanism, no
activation whose peer kernel is NaN by construction (``Sign``, ``RectifiedMonomial``; see
test_new_layers_peer.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

FAMILIES = ("fc", "cnn1d", "cnn2d", "attention", "graph")


@dataclass
class Case:
    """One drawn architecture with its inputs (channels first) and graph patterns."""

    seed: int
    family: str
    recipe: tuple
    x1: torch.Tensor
    x2: torch.Tensor
    patterns: tuple[torch.Tensor, torch.Tensor] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def spatial_ndim(self) -> int:
        return self.x1.ndim - 2


def _activation(r: random.Random) -> tuple:
    u = lambda lo, hi: round(r.uniform(lo, hi), 3)  # noqa: E731
    choices = [
        ("Relu", {}),
        ("Erf", {"a": u(0.3, 1.5), "b": u(0.3, 1.5), "c": u(-0.5, 0.5)}),
        ("Gelu", {}),
        ("LeakyRelu", {"alpha": u(-0.5, 0.5)}),
        ("Abs", {}),
        ("ABRelu", {"a": u(-1, 1), "b": u(-1, 1.5)}),
        ("Sigmoid_like", {}),
        ("Sin", {"a": u(0.5, 1.5), "b": u(0.3, 1.5), "c": u(-1, 1)}),
        ("Cos", {"a": u(0.5, 1.5), "b": u(0.3, 1.5), "c": u(-1, 1)}),
        ("Rbf", {"gamma": u(0.2, 1.5)}),
        ("Exp", {"a": u(0.3, 1.0), "b": u(0.1, 0.5)}),
        ("Gaussian", {"a": u(0.5, 1.5), "b": u(-1.0, -0.1)}),
        ("Monomial", {"degree": r.choice([1, 2])}),
        ("Polynomial", {"coef": [u(-0.5, 0.5), u(0.5, 1.2), u(-0.3, 0.3)]}),
        ("Gabor", {}),
        ("ExpNormalized", {"gamma": u(0.3, 1.5), "shift": u(-1.5, 0.0)}),
    ]
    return r.choice(choices)


def _affine_kw(r: random.Random) -> dict:
    b = r.random()
    b_std = None if b < 0.3 else 0.0 if b < 0.4 else round(r.uniform(0.05, 0.6), 3)
    return {
        "W_std": round(r.uniform(0.6, 1.9), 3),
        "b_std": b_std,
        "parameterization": "standard" if r.random() < 0.35 else "ntk",
    }


class _Drawer:
    """Draws the body of one family's recipe, tracking the channel count and whether the
    current activations are Gaussian (LayerNorm is only defined there)."""

    def __init__(self, r: random.Random, family: str, channels: int, spatial: tuple[int, ...]) -> None:
        self.r, self.family, self.c, self.spatial = r, family, channels, spatial

    def affine(self, out: int) -> tuple:
        r, kw = self.r, _affine_kw(self.r)
        if self.family in ("cnn1d", "cnn2d") and r.random() < 0.7:
            nd = len(self.spatial)
            filt = tuple(r.choice([1, 2, 3]) for _ in range(nd))
            # SAME/CIRCULAR keep the spatial size (needed inside residual branches)
            padding = r.choice(["SAME", "CIRCULAR"]) if self.keep_shape else r.choice(["SAME", "VALID", "CIRCULAR"])
            if padding == "VALID" and any(s - f + 1 < 2 for s, f in zip(self.spatial, filt)):
                padding = "SAME"
            if padding == "VALID":
                self.spatial = tuple(s - f + 1 for s, f in zip(self.spatial, filt))
            self.c = out
            return ("Conv", {"out_chan": out, "filter_shape": filt, "padding": padding, **kw})
        if self.family == "attention" and r.random() < 0.4:
            return self.attention(out)
        self.c = out
        return ("Dense", {"out_dim": out, **kw})

    def attention(self, out: int) -> tuple:
        r = self.r
        mech = r.choice(["softmax", "identity", "abs", "relu"])
        kw = {
            "n_chan_out": out, "n_chan_key": r.choice([8, 16]), "n_chan_val": r.choice([8, 16]),
            "n_heads": r.choice([1, 2, 3]), "attention_mechanism": mech,
            "W_key_std": round(r.uniform(0.5, 1.6), 3), "W_value_std": round(r.uniform(0.5, 1.6), 3),
            "W_query_std": round(r.uniform(0.5, 1.6), 3), "W_out_std": round(r.uniform(0.5, 1.6), 3),
            "b_std": r.choice([None, round(r.uniform(0.05, 0.5), 3)]),
        }
        if mech == "identity" and r.random() < 0.3:
            kw["linear_scaling"] = False
        pe = r.choice(["none", "none", "sum", "concat"])
        if pe != "none":
            kw["pos_emb_type"] = pe
            kw["W_pos_emb_std"] = round(r.uniform(0.3, 1.5), 3)
            if r.random() < 0.5:
                kw["pos_emb_decay_fn"] = r.choice(["inverse", "exp", "inverse_sqrt"])
            if r.random() < 0.4:
                kw["pos_emb_p_norm"] = r.choice([1, 1.5, 2, 3])
                if "pos_emb_decay_fn" in kw and kw["pos_emb_p_norm"] > 2:
                    # decay(|x|^p) is a covariance only for p <= 2 (torchntk refuses the others;
                    # tests/peer/test_random_peer.py::test_an_invalid_positional_covariance)
                    kw["pos_emb_p_norm"] = 2
            if r.random() < 0.4:
                kw["val_pos_emb"] = True
            if pe == "concat" and r.random() < 0.5:
                kw["n_chan_pos_emb"] = r.choice([4, 8, 12])
        self.c = out
        return ("GlobalSelfAttention", kw)

    keep_shape = False

    def block(self, gaussian: bool) -> tuple[list, bool]:
        """A few layers after activations that are (or are not) Gaussian: ``(nodes, gaussian
        after them)``. Nonlinearities and sums of branches need Gaussian inputs (in both
        libraries); the peer counts pooling, aggregation and concatenation as non-Gaussian."""
        r, nodes = self.r, []
        u = r.random()
        if u < 0.35 or not gaussian and u < 0.6:
            nodes.append(self.affine(r.choice([8, 16, 32, 64])))
            if r.random() < 0.25:
                axis = 1 if (not self.spatial or r.random() < 0.5) else tuple(range(1, len(self.spatial) + 2))
                eps = r.choice([0.0, 1e-6, round(r.uniform(0.01, 0.3), 3)])
                nodes.append(("LayerNorm", {"axis": axis, "eps": eps}))
                if eps == 0.0 and axis == 1 and r.random() < 0.3:
                    # unit-variance pre-activations: the peer's Hermite assumes them
                    nodes.append(("Hermite", {"degree": r.choice([1, 2, 3])}))
                    return nodes, False
            return nodes, True
        if gaussian and u < 0.7:
            return [_activation(r)], False
        if self.family == "graph" and u < 0.85:
            return [("Aggregate", {})], False
        if self.family in ("cnn1d", "cnn2d") and u < 0.85 and not self.keep_shape and min(self.spatial) >= 4:
            name = r.choice(["AvgPool", "SumPool"])
            win = tuple(2 for _ in self.spatial)
            self.spatial = tuple(s // 2 for s in self.spatial)
            return [(name, {"window_shape": win, "strides": win, "padding": "VALID"})], False
        if gaussian:
            node = self.residual()
            return [node], node[2] == "sum"
        return [_activation(r)] if gaussian else [self.affine(r.choice([8, 16, 32]))], True

    def residual(self) -> tuple:
        """``x -> branch(x) (+ or concat) x`` on Gaussian ``x``; the branch ends on an affine
        layer (of x's width for a sum), so that the result is Gaussian."""
        r, c_in = self.r, self.c
        kind = "sum" if r.random() < 0.75 else "concat"
        saved, self.keep_shape = self.keep_shape, True
        branch = []
        if r.random() < 0.3 and self.family != "fc":
            branch.append(("LayerNorm", {"axis": 1, "eps": r.choice([1e-6, 0.1])}))
        if r.random() < 0.6:
            branch.append(_activation(r))
        if r.random() < 0.5 or not branch:
            branch.append(self.affine(r.choice([16, 64])))
            branch.append(_activation(r))
        k = c_in if kind == "sum" else r.choice([8, 16])
        branch.append(self.affine(k))
        other = [self.affine(c_in)] if kind == "sum" and r.random() < 0.3 else []
        self.keep_shape = saved
        self.c = c_in if kind == "sum" else c_in + k
        return ("fan", [branch, other], kind)


def _inputs(r: random.Random, family: str, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    n1, n2 = r.choice([2, 3, 4]), r.choice([2, 3])
    c = r.choice([2, 3, 4])
    spatial = {
        "fc": (), "cnn1d": (r.choice([4, 5, 6]),), "cnn2d": (r.choice([3, 4]), r.choice([3, 4])),
        "attention": (r.choice([3, 4, 5]),) if r.random() < 0.8 else (2, 3), "graph": (r.choice([3, 4, 5]),),
    }[family]
    if family == "fc":
        c = r.choice([2, 3, 4, 6])
    x1 = torch.randn(n1, c, *spatial, generator=g, dtype=torch.float64)
    x2 = torch.randn(n2, c, *spatial, generator=g, dtype=torch.float64)
    return x1, x2, spatial


def random_case(seed: int, family: str | None = None, max_depth: int = 12) -> Case:
    """The architecture and inputs of ``seed`` (``family`` forced or drawn; depth 1 to
    ``max_depth`` layers before the readout, a residual fan counting as one)."""
    r = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    family = family or r.choice(FAMILIES)
    x1, x2, spatial = _inputs(r, family, g)
    d = _Drawer(r, family, x1.shape[1], spatial)
    depth = r.randint(1, max_depth)
    nodes, gaussian = [d.affine(r.choice([8, 16, 32, 64]))], True  # an affine layer first
    while len(nodes) < depth:
        more, gaussian = d.block(gaussian)
        nodes += more
    if spatial:
        if family == "graph":
            nodes.append((r.choice(["GlobalSumPool", "GlobalAvgPool"]), {}))
        else:
            nodes.append((r.choice(["Flatten", "GlobalAvgPool", "GlobalSumPool"]), {}))
    nodes.append(("Dense", {"out_dim": r.choice([1, 2, 3]), **_affine_kw(r)}))
    patterns = None
    if family == "graph":
        v = spatial[0]
        p1 = torch.rand(len(x1), v, v, generator=g, dtype=torch.float64) * (torch.rand(len(x1), v, v, generator=g) < 0.6)
        p2 = torch.rand(len(x2), v, v, generator=g, dtype=torch.float64) * (torch.rand(len(x2), v, v, generator=g) < 0.6)
        patterns = (p1, p2)
    return Case(seed, family, ("serial", nodes), x1, x2, patterns)
