"""Hermite-expansion features against Monte Carlo features at the same m (docs/features.md).

    python benchmarks/features_hermite.py --n 256 --ms 1024 4096 16384 --seeds 2

For an FC Erf and an FC GELU network of depth ``--depth`` (W_std = 1, b_std = 0.1) on ``--n``
Gaussian inputs of dimension 16 whose norms spread over a factor 3 (``|x|^2 / 16`` from 0.25 to
2.25), prints, per ``m`` and method (``"auto"``: Hermite; ``"monte_carlo"``), the relative
Frobenius errors of the NNGP and NTK features against ``spec.kernel`` (mean over ``--seeds``
draws) and the seconds per feature call (the faster of two; map built and calibrated beforehand; the two methods
are timed interleaved in one process, so a busy machine slows both alike).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch


def _inputs(n: int, d: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True) * math.sqrt(d) * torch.linspace(0.5, 1.5, n, dtype=torch.float64)[:, None]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--ms", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args(argv)

    from torchntk import layers as L
    from torchntk.features import FeatureMap, relative_error

    x = _inputs(args.n)
    print(f"load average {os.getloadavg()[0]:.2f}, {torch.get_num_threads()} threads, N = {args.n}")
    print(f"{'spec':10s} {'m':>6s} {'method':>12s} {'nngp err':>9s} {'ntk err':>8s} {'s/call':>7s}")
    for name, act in (("Erf", L.Erf), ("GELU", L.Gelu)):
        blocks = []
        for _ in range(args.depth):
            blocks += [L.Dense(512, b_std=0.1), act()]
        spec = L.serial(*blocks, L.Dense(1, b_std=0.1))
        k = spec.kernel(x)
        for m in args.ms:
            rows = {"auto": [], "monte_carlo": []}
            for s in range(args.seeds):
                for method in rows:  # interleaved
                    fm = FeatureMap(spec, m, seed=s, method=method)
                    fm.dims(tuple(x.shape[1:]))  # draws and calibration outside the timing
                    dt = math.inf
                    for _ in range(2):  # the faster of two calls: the first also fills caches
                        t = time.perf_counter()
                        f = fm(x)
                        dt = min(dt, time.perf_counter() - t)
                    rows[method].append((relative_error(f.nngp @ f.nngp.T, k.nngp),
                                         relative_error(f.ntk @ f.ntk.T, k.ntk), dt))
            for method, r in rows.items():
                e = np.mean(r, axis=0)
                label = "hermite" if method == "auto" else method
                print(f"{name:10s} {m:6d} {label:>12s} {e[0]:9.4f} {e[1]:8.4f} {e[2]:7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
