"""One memory-budget parser and default (torchntk._memory) for every entry point."""

from __future__ import annotations

import pytest
import torch

import torchntk
from torchntk import layers as L
from torchntk._memory import DEFAULT_MEMORY, memory_budget, parse_memory
from torchntk.errors import InvalidArgumentError


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2GiB", 2 * 2**30), ("2Gi", 2 * 2**30), ("2 gib", 2 * 2**30), ("1.5 KiB", 1536),
        ("2GB", 2 * 10**9), ("2G", 2 * 10**9), ("2g", 2 * 10**9), ("500MB", 500 * 10**6),
        ("1e9", 10**9), ("1E9", 10**9), ("2.5e3 kb", 2_500_000), ("512 B", 512), ("4096", 4096),
        (4096, 4096), (1e9, 10**9),
    ],
)
def test_units_iec_for_i_si_otherwise(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["2 parsecs", "", "-1GB", "2i", "GiB", 0, 0.5, "nan", "inf", True, None, [1]])
def test_bad_budgets_raise_naming_the_argument(bad):
    with pytest.raises(InvalidArgumentError, match="`memory`"):
        parse_memory(bad)


def test_none_is_the_default_of_2_gib():
    assert memory_budget(None) == DEFAULT_MEMORY == 2 * 2**30
    assert memory_budget("1GiB") == 2**30
    assert torchntk.scale.parse_memory is parse_memory


def test_every_entry_point_accepts_strings_and_rejects_nonsense():
    x = torch.randn(6, 3, dtype=torch.float64)
    spec = L.mlp(16, 2)
    ref = spec.kernel(x).ntk
    torch.testing.assert_close(spec.kernel(x, memory="1GiB").ntk, ref, rtol=0, atol=0)
    with pytest.raises(InvalidArgumentError, match="`memory`"):
        spec.kernel(x, memory="lots")
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    full = torchntk.empirical_ntk(net, x, mode="mean")
    # a tiny budget forces one example per block: the same numbers up to summation order
    torch.testing.assert_close(torchntk.empirical_ntk(net, x, mode="mean", memory="2G"), full)
    torch.testing.assert_close(torchntk.empirical_ntk(net, x, mode="mean", memory="1 KB"), full,
                               rtol=1e-12, atol=1e-12)
    assert torchntk.scale.plan_tile(10**6, 10**6, memory=None) == torchntk.scale.plan_tile(10**6, 10**6,
                                                                                           memory="2GiB")


def test_cache_bytes_environment_variable_sets_the_analytic_blocks(monkeypatch):
    from torchntk import layers as L
    from torchntk._memory import cache_entries
    from torchntk.layers._core.planner import _block_size

    monkeypatch.delenv("TORCHNTK_CACHE_BYTES", raising=False)
    assert cache_entries() == 2**15  # the constant default, whatever the processor
    cpu = torch.device("cpu")
    default = _block_size((3, 8, 8), False, torch.float64, None, 2**31, cpu), \
        _block_size((5,), False, torch.float64, None, 2**31, cpu)
    assert default == (int((2**15 / 64) ** 0.5), 181)
    monkeypatch.setenv("TORCHNTK_CACHE_BYTES", "16KiB")
    assert cache_entries() == 2048
    assert (_block_size((3, 8, 8), False, torch.float64, None, 2**31, cpu),
            _block_size((5,), False, torch.float64, None, 2**31, cpu)) == (5, 45)
    # smaller blocks and row slices are the same kernel up to the rounding of other block shapes
    # (1e-12 off the diagonal; on it the arc-cosine turns an ulp of q12 into ~sqrt(eps) = 1.5e-8)
    spec = L.serial(L.Conv(8, (3, 3), padding="SAME", b_std=0.1), L.Relu(), L.Flatten(), L.Dense(1))
    x = torch.randn(30, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    small = spec.kernel(x)
    monkeypatch.delenv("TORCHNTK_CACHE_BYTES")
    big = spec.kernel(x)
    off = ~torch.eye(30, dtype=torch.bool)
    scale = float(big.ntk.abs().max())
    torch.testing.assert_close(small.ntk[off], big.ntk[off], rtol=1e-12, atol=1e-12 * scale)
    torch.testing.assert_close(small.ntk, big.ntk, rtol=1e-7, atol=1e-7 * scale)
    monkeypatch.setenv("TORCHNTK_CACHE_BYTES", "lots")
    with pytest.raises(InvalidArgumentError, match="TORCHNTK_CACHE_BYTES"):
        cache_entries()
