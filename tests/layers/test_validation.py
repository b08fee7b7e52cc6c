"""One validation floor for the layers' arguments (``torchntk._checks``).

Every int, real, hyperparameter and choice argument of a layer goes through ``check_int``,
``check_ints``, ``check_number``, ``check_hyper`` or ``check_choice``: bad values raise an
InvalidArgumentError naming the argument (and the layer), bools and fractional values are never
taken for ints, and choice strings match in any case (CONVENTIONS section 6).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchntk import layers as L
from torchntk._checks import check_choice, check_hyper, check_int, check_ints, check_number
from torchntk.errors import InvalidArgumentError
from torchntk.layers.activations._expectations import gaussian_expectations

F64 = torch.float64


# -- the floor itself ---------------------------------------------------------------------------


def test_check_int_takes_integers_and_refuses_bools_floats_and_bounds():
    assert check_int("n", 3) == 3 and type(check_int("n", np.int64(3))) is int
    assert check_int("n", None, allow_none=True) is None
    for bad in (True, 2.0, 2.5, "3", None, torch.tensor(3)):
        with pytest.raises(InvalidArgumentError, match="`n` must be an int"):
            check_int("n", bad)
    with pytest.raises(InvalidArgumentError, match=r"Who: `n` must be a positive int or None, got 0"):
        check_int("n", 0, minimum=1, allow_none=True, who="Who")
    with pytest.raises(InvalidArgumentError, match=r"`n` must be an int >= 2"):
        check_int("n", 1, minimum=2)


def test_check_ints_never_truncates():
    assert check_ints("s", 4) == (4,) and check_ints("s", torch.Size([2, 3])) == (2, 3)
    assert check_ints("s", (np.int32(1), -1)) == (1, -1)
    for bad in (2.5, (2, 2.0), (True, 2), "ab", None):
        with pytest.raises(InvalidArgumentError, match="`s` must be an int or a sequence of ints"):
            check_ints("s", bad)


def test_check_number_and_check_hyper_bounds():
    assert check_number("r", 1) == 1.0 and check_number("r", None, allow_none=True) is None
    for bad in (True, "1", float("nan"), float("inf"), torch.tensor(0.5)):
        with pytest.raises(InvalidArgumentError, match="`r`"):
            check_number("r", bad)
    with pytest.raises(InvalidArgumentError, match=r"`r` must be > 0"):
        check_number("r", 0.0, minimum=0.0, strict=True)
    with pytest.raises(InvalidArgumentError, match=r"`r` must be < 1"):
        check_number("r", 1.0, below=1.0)
    t = torch.tensor(0.3, dtype=F64, requires_grad=True)
    assert check_hyper("w", t) is t  # kept: kernels stay differentiable in it
    assert check_hyper("w", None, allow_none=True) is None
    for bad in (torch.tensor(float("nan")), torch.tensor([1.0]), torch.tensor(1), True):
        with pytest.raises(InvalidArgumentError, match="`w`"):
            check_hyper("w", bad)
    with pytest.raises(InvalidArgumentError, match=r"L: `w` must be >= 0"):
        check_hyper("w", torch.tensor(-1.0), minimum=0.0, who="L")


def test_check_choice_case():
    assert check_choice("m", "Train", ("train", "test"), any_case=True) == "train"
    assert check_choice("p", "same", ("VALID", "SAME"), any_case=True) == "SAME"
    with pytest.raises(InvalidArgumentError, match="unknown m='Train'"):  # exact unless asked
        check_choice("m", "Train", ("train", "test"))
    for bad in (None, 1, "tr"):
        with pytest.raises(InvalidArgumentError, match=r"Dropout: unknown m="):
            check_choice("m", bad, ("train", "test"), any_case=True, who="Dropout")


# -- the layers on it ---------------------------------------------------------------------------

BAD_ARGUMENTS = [
    (lambda: L.Dense(True), "Dense: `out_dim`"),
    (lambda: L.Dense(2.0), "Dense: `out_dim`"),
    (lambda: L.Conv(True, 2), "Conv: `out_chan`"),
    (lambda: L.Conv(2, 2.5), "Conv: `filter_shape`"),
    (lambda: L.AvgPool((2.5, 2)), "AvgPool: `window_shape`"),
    (lambda: L.FanOut(True), "FanOut: `num`"),
    (lambda: L.repeat(L.Relu(), 1.0), "repeat: `n`"),
    (lambda: L.mlp(512, 2.0), "mlp: `depth`"),
    (lambda: L.Monomial(True), "Monomial: `degree`"),
    (lambda: L.Hermite(-1), "Hermite: `degree`"),
    (lambda: L.RectifiedMonomial(1.5), "RectifiedMonomial: `degree`"),
    (lambda: L.ExpNormalized(gamma=0.0), "ExpNormalized: `gamma` must be > 0"),
    (lambda: L.ExpNormalized(shift=float("nan")), "ExpNormalized: `shift` must be finite"),
    (lambda: L.Elementwise(torch.tanh, degree=1), "Elementwise: `degree`"),
    (lambda: L.Elementwise(torch.tanh, method="simpson"), "Elementwise: unknown method"),
    (lambda: L.GlobalSelfAttention(4, 4, 4, n_heads=0), "GlobalSelfAttention: `n_heads`"),
    (lambda: L.GlobalSelfAttention(4, 4, 4, 1, W_key_std=-1.0), "GlobalSelfAttention: `W_key_std` must be >= 0"),
    (lambda: L.GlobalSelfAttention(4, 4, 4, 1, b_std="0"), "GlobalSelfAttention: `b_std`"),
    (lambda: L.GlobalSelfAttention(4, 4, 4, 1, pos_emb_p_norm=0), "GlobalSelfAttention: `pos_emb_p_norm` must be > 0"),
    (lambda: L.GlobalSelfAttention(4, 4, 4, 1, attention_mechanism="max"), "GlobalSelfAttention: unknown attention_mechanism"),
    (lambda: L.Dropout(False), "Dropout: `rate`"),
    (lambda: L.Dropout(1.0), "Dropout: `rate` must be < 1"),
    (lambda: L.Dropout(0.1, mode="eval"), "Dropout: unknown mode"),
    (lambda: L.LayerNorm(axis=1.5), "LayerNorm: `axis`"),
    (lambda: L.LayerNorm(eps=-1.0), "LayerNorm: `eps` must be >= 0"),
    (lambda: L.Aggregate(3), "Aggregate: unknown implementation"),
    (lambda: L.ImageResize((-1, -1, 2.5), "linear"), "ImageResize: `shape`"),
    (lambda: L.ImageResize((-1, -1, 2), "cubic"), "ImageResize: unknown method"),
    (lambda: L.Conv(2, 2, padding=1), "Conv: unknown padding"),
    (lambda: L.Dense(2, parameterization="mup"), "Dense: unknown parameterization"),
    (lambda: L.Dense(2, W_std=float("inf")), "Dense: `W_std` must be finite"),
    (lambda: L.DotGeneral(rhs=torch.ones(3), dimension_numbers=(((2.5,), (0,)), ((), ()))), "DotGeneral: `dimension_numbers`"),
    (lambda: L.serial(L.Dense(1)).kernel(torch.ones(2, 3), block_size=2.0), "`block_size`"),
    (lambda: L.serial(L.Dense(1)).module((3.5,)), "`input_shape`"),
    (lambda: L.monte_carlo_kernel(L.serial(L.Dense(1)), torch.ones(2, 3), n_samples=True), "`n_samples`"),
    (lambda: gaussian_expectations(torch.tanh, 1.0, 0.5, 1.0, degree=2.0), "`degree`"),
]


@pytest.mark.parametrize("make, message", BAD_ARGUMENTS, ids=[m for _, m in BAD_ARGUMENTS])
def test_bad_arguments_raise_a_torchntk_error_naming_them(make, message):
    with pytest.raises(InvalidArgumentError, match=message.replace("(", r"\(")):
        make()


def _kernel(spec, x):
    return spec.kernel(x)


def test_choice_strings_in_any_case_give_the_same_kernel():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 5, dtype=F64)
    pairs = [
        (L.Dropout(0.2, mode="TRAIN"), L.Dropout(0.2, mode="train")),
        (L.Elementwise(torch.tanh, method="Polar", degree=21), L.Elementwise(torch.tanh, method="polar", degree=21)),
        (L.GlobalSelfAttention(4, 4, 4, 1, attention_mechanism="IDENTITY", pos_emb_type="None"),
         L.GlobalSelfAttention(4, 4, 4, 1, attention_mechanism="identity", pos_emb_type="none")),
        (L.Conv(3, 2, padding="circular"), L.Conv(3, 2, padding="CIRCULAR")),
        (L.Conv(3, 2, parameterization="Standard"), L.Conv(3, 2, parameterization="standard")),
    ]
    for upper, lower in pairs:
        assert repr(upper) == repr(lower)  # the canonical spelling is stored
        # the same rule on the same inputs: equal up to the rounding of one float64 evaluation
        torch.testing.assert_close(_kernel(L.serial(L.Dense(4), upper), x).ntk,
                                   _kernel(L.serial(L.Dense(4), lower), x).ntk)
    assert L.Dense(2, parameterization="NTK").module(3).parameterization == "ntk"
    sigma, _ = gaussian_expectations(torch.erf, torch.tensor(1.0, dtype=F64), 0.5, 1.0, method="SERIES")
    # E[erf(u) erf(v)] = (2/pi) asin(2 q12 / sqrt((1 + 2 q11)(1 + 2 q22))) (CONVENTIONS section 2);
    # the series of a smooth function holds it to about 1e-8 (the module's convergence test)
    assert abs(float(sigma) - 2 / np.pi * np.arcsin(1 / 3)) < 1e-7
