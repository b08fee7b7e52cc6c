"""Renamed arguments: the new name everywhere, the old one kept for a release with a warning.

Each old name must give exactly the result of the new one, warn with a DeprecationWarning, and
refuse to be combined with the new one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchntk import layers as L
from torchntk.cli import build_parser
from torchntk.cli._common import config_defaults
from torchntk.dynamics import mse
from torchntk.errors import InvalidArgumentError
from torchntk.scale import KernelOperator, SpectralDynamics, kernel_regression, tiled_kernel, top_eigh


def _x(n=9, d=3, seed=0):
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_spec_kernel_batch_size_is_block_size():
    spec, x = L.mlp(32, 3), _x()
    new = spec.kernel(x, block_size=2)
    with pytest.warns(DeprecationWarning, match="`batch_size` is deprecated.*`block_size`"):
        old = spec.kernel(x, batch_size=2)
    assert torch.equal(new.ntk, old.ntk) and torch.equal(new.nngp, old.nngp)
    with pytest.raises(InvalidArgumentError, match="block_size"):
        spec.kernel(x, block_size=2, batch_size=3)


def test_mse_test_batch_size_is_block_size():
    x, xt = _x(), _x(7, seed=1)
    k, kt, y = x @ x.T + 1, xt @ x.T + 1, torch.sin(x[:, 0])
    new = mse(k, y, block_size=2)(torch.tensor([0.0, 3.0]), kt)[1]
    with pytest.warns(DeprecationWarning, match="test_batch_size"):
        old = mse(k, y, test_batch_size=2)(torch.tensor([0.0, 3.0]), kt)[1]
    assert torch.equal(new, old)


def test_tiled_kernel_tile_and_operator_chunk():
    x = _x(20)
    fn = lambda a, b: a @ b.T  # noqa: E731
    new = tiled_kernel(fn, x, block_size=8, progress=False)
    with pytest.warns(DeprecationWarning, match="`tile`"):
        old = tiled_kernel(fn, x, tile=8, progress=False)
    assert torch.equal(new, old)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double().eval()
    v = np.random.default_rng(0).normal(size=(40, 2))
    new_op = KernelOperator.from_model(net, x, block_size=6)
    with pytest.warns(DeprecationWarning, match="`chunk`"):
        old_op = KernelOperator.from_model(net, x, chunk=6)
    np.testing.assert_allclose(new_op.matmat(v), old_op.matmat(v), rtol=1e-13, atol=1e-13)


def test_scale_names_of_the_test_kernel():
    x, xt = _x(12), _x(4, seed=1)
    k, kt, y = x @ x.T + 1, xt @ x.T + 1, torch.sin(x[:, :1])
    _, new, _ = kernel_regression(k, y, kt, diag_reg=0.1, diag_reg_mode="absolute", rtol=1e-12)
    with pytest.warns(DeprecationWarning) as record:
        _, old, _ = kernel_regression(kernel_train=k, y_train=y, kernel_test_train=kt, diag_reg=0.1,
                                      diag_reg_mode="absolute", rtol=1e-12)
    assert {str(w.message).split("`")[1] for w in record} == {"kernel_train", "kernel_test_train"}
    assert torch.equal(new, old)
    lam, q = top_eigh(k, 5)
    dyn = SpectralDynamics(lam, q, y)
    with pytest.warns(DeprecationWarning, match="kernel_test_train"):
        old = dyn.test(2.0, kernel_test_train=kt)
    new = dyn.test(2.0, ntk_test_train=kt)
    assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])


def test_cli_tile_flag_and_config_key_are_block_size(tmp_path):
    parser, subs = build_parser()
    assert parser.parse_args(["kernel", "--tile", "7"]).block_size == 7
    assert parser.parse_args(["kernel", "--block-size", "7"]).block_size == 7
    for key in ("tile", "block-size", "block_size"):
        path = tmp_path / f"{key}.toml"
        path.write_text(f"{key} = 5\n")
        assert config_defaults(str(path), subs["kernel"], "kernel") == {"block_size": 5}


def test_ensemble_get_is_kind():
    from torchntk.dynamics import ensemble

    x = _x()
    k, th, y = x @ x.T / 3 + 1, 2 * (x @ x.T / 3) + 1, torch.sin(x[:, :1])
    pred = ensemble(k, th, y, diag_reg=1e-3)
    new = pred(2.0, kind="NNGP")  # choices in any case
    with pytest.warns(DeprecationWarning, match="`get` is deprecated.*`kind`"):
        old = pred(2.0, get="nngp")
    assert torch.equal(new.mean, old.mean) and torch.equal(new.covariance, old.covariance)
    with pytest.raises(InvalidArgumentError, match="kind"):
        pred(2.0, kind="ntk", get="nngp")


def test_feature_map_batch_size_is_block_size():
    from torchntk.features import FeatureMap
    from torchntk.features.map import FeatureRows

    fm = FeatureMap(L.serial(L.Dense(8), L.Relu(), L.Dense(1)), 64, seed=0)
    x = _x(10)
    new = fm(x, block_size=3)
    with pytest.warns(DeprecationWarning, match="`batch_size` is deprecated.*`block_size`"):
        old = fm(x, batch_size=3)
    assert torch.equal(new.ntk, old.ntk)
    with pytest.warns(DeprecationWarning, match="batch_size"):
        assert fm.rows(x, batch_size=4).block_size == 4
    with pytest.warns(DeprecationWarning, match="batch_size"):
        assert FeatureRows.from_tensor(torch.ones(5, 2), batch_size=2).block_size == 2
    with pytest.warns(DeprecationWarning, match="block_rows"):
        assert fm.batch_rows((3,)) == fm.block_rows((3,))
    with pytest.raises(InvalidArgumentError, match="block_size"):
        fm(x, block_size=3, batch_size=2)
