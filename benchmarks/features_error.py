"""Error of torchntk.features against the exact kernels as m grows: the plot of docs/features.md.

    python benchmarks/features_error.py --out docs/features_error.png

Relative Frobenius error ``||Phi Phi^T - K||_F / ||K||_F`` of the NNGP and NTK features of three
specs (FC ReLU depth 4, FC Erf depth 3, a CNN with global average pooling), mean over
``--seeds`` draws, on ``--n`` digits (8x8, scaled to [0, 1]; the CNN sees them as 1x8x8 images),
for ``m`` = 128 ... ``--max-m``; prints the table and the fitted slopes of log(error) in log(m).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def _specs():
    from torchntk import layers as L

    def fc(depth, act):
        blocks = []
        for _ in range(depth):
            blocks += [L.Dense(512, b_std=0.1), act()]
        return L.serial(*blocks, L.Dense(1, b_std=0.1))

    cnn = L.serial(L.Conv(32, (3, 3), padding="SAME", b_std=0.1), L.Relu(),
                   L.Conv(32, (2, 2), padding="SAME", b_std=0.1), L.Relu(), L.GlobalAvgPool(), L.Dense(1, b_std=0.1))
    return {"FC ReLU depth 4": (fc(4, L.Relu), False), "FC Erf depth 3": (fc(3, L.Erf), False),
            "CNN + GAP": (cnn, True)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--max-m", dest="max_m", type=int, default=4096)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--out", default="docs/features_error.png")
    args = p.parse_args(argv)

    from sklearn.datasets import load_digits

    from torchntk.features import FeatureMap, relative_error

    x = torch.from_numpy(load_digits().data[: args.n] / 16.0)
    ms = [m for m in (128, 256, 512, 1024, 2048, 4096, 8192, 16384) if m <= args.max_m]
    results = {}
    for name, (spec, image) in _specs().items():
        xi = x.reshape(-1, 1, 8, 8)[: max(8, args.n // 4)] if image else x
        k = spec.kernel(xi)
        errs = []
        for m in ms:
            e = []
            for s in range(args.seeds):
                f = FeatureMap(spec, m, seed=s)(xi)
                e.append((relative_error(f.nngp @ f.nngp.T, k.nngp), relative_error(f.ntk @ f.ntk.T, k.ntk)))
            errs.append(np.mean(e, axis=0))
            print(f"{name:18s} m={m:6d}  nngp {errs[-1][0]:.4f}  ntk {errs[-1][1]:.4f}", flush=True)
        errs = np.array(errs)
        slopes = np.polyfit(np.log(ms), np.log(errs), 1)[0]
        print(f"{name:18s} slopes: nngp {slopes[0]:.3f}, ntk {slopes[1]:.3f}")
        results[name] = errs

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (name, errs), color in zip(results.items(), ("C0", "C1", "C2")):
        ax.loglog(ms, errs[:, 1], "o-", color=color, label=f"{name}: NTK")
        ax.loglog(ms, errs[:, 0], "s--", color=color, alpha=0.6, label=f"{name}: NNGP")
    ref = np.array(ms, dtype=float)
    ax.loglog(ref, 0.1 * np.sqrt(4096 / ref), "k:", label=r"$0.1\,(m/4096)^{-1/2}$")
    ax.set_xlabel("n_features m")
    ax.set_ylabel(r"$\|\Phi\Phi^T - K\|_F / \|K\|_F$")
    ax.set_title("torchntk.features: error against the exact kernel")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
