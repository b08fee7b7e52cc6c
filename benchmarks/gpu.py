"""torchntk on one CUDA GPU: the empirical NTK against the torch.func recipe, analytic kernels,
and random-feature regression at a million rows.

    python benchmarks/gpu.py            # about 2 minutes on an H200
    python benchmarks/gpu.py --quick    # smaller sizes, a smoke test

Sections (each contender on the same GPU, in one process, timed with ``torch.cuda.synchronize``
around the call; "warm" is the median of ``--repeats`` calls after the first, "first" the first
call on a fresh model of the same architecture in a warm process; "peak" the rise of
``torch.cuda.max_memory_allocated`` during the warm calls):

1. the empirical NTK in float32 of the models of ``benchmarks/empirical.py`` at GPU-sized
   batches: the MLP 64-512-512-10 (N = 1024, "full" and "mean"), the CNN of three 3x3
   convolutions of 64 channels (N = 256), the BERT-style encoder on token ids (N = 256,
   "mean"); torchntk ``"auto"`` and the recipe (per-example ``vmap(jacrev)`` Jacobians, one
   einsum per parameter tensor), with the relative difference between them;
2. analytic NNGP + NTK in float64 of ``benchmarks/analytic.py``'s workloads at 4-32x its CPU
   batch sizes;
3. ``torchntk.features``: depth-5 ReLU NTK features (m = 4096 random features, 4096 output
   features, float32, at full and bfloat16 precision) of N = 1,000,000 noisy digits, kernel ridge regression streamed through
   ``Phi^T Phi`` and prediction of the 297 held-out digits: wall time, rows per second,
   accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import empirical as E  # noqa: E402  (the models and the recipe of benchmarks/empirical.py)
import analytic as A  # noqa: E402  (the analytic workloads' data)

import torchntk  # noqa: E402
from torchntk import layers as L  # noqa: E402

DEV = "cuda"


def _timed(fn, repeats: int):
    """(first-call seconds, warm median seconds, peak MiB of the warm calls, last output)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    del out
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return first, statistics.median(times), peak, out


def _row(*cells) -> None:
    print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def empirical(quick: bool, repeats: int) -> None:
    print("\n### Empirical NTK, float32\n")
    _row("workload", "contender", "first call", "warm", "peak (MiB)", "speed-up vs recipe", "rel. diff")
    _row(*["---"] * 7)
    xd = E.digits()
    n_mlp, n_cnn, n_bert = (128, 32, 32) if quick else (1024, 256, 256)
    ids = torch.randint(0, 1000, (n_bert, 16), generator=torch.Generator().manual_seed(0))
    cases = [
        ("MLP 64-512-512-10", lambda s: E.make_mlp(seed=s), xd[:n_mlp], ("full", "mean")),
        ("CNN 3x conv3x3(64)", lambda s: E.make_cnn(seed=s), xd[:n_cnn].reshape(-1, 1, 8, 8), ("full", "mean")),
        ("BERT-style encoder", lambda s: E.BertStyle(seed=s).eval(), ids, ("mean",)),
    ]
    for name, make, x, modes in cases:
        x = x.to(DEV)
        for mode in modes:
            net = make(0).to(DEV)
            rf, rw, rp, ref = _timed(lambda: E.recipe_ntk(net, x, x, mode), repeats)
            _row(f"{name}, N={len(x)}, {mode}", "torch.func recipe", f"{rf:.3f} s", f"{rw:.4f} s", f"{rp:.0f}", "1x", "")
            fresh = make(1).to(DEV)
            t0 = time.perf_counter()
            torchntk.empirical_ntk(fresh, x, x, mode=mode)
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            _, tw, tp, out = _timed(lambda: torchntk.empirical_ntk(net, x, x, mode=mode), repeats)
            diff = float((out - ref).abs().max() / ref.abs().max())
            _row("", "torchntk auto", f"{first:.3f} s", f"{tw:.4f} s", f"{tp:.0f}", f"**{rw / tw:.1f}x**", f"{diff:.1e}")
            del ref, out
            torch.cuda.empty_cache()


