"""Bad specs and bad inputs raise torchntk's errors naming what is wrong; modules match specs."""

from __future__ import annotations

import pytest
import torch

from torchntk import layers as L
from torchntk.errors import InvalidArgumentError, ShapeError, SpecError

IMG = torch.randn(2, 3, 6, 5, dtype=torch.float64)
FLAT = torch.randn(2, 4, dtype=torch.float64)


def test_nonlinearity_needs_a_gaussian_input():
    with pytest.raises(SpecError, match="Gaussian.*Dense or Conv"):
        L.serial(L.Relu(), L.Dense(1)).kernel(FLAT)
    with pytest.raises(SpecError, match="Gaussian"):
        L.serial(L.Conv(4, 2), L.Relu(), L.Erf()).kernel(IMG)
    with pytest.raises(SpecError, match="Gaussian"):
        L.serial(L.Dense(4), L.Relu(), L.LayerNorm()).kernel(FLAT)


def test_fan_in_sum_of_mismatched_shapes():
    spec = L.serial(L.Dense(4), L.FanOut(2), L.parallel(L.Dense(3), L.Dense(5)), L.FanInSum())
    with pytest.raises(SpecError, match=r"FanInSum.*different shapes.*\(3,\).*\(5,\)"):
        spec.kernel(FLAT)
    with pytest.raises(SpecError, match="different shapes"):
        spec.module(4)


def test_conv_on_flat_data():
    with pytest.raises(SpecError, match="Conv needs spatial data.*flat"):
        L.Conv(4, (3, 3)).kernel(FLAT)
    with pytest.raises(SpecError, match="flat"):
        L.serial(L.Conv(4, (2, 2)), L.Flatten(), L.Conv(4, (2, 2))).kernel(IMG)
    with pytest.raises(SpecError, match=r"GlobalAvgPool\(\) needs spatial data"):
        L.GlobalAvgPool().kernel(FLAT)


def test_filter_larger_than_input_with_valid_padding():
    with pytest.raises(SpecError, match=r"window \(7, 2\) is larger than the input's spatial shape \(6, 5\)"):
        L.Conv(4, (7, 2)).kernel(IMG)
    L.Conv(4, (7, 2), padding="SAME").kernel(IMG)  # fine with SAME
    with pytest.raises(SpecError, match="larger"):
        L.AvgPool((3, 6)).kernel(IMG)


def test_window_rank_must_match_the_data():
    with pytest.raises(SpecError, match="2-D window.*1-D spatial"):
        L.Conv(4, (2, 2)).kernel(torch.randn(2, 3, 7))


def test_inputs_of_the_wrong_rank_or_shape():
    with pytest.raises(ShapeError, match="rank 5"):
        L.Dense(3).kernel(torch.randn(2, 1, 2, 2, 2))
    with pytest.raises(ShapeError, match="rank 1"):
        L.Dense(3).kernel(torch.randn(4))
    with pytest.raises(ShapeError, match="empty batch"):
        L.Dense(3).kernel(torch.randn(0, 4))
    with pytest.raises(ShapeError, match="x2"):
        L.Dense(3).kernel(FLAT, torch.randn(2, 5))
    with pytest.raises(InvalidArgumentError, match="x1"):
        L.Dense(3).kernel([[1.0, 2.0]])
    with pytest.raises(ShapeError, match="input_shape"):
        L.Dense(3).module((2, 0))


def test_branch_structure_errors():
    with pytest.raises(SpecError, match="2 branches"):
        L.serial(L.Dense(3), L.FanOut(2), L.Dense(2)).kernel(FLAT)
    with pytest.raises(SpecError, match="ends with 2 branches"):
        L.serial(L.Dense(3), L.FanOut(2)).kernel(FLAT)
    with pytest.raises(SpecError, match="parallel of 3 layers needs 3 branches"):
        L.serial(L.Dense(3), L.FanOut(2), L.parallel(L.Identity(), L.Identity(), L.Identity())).kernel(FLAT)
    with pytest.raises(SpecError, match="needs several branches"):
        L.serial(L.Dense(3), L.FanInSum()).kernel(FLAT)


def test_bad_layer_arguments():
    with pytest.raises(InvalidArgumentError, match="out_dim"):
        L.Dense(0)
    with pytest.raises(InvalidArgumentError, match="W_std"):
        L.Dense(3, W_std=-1.0)
    with pytest.raises(InvalidArgumentError, match="parameterization"):
        L.Conv(3, 2, parameterization="mup")
    with pytest.raises(InvalidArgumentError, match="padding"):
        L.Conv(3, 2, padding="FULL")
    with pytest.raises(InvalidArgumentError, match="rate"):
        L.Dropout(1.0)
    with pytest.raises(SpecError, match="channel axis"):
        L.serial(L.Conv(3, 2), L.LayerNorm(axis=(2, 3))).kernel(IMG)
    with pytest.raises(SpecError, match="input"):
        L.Dropout(0.1).kernel(FLAT)
    with pytest.raises(InvalidArgumentError, match="serial"):
        L.serial(L.Dense(3), torch.nn.ReLU())


def test_module_shapes_follow_the_spec():
    spec = L.serial(
        L.Conv(6, (3, 3), strides=2, padding="SAME"), L.Relu(),
        L.Conv(5, 2, padding="CIRCULAR"), L.Relu(), L.AvgPool(2, padding="SAME"),
        L.Dense(4), L.LayerNorm(axis=(1, 2, 3)), L.Relu(), L.Identity(),
        L.Flatten(), L.Dense(7),
    )
    out = spec.output_shape((3, 6, 5))
    net = spec.module((3, 6, 5), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = net(IMG)
    assert y.shape == (2, *out) == (2, 7)
    assert spec.kernel(IMG).ntk.shape == (2, 2)
    # the same generator gives the same network
    net2 = spec.module((3, 6, 5), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(net2(IMG), y)


def test_rshift_composes_and_repr_names_layers():
    spec = L.Dense(3, b_std=0.1) >> L.Relu() >> L.Dense(1)
    assert isinstance(spec, L.Layer) and len(spec.layers) == 3
    assert "Dense(3" in repr(spec) and "Relu()" in repr(spec)
    assert "layout='flat'" in repr(spec.kernel(FLAT))
