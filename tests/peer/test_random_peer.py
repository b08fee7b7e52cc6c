"""torchntk against neural-tangents (the peer) on seeded random architectures, arbitrated by
Monte Carlo (issue 23).

Every drawn architecture (``_random_arch``: FC, 1-D/2-D CNN, attention, graph networks of depth
1 to 12; see its docstring) must either agree with the peer to ``RTOL`` relative on the NNGP and
the NTK, kernel and cross-kernel, or disagree only through a *known peer defect*: the
disagreement must vanish when ``_convert.build_stax`` works the defect around
(``repairs=REPAIRS``), and a Monte Carlo test below shows torchntk right where the peer is not.
The differences are tabulated in docs/peer-differences.md.

Skipped unless neural_tangents imports (``.peer-venv/bin/python -m pytest tests/peer``).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

nt = pytest.importorskip("neural_tangents")
jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)

from torchntk import layers as L  # noqa: E402

from . import _arbiter as A  # noqa: E402
from . import _convert as C  # noqa: E402
from ._random_arch import FAMILIES, random_case  # noqa: E402

pytestmark = [
    pytest.mark.peer,
    pytest.mark.filterwarnings("ignore:Linear scaling attention"),
    pytest.mark.filterwarnings("ignore:`FanIn` layers assume independent inputs"),
    pytest.mark.filterwarnings("ignore:Inputs to this layer are assumed to have unit norm"),
]


def _judge(seed: int, mode: str = "plain", max_depth: int = 12) -> str:
    """``"agree"``, ``"known peer defect"`` or ``"both overflow"``; anything else fails with
    the architecture."""
    case = random_case(seed, max_depth=max_depth)
    out = A.compare(case.recipe, case.x1, case.x2, case.patterns, mode=mode)
    if out.status == "agree":
        return "agree"
    if out.status == "both_nonfinite":  # the kernel itself overflows float64 (e.g. a deep Exp chain)
        return "both overflow"
    if out.status in ("disagree", "peer_nonfinite") and _diagonal_only(case, mode):
        # correlation 1 after pre-activation variances ~1e8 and more: the peer's Erf NTK rule
        # loses the self-kernel's diagonal to the rounding of (1 + 2b^2 q11)(1 + 2b^2 q22) - 4b^4 q12^2
        # (docs/peer-differences.md; torchntk's against the closed form below); all else agrees
        return "peer Erf diagonal"
    if out.status == "disagree":
        repaired = A.compare(case.recipe, case.x1, case.x2, case.patterns, mode=mode, repairs=C.REPAIRS)
        if repaired.status == "agree":
            return "known peer defect"
    raise AssertionError(
        f"seed {seed} ({case.family}, peer {mode}): {out.status} {out.errors} {out.message}\n{C.describe(case.recipe)}"
    )


def _recipe_has(node: tuple, names: set) -> bool:
    if node[0] == "serial":
        return any(_recipe_has(n, names) for n in node[1])
    if node[0] == "fan":
        return any(_recipe_has(n, names) for br in node[1] for n in br)
    return node[0] in names


def _diagonal_only(case, mode: str) -> bool:
    """An Erf-type layer in the network, and the two libraries differ only on the diagonal of
    the self-kernel (its off-diagonal entries and the cross-kernel agree to RTOL)."""
    if not _recipe_has(case.recipe, {"Erf", "Sigmoid_like"}):
        return False
    for second in (None, case.x2):
        a, b = A.ours(case.recipe, case.x1, second, case.patterns), A.peer(case.recipe, case.x1, second, case.patterns, mode=mode)
        for name in ("nngp", "ntk"):
            mine, theirs = getattr(a, name).numpy(), np.array(getattr(b, name))
            if second is None:
                keep = ~np.eye(len(mine), dtype=bool)
                mine, theirs = mine[keep], theirs[keep]
            if not (np.isfinite(theirs).all() and A.rel(mine, theirs) <= A.RTOL):
                return False
    return True


def test_generator_is_seeded_and_covers_the_families():
    a, b = random_case(7), random_case(7)
    assert a.recipe == b.recipe and torch.equal(a.x1, b.x1)  # same seed, same draw
    assert random_case(8).recipe != a.recipe
    assert {random_case(s).family for s in range(40)} == set(FAMILIES)
    for fam in FAMILIES:
        case = random_case(3, family=fam)
        assert case.family == fam and (case.patterns is not None) == (fam == "graph")


@pytest.mark.parametrize("seed", range(30))
def test_random_architecture_agrees_with_the_peer(seed):
    # depth <= 5 by default (the peer's op-by-op kernels take seconds on deep attention stacks)
    _judge(seed, max_depth=5)


# Seeds of the slow run whose disagreement is not explained yet (docs/peer-differences.md, "Open").
# 1284 and 1393 are the peer's Erf diagonal (classified since torchntk's determinant floor);
# 1326 drew exp(+d), which is no covariance, and agrees with the decay exp(-d).
OPEN: set[int] = set()


@pytest.mark.slow
def test_five_hundred_random_architectures_jitted_and_eager():
    """>= 500 architectures, the peer both jitted and with jax.disable_jit(); every outcome
    agrees or is a known peer defect in both modes (and the two modes give the same outcome)."""
    counts: collections.Counter = collections.Counter()
    for seed in range(1000, 1520):
        if seed in OPEN:
            with pytest.raises(AssertionError):  # still unexplained: docs/peer-differences.md, "Open"
                _judge(seed, "eager")
            counts["open"] += 1
            continue
        jit, eager = _judge(seed, "jit"), _judge(seed, "eager")
        assert jit == eager, (seed, jit, eager)
        counts[eager] += 1
    assert sum(counts.values()) >= 500 and counts["agree"] >= 400 and counts["both overflow"] + counts["peer Erf diagonal"] + counts["open"] <= 25, counts


# -- the fully connected case of the issue: b_std=0 ---------------------------------------------


def _dense(n, W, b, p="ntk"):
    return ("Dense", {"out_dim": n, "W_std": W, "b_std": b, "parameterization": p})


ISSUE_FC = ("serial", [
    _dense(8, 1.796, 0.356), ("LayerNorm", {"axis": 1, "eps": 0.175}), ("Erf", {"a": 0.623, "b": 0.772, "c": 0.32}),
    _dense(3, 1.509, None, "standard"), ("Relu", {}), _dense(8, 1.725, 0.262, "standard"),
    ("fan", [[_dense(64, 1.253, 0.086), ("Gelu", {}), _dense(8, 1.645, None, "standard")], []], "sum"),
    _dense(2, 1.48, 0, "standard"),
])


def _fc_inputs():
    g = torch.Generator().manual_seed(23)
    return torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(2, 4, generator=g, dtype=torch.float64)


def test_issue_fc_case_is_the_zero_bias_convention():
    """The readout ``Dense(2, b_std=0, standard)``: torchntk's b_std=0 is *no bias*; the peer's is
    a bias parameter initialized at 0. Its gradient is 1, so in standard parameterization the
    peer's NTK is exactly torchntk's + 1 and the NNGP (a zero bias adds no variance) is equal.
    Sent as the peer's b_std=None, the peer agrees with torchntk to 1e-9."""
    x1, x2 = _fc_inputs()
    assert A.compare(ISSUE_FC, x1, x2).status == "agree"
    literal = A.compare(ISSUE_FC, x1, x2, zero_bias="literal")
    assert literal.status == "disagree"
    assert literal.errors["nngp"] <= A.RTOL and literal.errors["nngp_cross"] <= A.RTOL
    for second in (None, x2):
        ours = A.ours(ISSUE_FC, x1, second).ntk.numpy()
        theirs = np.asarray(A.peer(ISSUE_FC, x1, second, zero_bias="literal").ntk)
        # the difference is the bias's gradient squared, 1, up to float64 rounding of ~1e2 entries
        np.testing.assert_allclose(theirs - ours, 1.0, rtol=0, atol=1e-12 * np.abs(ours).max())


