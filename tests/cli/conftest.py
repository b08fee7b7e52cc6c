"""Fixtures of the CLI tests: a small data folder and the one-line error reader."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture()
def data(tmp_path):
    """``train.npz`` (12 x 3, y = sin x_0), ``test.npz`` (5 x 3) and ``net.py`` (an MLP 3 -> 16 -> 1)."""
    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(12, 3)), rng.normal(size=(5, 3))
    np.savez(tmp_path / "train.npz", x=x, y=np.sin(x[:, 0]))
    np.savez(tmp_path / "test.npz", x=xt, y=np.sin(xt[:, 0]))
    (tmp_path / "net.py").write_text("import torch\nfrom torchntk.nn import MLP\n"
                                     "def make_model():\n    torch.manual_seed(0)\n    return MLP(3, [16], 1)\n")
    return tmp_path


@pytest.fixture()
def one_line_error(capsys):
    """Reads stderr and checks it is one ``torchntk: error: ...`` line; returns that line."""
    def read() -> str:
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith("torchntk: error: ")
        return err
    return read
