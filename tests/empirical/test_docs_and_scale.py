"""docs/empirical.md runs as written; the 4000 x 4000 "mean" kernel of a 1M-parameter MLP
fits in 4 GiB (slow, opt-in)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchntk

from ._models import assert_close, brute_ntk

ROOT = Path(__file__).resolve().parents[2]


def test_docs_snippets_compute_what_they_show(capsys):
    """Run docs/empirical.md, then check its kernels against the autograd loop of ``_models``."""
    text = (ROOT / "docs" / "empirical.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))
    ns: dict = {"__name__": "__docs__"}
    exec(compile(code, "docs/empirical.md", "exec"), ns)
    out = capsys.readouterr().out
    assert "True" in out and "False" not in out  # every printed check holds
    net, x, xt = ns["net"], ns["x_train"], ns["x_test"]
    # the kernels against one autograd.grad per example and output
    assert_close(ns["full"], brute_ntk(net, x))
    assert_close(ns["cross"], brute_ntk(net, xt, x, mode="mean"))
    assert_close(ns["last"], brute_ntk(net, x, mode="mean", names=["2.weight", "2.bias"]))
    assert_close(ns["weights"], brute_ntk(net, x, names=["0.weight", "2.weight"]))
    # flatten_kernel: entry [i*O + a, j*O + b] = full[i, j, a, b]
    i, j, a, b = 7, 2, 1, 2
    assert ns["flat"][i * 3 + a, j * 3 + b] == ns["full"][i, j, a, b]
    assert set(ns["parts"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert_close(sum(ns["parts"].values()), ns["total"], rtol=1e-13)
    assert_close(ns["parts"]["2.weight"], brute_ntk(net, x, mode="mean", names=["2.weight"]))
    # the plain-function model and the LayerNorm block
    f, p = ns["f"], ns["p"]
    jf = torch.func.vmap(torch.func.jacrev(lambda q, xi: f(q, xi[None])[0]), in_dims=(None, 0))(p, x)
    diag = sum(torch.einsum("iap,jap->ija", jf[k].flatten(2), jf[k].flatten(2)) for k in p)
    assert_close(torchntk.empirical_ntk(f, x, params=p, mode="diagonal"), diag)
    assert_close(ns["a"], brute_ntk(ns["blk"], x))
    # under a 200 MB budget the 300 x 300 kernel is tiled, its lower tiles mirrored: exactly symmetric, PSD
    big = ns["big"]
    assert big.shape == (300, 300) and torch.equal(big, big.T)
    assert float(torch.linalg.eigvalsh(big)[0]) >= -1e-10 * float(big.diagonal().max())
    # linearize: gradient descent on the MSE is f <- f - (lr/N) Theta (f - y), Theta the flat NTK
    lin, y, lr, n = ns["lin"], ns["y"], ns["lr"], len(x)
    with torch.no_grad():
        f_k = net(x).reshape(-1)
        for _ in range(100):
            f_k = f_k - lr / n * ns["flat"] @ (f_k - y.reshape(-1))
        torch.testing.assert_close(lin(x).reshape(-1), f_k, rtol=1e-8, atol=1e-10)


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
