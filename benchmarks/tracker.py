"""Overhead of torchntk.lab.DriftTracker in a training loop (median of repeats, 1 thread).

    python benchmarks/tracker.py
"""

import statistics
import time

import torch

from torchntk.lab import DriftTracker
from torchntk.nn import MLP

torch.set_num_threads(1)
torch.manual_seed(0)
x, y = torch.randn(256, 16), torch.randn(256, 1)


def loop(width: int, track: bool, steps: int = 100, every: int = 10, probe: int = 16):
    net = MLP(16, [width, width], 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    tr = DriftTracker(net, x[:probe], y[:probe], every=every) if track else None
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * ((net(x) - y) ** 2).mean()).backward()
        opt.step()
        if tr:
            tr.step()
    return time.perf_counter() - start, (tr.seconds if tr else 0.0)


print(f"{'width':>6} {'loop s':>8} {'tracked s':>10} {'overhead':>9} {'ms/record':>10}")
for width in (256, 1024):
    base = statistics.median(loop(width, False)[0] for _ in range(3))
    runs = [loop(width, True) for _ in range(3)]
    total = statistics.median(r[0] for r in runs)
    per = statistics.median(r[1] for r in runs) / 10
    print(f"{width:>6} {base:>8.3f} {total:>10.3f} {100 * (total - base) / base:>8.0f}% {1000 * per:>10.1f}")
