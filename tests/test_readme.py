"""The README's quick start runs as written and prints what its kernel is."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start_code() -> str:
    text = README.read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's Quick start has no ```python block"
    return "\n".join(blocks)


def test_quick_start_computes_and_prints_the_kernel(capsys):
    ns: dict = {"__name__": "__readme__"}
    exec(compile(quick_start_code(), str(README), "exec"), ns)
    out = capsys.readouterr().out.strip()
    net, x, theta = ns["net"], ns["x"], ns["theta"]
    # the kernel against one autograd.grad per example: Theta[i, j] = df(x_i)/dtheta . df(x_j)/dtheta
    grads = []
    for i in range(x.shape[0]):
        g = torch.autograd.grad(net(x[i : i + 1]).sum(), list(net.parameters()))
        grads.append(torch.cat([t.reshape(-1) for t in g]))
    jac = torch.stack(grads)
    torch.testing.assert_close(theta, jac @ jac.T, rtol=1e-10, atol=1e-12)
    # what it prints: the shape and that the smallest eigenvalue is >= -1e-10 (a PSD Gram matrix)
    psd = bool(torch.linalg.eigvalsh(jac @ jac.T).min() >= -1e-10)
    assert psd
    assert out == f"torch.Size([8, 8]) tensor({psd})"
