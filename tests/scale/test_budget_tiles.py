"""Memory budgets and tile plans."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchntk.errors import InvalidArgumentError
from torchntk.scale import TilePlan, parse_memory, plan_tile
from torchntk.scale.tiles import mirror


@pytest.mark.parametrize(
    "text, expected",
    [("2GiB", 2 * 2**30), ("500MB", 500 * 10**6), ("1.5 kib", 1536), (4096, 4096), ("1e9", 10**9)],
)
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["2 parsecs", "", "-1GB", 0, True, None, "nan"])
def test_parse_memory_rejects(bad):
    with pytest.raises(InvalidArgumentError, match="memory"):
        parse_memory(bad)


def test_plan_tile_fits_budget_and_is_aligned():
    for mem in ["64MiB", "2GiB", "16GiB"]:
        t = plan_tile(100_000, 100_000, memory=mem, n_arrays=2)
        assert t % 64 == 0
        per_entry = 8 * (2 * 3 + 8)
        assert t * t * per_entry <= parse_memory(mem)
        assert (t + 64) ** 2 * per_entry > parse_memory(mem)  # the largest aligned tile that fits
    assert plan_tile(100, 50, memory="2GiB") == 100  # capped at the matrix


def test_tile_plan_covers_the_matrix_once():
    for symmetric, n1, n2 in [(False, 10, 7), (True, 10, 10), (True, 8, 8)]:
        plan = TilePlan(n1, n2, 3, symmetric)
        hits = np.zeros((n1, n2), dtype=int)
        gi, gj = plan.grid
        for bi in range(gi):
            for bj in range(gj):
                si, sj, mirrored = plan.stored_tile(bi, bj)
                assert (si, sj) in plan.tiles()
                assert mirrored == (symmetric and bi > bj)
                hits[plan.rows(bi), plan.cols(bj)] += 1
        assert (hits == 1).all()
        assert len(plan.tiles()) == plan.n_tiles
    assert TilePlan(10, 10, 4, True).n_tiles == 6
    with pytest.raises(InvalidArgumentError):
        TilePlan(3, 4, 2, symmetric=True)


def test_mirror_swaps_sample_and_output_axes():
    t = torch.arange(2 * 3 * 4 * 4.0).reshape(2, 3, 4, 4)
    assert torch.equal(mirror(t), t.permute(1, 0, 3, 2))
    t3 = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(mirror(t3), t3.permute(1, 0, 2))
    assert np.array_equal(mirror(t.numpy()), t.numpy().transpose(1, 0, 3, 2))
