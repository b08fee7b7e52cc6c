"""One memory-budget parser and default (torchntk._memory) for every entry point."""

from __future__ import annotations

import pytest
import torch

import torchntk
from torchntk import layers as L
from torchntk import _memory
from torchntk._memory import (
    DEFAULT_MEMORY, MAX_DEFAULT, MIN_DEFAULT, available_memory, default_memory, format_memory, memory_budget,
    parse_memory,
)
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


def test_none_follows_the_available_memory_and_default_memory_stays_2_gib():
    """``None`` is a quarter of the available memory, a power of two within [512 MiB, 16 GiB]."""
    assert DEFAULT_MEMORY == 2 * 2**30  # the fixed default of the machine-independent tilings
    avail = available_memory()
    assert avail is not None and avail > 0  # /proc/meminfo or sysconf on every test machine
    got = memory_budget(None)
    assert got == default_memory() and got & (got - 1) == 0  # a power of two
    assert MIN_DEFAULT <= got <= MAX_DEFAULT
    if MIN_DEFAULT < got < MAX_DEFAULT:  # not clamped: the largest power of two <= avail / 4
        assert got <= avail / 4 < 2 * got
    assert memory_budget("1GiB") == 2**30
    assert torchntk.scale.parse_memory is parse_memory


@pytest.mark.parametrize(
    ("avail", "expected"),
    [(None, 2 * 2**30), (2**30, 2**29), (10 * 2**30, 2 * 2**30), (33 * 2**30, 8 * 2**30), (2**40, 16 * 2**30)],
)
def test_default_memory_rule(monkeypatch, avail, expected):
    """Unknown: 2 GiB; 1 GiB available: the 512 MiB floor; 10 GiB: 2.5 -> 2 GiB; 33 GiB:
    8.25 -> 8 GiB; 1 TiB: the 16 GiB cap."""
    monkeypatch.setattr(_memory, "available_memory", lambda device=None: avail)
    assert memory_budget(None) == default_memory() == expected


def test_format_memory_reads_back():
    for n in (1, 1000, 1536, 3 * 2**20 + 1, 5 * 2**30):
        assert parse_memory(format_memory(n, round_up=True)) >= n
    assert format_memory(1536) == "1.5KiB" and format_memory(2 * 2**30) == "2GiB"


@pytest.mark.filterwarnings("ignore::torchntk.errors.BudgetWarning")  # "1 KB" forces tiny blocks
def test_every_entry_point_accepts_strings_and_rejects_nonsense():
    x = torch.randn(6, 3, dtype=torch.float64)
    spec = L.mlp(16, 2)
    ref = spec.kernel(x).ntk
    # another budget may plan other blocks (other matmul shapes for the input Gram): float64
    # rounding off the diagonal, which the ReLU carries with a modest factor; the diagonal is
    # cov1 bit for bit in every blocking
    torch.testing.assert_close(spec.kernel(x, memory="1GiB").ntk, ref, rtol=1e-12,
                               atol=1e-12 * float(ref.abs().max()))
    with pytest.raises(InvalidArgumentError, match="`memory`"):
        spec.kernel(x, memory="lots")
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    full = torchntk.empirical_ntk(net, x, mode="mean")
    # a tiny budget forces one example per block: the same numbers up to summation order
    torch.testing.assert_close(torchntk.empirical_ntk(net, x, mode="mean", memory="2G"), full)
    torch.testing.assert_close(torchntk.empirical_ntk(net, x, mode="mean", memory="1 KB"), full,
                               rtol=1e-12, atol=1e-12)
    assert torchntk.scale.plan_tile(10**6, 10**6, memory=None) == torchntk.scale.plan_tile(
        10**6, 10**6, memory=default_memory())
    assert torchntk.scale.plan_tile(10**6, 10**6) == torchntk.scale.plan_tile(10**6, 10**6, memory="2GiB")


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
