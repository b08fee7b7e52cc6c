"""Visible choices: the report of ``return_report=True``, the budget warning, numpy inputs, the
default budget and the progress bar."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from torchntk._memory import default_memory, parse_memory
from torchntk.empirical import EmpiricalNTKReport, empirical_ntk
from torchntk.errors import BudgetWarning

from ._models import DT, assert_close, brute_ntk
from ._zoo import build, inputs
from .test_any_model import CubeLayer


def _mlp(dtype=DT) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 1)).to(dtype)


X = torch.randn(100, 3, dtype=DT)


def test_the_report_names_the_choice_the_blocks_and_the_memory():
    model = _mlp()
    kernel, report = empirical_ntk(model, X[:10], X[10:16], return_report=True)
    assert isinstance(report, EmpiricalNTKReport)
    assert_close(kernel, brute_ntk(model, X[:10], X[10:16]))
    assert report.requested == "auto" and report.implementation == report.estimates[0].name
    names = [e.name for e in report.estimates]
    assert {"structured", "jacobian", "ntvp", "autograd"} <= set(names)
    flops = [e.flops for e in report.estimates if e.name in ("structured", "jacobian", "ntvp")]
    assert flops == sorted(flops)  # "auto" tries the cheapest first
    assert (report.n1, report.n2, report.out_dim, report.block, report.tiles) == (10, 6, 1, 10, 1)
    assert report.budget == default_memory() and report.budget_source == "default"
    assert 0 < report.peak_bytes <= report.budget and report.seconds > 0
    text = str(report)
    assert f"implementation {report.implementation!r}" in text and "blocks of 10 example(s), 1 tile(s)" in text
    assert "a quarter of the available memory" in text

    _, one = empirical_ntk(model, X[:10], implementation="jacobian", block_size=4, return_report=True)
    assert [e.name for e in one.estimates] == ["jacobian"] and one.budget_source == "block_size"
    assert (one.block, one.tiles) == (4, 6)  # 3 row blocks: the upper 3 * 4 / 2 tiles


def test_the_report_says_what_was_left_out_and_what_failed():
    model = _mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)
        _, report = empirical_ntk(model, X[:4], memory="2KiB", return_report=True)
    assert report.implementation == "ntvp" and report.budget_source == "memory"
    assert re.search(r"even in blocks of one example, over the budget of 2KiB", report.left_out["structured"])
    torch.manual_seed(0)
    cube = nn.Sequential(nn.PReLU(3), CubeLayer(), nn.PReLU(3)).to(DT)  # defeats vmap; no covered layer
    with pytest.warns(RuntimeWarning, match="cannot handle this model"):
        _, report = empirical_ntk(cube, X[:4], return_report=True)
    assert report.implementation == "autograd" and set(report.failed) >= {"jacobian", "ntvp"}
    assert "failed at `return _Cube.apply(x)`" in str(report)


def test_a_budget_forcing_small_blocks_warns_with_the_budget_it_needs():
    model = _mlp()
    with pytest.warns(BudgetWarning, match=r"blocks of only \d+ example") as rec:
        small, report = empirical_ntk(model, X, mode="mean", memory="150KiB", return_report=True)
    assert report.block < 64
    msg = str(rec[0].message)
    need = re.search(r"Blocks of 64 examples need memory='([^']+)'", msg).group(1)
    whole = re.search(r"all 100 examples memory='([^']+)'", msg).group(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BudgetWarning)  # the suggested budgets are enough
        k64, r64 = empirical_ntk(model, X, mode="mean", memory=need, return_report=True)
        k_all, r_all = empirical_ntk(model, X, mode="mean", memory=whole, return_report=True)
    assert r64.block >= 64 and r64.peak_bytes <= parse_memory(need)
    assert r_all.block == 100
    for k in (small, k64):  # blocked and whole differ by summation order only
        assert_close(k, k_all)


def test_the_kernel_larger_than_the_budget_is_said():
    with pytest.warns(BudgetWarning, match=r"the kernel alone takes .* more than the budget"):
        empirical_ntk(_mlp(), X[:12], mode="mean", implementation="structured", memory="1KiB")


def test_numpy_inputs_are_converted_to_the_model_dtype():
    model = _mlp(torch.float32)
    x = np.random.default_rng(0).standard_normal((6, 3))  # float64 array, float32 model
    ref = empirical_ntk(model, torch.as_tensor(x, dtype=torch.float32))
    out = empirical_ntk(model, x, x[:2])
    assert out.dtype == torch.float32
    torch.testing.assert_close(empirical_ntk(model, x), ref, rtol=0, atol=0)  # the same call
    torch.testing.assert_close(out, ref[:, :2], rtol=1e-5, atol=1e-6)  # float32 rounding
    tokens, ids = build("tokens"), inputs("tokens", 3)
    assert_close(empirical_ntk(tokens, ids.numpy().astype(np.int32)), empirical_ntk(tokens, ids))


class _Recorder:
    made: list = []

    def __init__(self, total, **kwargs):
        self.total, self.kwargs, self.n, self.closed = total, kwargs, 0, False
        _Recorder.made.append(self)

    def update(self, n=1):
        self.n += n

    def close(self):
        self.closed = True


def test_progress_bar_over_the_tiles(monkeypatch):
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", _Recorder)
    _Recorder.made.clear()
    empirical_ntk(_mlp(), X[:10], block_size=3, progress=True)
    (bar,) = _Recorder.made
    assert bar.total == bar.n == 10 and bar.closed  # 4 row blocks: 4 * 5 / 2 upper tiles
    _Recorder.made.clear()
    empirical_ntk(_mlp(), X[:10], block_size=3, progress=False)
    empirical_ntk(_mlp(), X[:10], block_size=3)  # None: tqdm shows it on a terminal only
    assert [b.kwargs["disable"] for b in _Recorder.made] == [True, None]
