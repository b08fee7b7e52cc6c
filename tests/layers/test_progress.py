"""spec.kernel's progress bar: shown on request, never by default on a quick call or off a terminal,
and without effect on the numbers."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from torchntk import layers as L
from torchntk.errors import InvalidArgumentError


def _kernel_and_stderr(**kw):
    spec = L.serial(L.Dense(8, b_std=0.1), L.Relu(), L.Dense(1))
    x = torch.randn(120, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        k = spec.kernel(x, block_size=20, **kw)
    return k, buf.getvalue()


def test_progress_bar_on_request_only():
    k_on, shown = _kernel_and_stderr(progress=True)
    assert "spec.kernel" in shown and "/21" in shown  # 6 row blocks: 21 block pairs on and above the diagonal
    k_auto, quiet = _kernel_and_stderr()
    assert quiet == ""  # a fast call to a non-terminal shows nothing
    k_off, off = _kernel_and_stderr(progress=False)
    assert off == ""
    # the same blocks in the same order: the same numbers (a repeated computation)
    assert torch.equal(k_on.ntk, k_auto.ntk) and torch.equal(k_off.nngp, k_auto.nngp)
    with pytest.raises(InvalidArgumentError, match="progress"):
        L.Dense(1).kernel(torch.ones(2, 3), progress="yes")
