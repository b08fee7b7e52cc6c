"""NTK regression at a million rows with random features (torchntk.features).

    python benchmarks/features.py --dtype float32 --threads 2   # N = 1,000,000, m = 4096, depth-5 ReLU NTK
    python benchmarks/features.py --n 20000 --compare  # also the exact tiled kernel at the same N
    python benchmarks/features.py --n 3000 --features 256 --output-features 0 --compare   # a quick check

Data: the 1,797 scikit-learn digits (64 pixels in [0, 1]); the last 297 are held out as the
test set, the first 1,500 are repeated with Gaussian pixel noise (std ``--noise``) up to
``--n`` training rows. Model: ``depth`` Dense(b_std=0.1)+ReLU blocks and a Dense readout;
random layers of width ``m`` and the ``2m + 1`` NTK features compressed to
``--output-features`` columns (4096) by a last SRHT; kernel ridge regression of one-hot targets
with the relative ridge ``--ridge`` (``c / mean diag Theta``), streaming the feature rows
(``FeatureMap.rows``) through ``Phi^T Phi`` (each batch's product in the feature dtype, summed
in float64). ``--precision`` (default ``auto``: ``bfloat16`` for float32 features where bfloat16
products run on matrix units, a CPU with AMX or a GPU; ``full`` elsewhere) applies the map's
projections as dense bfloat16 products and forms the Gram in bfloat16 math
(``FeatureMap(..., precision=...)``, ``docs/features.md``).

Prints wall times (features + Gram, solve, prediction), peak RSS of the process (``ru_maxrss``)
and throughput in rows per second; ``--compare`` also times the exact NTK with
``torchntk.scale.tiled_kernel`` (in memory: ``N^2`` float64 entries) and its kernel regression
with the same ridge, and prints both test accuracies.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
import torch


def _peak_rss_gib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 2**20 if sys.platform != "darwin" else kib / 2**30


def _data(n: int, noise: float, seed: int) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    xtr, ytr, xte, yte = x[:1500], y[:1500], x[1500:], y[1500:]
    rng = np.random.default_rng(seed)
    idx = np.arange(n) % len(xtr)
    big = xtr[idx] + noise * rng.standard_normal((n, x.shape[1]))
    return torch.from_numpy(big), ytr[idx], torch.from_numpy(xte), yte


def _spec(depth: int):
    from torchntk import layers as L

    blocks = []
    for _ in range(depth):
        blocks += [L.Dense(512, b_std=0.1), L.Relu()]
    return L.serial(*blocks, L.Dense(1, b_std=0.1))


def _auto_precision(dtype: torch.dtype) -> str:
    """``bfloat16`` for float32 features where bfloat16 products have matrix units, else ``full``."""
    if dtype != torch.float32:
        return "full"
    if torch.cuda.is_available():
        return "bfloat16"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private probe: absent -> full
    return "bfloat16" if amx is not None and amx() else "full"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="training rows (default 1,000,000)")
    p.add_argument("--features", type=int, default=4096, help="n_features m (default 4096)")
    p.add_argument("--depth", type=int, default=5, help="ReLU layers (default 5)")
    p.add_argument("--output-features", dest="output_features", type=int, default=4096,
                   help="compress the 2m+1 NTK features to this many columns (default 4096; 0: keep 2m+1)")
    p.add_argument("--ridge", type=float, default=1e-3, help="relative ridge (default 1e-3)")
    p.add_argument("--noise", type=float, default=0.1, help="pixel noise of the replicated digits")
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"), help="feature dtype")
    p.add_argument("--memory", type=float, default=1.0, help="GiB per batch of feature rows (default 1)")
    p.add_argument("--precision", default="auto", choices=("auto", "full", "bfloat16"),
                   help="products of the map and the Gram (default auto: bfloat16 for float32 features on "
                        "a CPU with AMX or a GPU, else full)")
    p.add_argument("--compare", action="store_true", help="also the exact tiled kernel at the same N")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from torchntk.features import FeatureMap, ridge_regression

    x, y, xt, yt = _data(args.n, args.noise, args.seed)
    targets = torch.nn.functional.one_hot(torch.from_numpy(y), 10).to(torch.float64)
    spec = _spec(args.depth)
    dtype = getattr(torch, args.dtype)
    precision = args.precision if args.precision != "auto" else _auto_precision(dtype)
    fm = FeatureMap(spec, args.features, seed=args.seed, dtype=dtype, memory=args.memory * 2**30,
                    output_features=args.output_features or None, precision=precision)
    print(f"N = {args.n:,} rows, depth-{args.depth} ReLU NTK, m = {args.features} ({fm.method} rows), "
          f"D = {fm.dims(64)[1]} NTK features, {args.dtype}, precision {precision}, "
          f"{torch.get_num_threads()} threads, batch {fm.block_rows(64)} rows")
    t0 = time.perf_counter()
    fm(x[:1])  # draws the map (and, in bfloat16, forms its dense matrices): counted in the fit below
    t_draw = time.perf_counter() - t0

    t0 = time.perf_counter()
    model = ridge_regression(fm.rows(x), targets, args.ridge)
    t_fit = time.perf_counter() - t0 + t_draw
    t0 = time.perf_counter()
    pred = model.predict(fm.rows(xt))[0]
    t_pred = time.perf_counter() - t0
    acc = float((pred.argmax(1).numpy() == yt).mean())
    total = t_fit + t_pred
    print(f"features: fit {t_fit:.1f} s (draws {t_draw:.1f} s, features, Phi^T Phi, solve), predict {len(xt)} rows {t_pred:.2f} s, "
          f"total {total:.1f} s, {args.n / t_fit:,.0f} rows/s, peak RSS {_peak_rss_gib():.2f} GiB, "
          f"test accuracy {acc:.4f}")

    if args.compare:
        from torchntk.scale import kernel_fn_from_spec, tiled_kernel

        fn = kernel_fn_from_spec(spec, which=("ntk",))
        t0 = time.perf_counter()
        k = tiled_kernel(fn, x, progress=False)
        k = k["ntk"] if isinstance(k, dict) else k
        kt = tiled_kernel(fn, xt, x, progress=False)
        kt = kt["ntk"] if isinstance(kt, dict) else kt
        t_kernel = time.perf_counter() - t0
        t0 = time.perf_counter()
        s = float(torch.diagonal(k).mean())
        k.diagonal().add_(args.ridge * s)
        alpha = torch.cholesky_solve(targets, torch.linalg.cholesky(k))
        exact_acc = float(((kt @ alpha).argmax(1).numpy() == yt).mean())
        t_solve = time.perf_counter() - t0
        print(f"exact tiled kernel: kernels {t_kernel:.1f} s, solve {t_solve:.1f} s, total "
              f"{t_kernel + t_solve:.1f} s, peak RSS {_peak_rss_gib():.2f} GiB, test accuracy {exact_acc:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