def test_issue_fc_case_minimizes_to_one_standard_dense_with_zero_bias():
    x1, x2 = _fc_inputs()

    def fails(recipe):  # the issue's signature: NNGP equal, NTK not
        out = A.compare(recipe, x1, x2, zero_bias="literal")
        return out.status == "disagree" and out.errors["nngp"] <= A.RTOL

    small = A.minimize(ISSUE_FC, fails)
    assert small == ("serial", [("Dense", {"out_dim": 2, "b_std": 0, "parameterization": "standard"})])


def test_issue_fc_case_exact_at_finite_width():
    """The arbiter, exactly: torchntk's network for the spec (``spec.module``) has no readout
    bias; giving it the peer's zero-initialized bias adds the bias's gradient, 1, to every entry
    of the empirical NTK (mode "mean": the mean over the outputs of the diagonal entries) and
    leaves the outputs unchanged. (A Monte Carlo over widths cannot resolve this offset: in
    standard parameterization the NTK grows with the width while the bias's 1 does not.)"""
    from torchntk import empirical_ntk
    from torchntk import nn as tnn

    x1, x2 = _fc_inputs()
    net = C.build(ISSUE_FC).module((4,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    readout = [m for m in net.modules() if isinstance(m, tnn.Linear)][-1]
    assert readout.out_features == 2 and readout.bias is None
    k0, f0 = empirical_ntk(net, x1, x2, mode="mean"), net(x1)
    readout.bias = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    k1, f1 = empirical_ntk(net, x1, x2, mode="mean"), net(x1)
    # F.linear without a bias is a matmul, with one an addmm (another BLAS call, whose product
    # may round otherwise): a zero added, up to the rounding of the readout's 8-term sums
    torch.testing.assert_close(f1, f0, rtol=1e-13, atol=1e-13 * float(f0.abs().max()))
    # exactly 1 up to the rounding of entries of size |k0|
    torch.testing.assert_close(k1 - k0, torch.ones_like(k0), rtol=0, atol=1e-12 * float(k0.abs().max()))


# -- peer defect: the shapes of layers without an apply_fn (ExpNormalized) ------------------------

EXPNORM_CONCAT = ("serial", [
    ("fan", [[("Dense", {"out_dim": 16}), ("ExpNormalized", {})], []], "concat"),
    ("Dense", {"out_dim": 1}),
])
EXPNORM_STANDARD = ("serial", [
    ("Dense", {"out_dim": 16}),
    ("fan", [[("ExpNormalized", {})], []], "concat"),
    ("Dense", {"out_dim": 1, "parameterization": "standard"}),
])


@pytest.mark.parametrize("recipe", [EXPNORM_CONCAT, EXPNORM_STANDARD], ids=["concat_weights", "standard_fan_in"])
def test_peer_exp_normalized_shapes_defect_and_monte_carlo(recipe):
    """The peer's ExpNormalized has no apply_fn, so the serial/parallel around it reports its
    input's shape: FanInConcat then weighs the branches by the wrong channel counts, and a
    standard-parameterized Dense after the fan takes a wrong fan-in. Repaired (a shape-keeping
    apply_fn) the peer agrees with torchntk to RTOL; the Monte Carlo NTK of torchntk's networks
    (hidden widths x64, 32 draws: standard error ~2%) is within 4 standard errors of torchntk's
    kernel (plus 2% for the O(1/width) finite-width bias), and at least 10 away from the peer's
    (which is 40% and 100% off)."""
    g = torch.Generator().manual_seed(5)
    x1, x2 = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(2, 4, generator=g, dtype=torch.float64)
    out = A.compare(recipe, x1, x2)
    assert out.status == "disagree" and out.errors["ntk"] > 0.05
    assert A.compare(recipe, x1, x2, repairs=C.REPAIRS).status == "agree"
    (arb,) = A.arbitrate(recipe, x1, x2, widths=(64,), n_samples=32)
    assert arb.to_ours["ntk"] <= 4 * arb.stderr + 0.02, (arb.to_ours, arb.stderr)
    assert arb.to_peer["ntk"] >= 10 * arb.stderr + 0.02, (arb.to_peer, arb.stderr)


@pytest.mark.slow
def test_monte_carlo_error_shrinks_like_inverse_sqrt_width():
    """The arbiter's premise: the Monte Carlo NTK's distance to torchntk's kernel falls about as
    width^-1/2 (here from x1 to x64: a factor ~8; at least 3 allowed for the draws' noise),
    while its distance to the peer's stays put (the peer's error is a fixed offset)."""
    g = torch.Generator().manual_seed(6)
    x1, x2 = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(2, 4, generator=g, dtype=torch.float64)
    arbs = A.arbitrate(EXPNORM_CONCAT, x1, x2, widths=(1, 8, 64), n_samples=32)
    assert arbs[-1].to_ours["ntk"] * 3 <= arbs[0].to_ours["ntk"], [a.to_ours for a in arbs]
    assert all(a.to_peer["ntk"] > 0.1 for a in arbs), [a.to_peer for a in arbs]
    assert arbs[-1].to_ours["ntk"] <= 4 * arbs[-1].stderr + 0.01


# -- the Erf NTK's diagonal at huge variances (torchntk fixed; the peer gives inf) -------------


def test_erf_ntk_diagonal_at_huge_variance_against_the_one_dimensional_closed_form():
    """On the diagonal (u = v ~ N(0, q)) the expectations are one-dimensional:
    sdot = E[phi'(u)^2] = a^2 b^2 (4/pi) / sqrt(1 + 4 b^2 q), sigma = a^2 (2/pi) asin(2b^2 q / (1 + 2b^2 q)) + c^2,
    so Dense(64, W_std=1e11) > Sigmoid_like > Dense(1) has NTK diagonal sigma + q sdot with
    q = W_std^2 |x|^2 / d. float64 gives this to ~1e-15 relative; 1e-6 is generous. (Before
    the fix torchntk gave ~1e-2 of it: the rounding of q11 q22 - q12^2, ~1e-16 q^2, outweighed
    1 + 4 b^2 q; the peer gives inf.)"""
    import math

    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    act = L.Sigmoid_like()
    a, b, c = float(act.a), float(act.b), float(act.c)
    q = 1e22 * (x * x).sum(1) / 4
    sdot = (4 / math.pi) * a * a * b * b / torch.sqrt(1 + 4 * b * b * q)
    sigma = a * a * (2 / math.pi) * torch.asin(2 * b * b * q / (1 + 2 * b * b * q)) + c * c
    spec = L.serial(L.Dense(64, W_std=1e11), act, L.Dense(1))
    torch.testing.assert_close(torch.diagonal(spec.kernel(x).ntk), sigma + q * sdot, rtol=1e-6, atol=0)