def analytic(quick: bool, repeats: int) -> None:
    print("\n### Analytic NNGP + NTK, float64\n")
    _row("workload", "N", "first call", "warm", "peak (MiB)", "entries/s (both kernels)")
    _row(*["---"] * 6)
    scale = 8 if quick else 1
    fc = L.serial(*[m for _ in range(4) for m in (L.Dense(512, b_std=0.1), L.Relu())], L.Dense(1, b_std=0.1))
    convs = [m for _ in range(3) for m in (L.Conv(64, (3, 3), padding="SAME", b_std=0.1), L.Relu())]
    gap = L.serial(*convs, L.GlobalAvgPool(), L.Dense(1, b_std=0.1))
    graph = L.serial(*[m for _ in range(2) for m in (L.Dense(512, b_std=0.1), L.Aggregate(), L.Relu())],
                     L.GlobalSumPool(), L.Dense(1, b_std=0.1))
    transformer = A._transformer(L, 1, "softmax")
    rng = np.random.default_rng(0)
    digits = torch.tensor(A._digits(1797))

    def noisy(n: int) -> torch.Tensor:
        idx = np.arange(n) % len(digits)
        return digits[idx] + 0.1 * torch.tensor(rng.standard_normal((n, digits.shape[1])))

    cases = [
        ("FC ReLU depth 5", fc, noisy(16384 // scale), {}),
        ("CNN + GlobalAvgPool", gap, noisy(1024 // scale).reshape(-1, 1, 8, 8), {}),
        ("transformer, 2 blocks", transformer, noisy(1024 // scale).reshape(-1, 16, 4).transpose(1, 2).contiguous(), {}),
    ]
    xg, pg = (torch.tensor(a) for a in A._graphs(2048 // scale))
    cases.append(("graph network", graph, xg, {"pattern": pg}))
    for name, spec, x, kw in cases:
        x = x.to(DEV)
        kw = {k: v.to(DEV) for k, v in kw.items()}
        first, warm, peak, k = _timed(lambda: spec.kernel(x, **kw), repeats)
        assert bool(torch.isfinite(k.ntk).all())
        _row(name, len(x), f"{first:.3f} s", f"{warm:.4f} s", f"{peak:.0f}", f"{2 * len(x) ** 2 / warm:.3g}")
        del k
        torch.cuda.empty_cache()


def features(quick: bool) -> None:
    from sklearn.datasets import load_digits

    from torchntk.features import FeatureMap, ridge_regression

    print("\n### Random-feature NTK regression, float32 features\n")
    n = 50_000 if quick else 1_000_000
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, device=DEV)
    y = torch.tensor(y, device=DEV)
    idx = torch.arange(n, device=DEV) % 1500
    g = torch.Generator(device=DEV).manual_seed(0)
    xtr = x[idx] + 0.1 * torch.randn(n, x.shape[1], generator=g, device=DEV, dtype=x.dtype)
    targets = torch.nn.functional.one_hot(y[idx], 10).to(torch.float64)
    spec = L.serial(*[m for _ in range(5) for m in (L.Dense(512, b_std=0.1), L.Relu())], L.Dense(1, b_std=0.1))
    _row("N", "precision", "fit (features, Phi^T Phi, solve)", "predict", "rows/s", "peak GPU memory", "test accuracy")
    _row(*["---"] * 7)
    for precision in ("full", "bfloat16"):
        fm = FeatureMap(spec, 4096, seed=0, dtype=torch.float32, output_features=4096, precision=precision)
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model = ridge_regression(fm.rows(xtr), targets, 1e-3)
        torch.cuda.synchronize()
        fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = model.predict(fm.rows(x[1500:]))[0]
        torch.cuda.synchronize()
        t_pred = time.perf_counter() - t0
        acc = float((pred.argmax(1) == y[1500:]).double().mean())
        peak = torch.cuda.max_memory_allocated() / 2**30
        _row(f"{n:,}", precision, f"{fit:.1f} s", f"{t_pred:.2f} s", f"{n / fit:,.0f}", f"{peak:.1f} GiB", f"{acc:.4f}")
        del model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", nargs="*", default=["features", "analytic", "empirical"])
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA device")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, torchntk {torchntk.__version__}")
    E.warm_up()
    for section in args.only:
        {"empirical": lambda: empirical(args.quick, args.repeats),
         "analytic": lambda: analytic(args.quick, args.repeats),
         "features": lambda: features(args.quick)}[section]()


if __name__ == "__main__":
    main()
