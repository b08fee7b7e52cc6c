"""docs/empirical.md runs as written; the 4000 x 4000 "mean" kernel of a 1M-parameter MLP
fits in 4 GiB (slow, opt-in)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_docs_snippets_run(capsys):
    text = (ROOT / "docs" / "empirical.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))
    exec(compile(code, "docs/empirical.md", "exec"), {"__name__": "__docs__"})
    out = capsys.readouterr().out
    assert "True" in out and "False" not in out  # every printed check holds


SCALE = """
import resource, torch, torchntk
from torchntk.nn import MLP
torch.manual_seed(0)
net = MLP(64, [1000, 1000], 10, activation="relu", beta=0.1)
assert sum(p.numel() for p in net.parameters()) > 1_000_000
x = torch.randn(4000, 64)
theta = torchntk.empirical_ntk(net, x, mode="mean", memory="4GiB")
assert theta.shape == (4000, 4000) and bool(torch.isfinite(theta).all())
assert torch.equal(theta, theta.T)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.mark.slow
def test_4000_mean_kernel_of_1m_parameter_mlp_within_4gib():
    out = subprocess.run([sys.executable, "-c", SCALE], capture_output=True, text=True, check=True)
    peak = int(out.stdout.strip().splitlines()[-1])
    assert peak < 4 * 2**30, f"peak RSS {peak / 2**30:.2f} GiB"
