"""Analytic (infinite-width) NNGP + NTK: torchntk.layers side by side with neural-tangents.

Workloads (float64, CPU, sklearn's 8x8 digits scaled to [0, 1]):

- ``fc``:      FC ReLU depth 5 (Dense(512, b_std=0.1) + ReLU four times, Dense(1)), all 1,797
               digits as 64-vectors, the N x N NNGP and NTK;
- ``cnn_gap``: three 3x3 SAME convs with ReLU, GlobalAvgPool, Dense(1), on 256 images
               (channels first ``(N, 1, 8, 8)`` for torchntk, ``(N, 8, 8, 1)`` for the peer);
- ``cnn_flat``: the same convs + Flatten + Dense(1) on 1,000 images;
- ``transformer``: two pre-LayerNorm blocks ``x + Att(LN x)``, ``x + MLP(LN x)`` (softmax
               GlobalSelfAttention with 4 heads, MLP Dense-ReLU-Dense, width 64) after a Dense(64),
               then GlobalAvgPool and Dense(1), on 256 sequences of length 16 (each digit's 64
               pixels as 16 positions of 4 channels: ``(N, 4, 16)`` here, ``(N, 16, 4)`` for the peer);
- ``graph``:   a two-layer graph network (Dense(512) + Aggregate + ReLU twice, GlobalSumPool,
               Dense(1)) on 256 random graphs of 16 nodes with 8 features and weighted arcs
               (density 0.3, seeded): ``(N, 8, 16)`` with ``pattern=(N, 16, 16)`` here,
               ``(N, 16, 8)`` for the peer.

Each (contender, workload) runs in its own subprocess, so that its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at exit) is its own; the script reports it and
its increase over the RSS after imports and data loading. Times are medians of ``--repeats``
runs after one warm-up run; for the peer the first (jit-compiling) call is reported apart as
"first call". The peer is skipped when ``neural_tangents`` cannot be imported.

Run (from the repository root)::

    /work/main/.peer-venv/bin/python benchmarks/analytic.py            # all workloads
    /work/main/.peer-venv/bin/python benchmarks/analytic.py fc --repeats 5
    /work/main/.peer-venv/bin/python benchmarks/analytic.py transformer --n 32   # a quick check
    /work/main/.peer-venv/bin/python benchmarks/analytic.py graph --n 16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

WORKLOADS = {"fc": 1797, "cnn_gap": 256, "cnn_flat": 1000, "transformer": 256, "graph": 256}
PEER_BATCH = {"fc": 0, "cnn_gap": 128, "cnn_flat": 0, "transformer": 128, "graph": 0}


def _graphs(n: int):
    """``n`` random graphs: features ``(n, 8, 16)`` and arc weights ``(n, 16, 16)`` (30% of the arcs)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 8, 16))
    p = rng.random((n, 16, 16)) * (rng.random((n, 16, 16)) < 0.3)
    return x, p


def _transformer(lib, channels_axis: int, mechanism: str):
    """The ``transformer`` workload's spec in torchntk.layers or stax (same arguments)."""
    width = 64

    def res(f):
        ln = lib.LayerNorm(axis=channels_axis)
        return lib.serial(lib.FanOut(2), lib.parallel(lib.Identity(), lib.serial(ln, f)), lib.FanInSum())

    blocks = []
    for _ in range(2):
        att = lib.GlobalSelfAttention(width, width, width, 4, b_std=0.1, attention_mechanism=mechanism)
        mlp = lib.serial(lib.Dense(width, b_std=0.1), lib.Relu(), lib.Dense(width, b_std=0.1))
        blocks += [res(att), res(mlp)]
    return lib.serial(lib.Dense(width), *blocks, lib.GlobalAvgPool(), lib.Dense(1, b_std=0.1))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _digits(n: int):
    from sklearn.datasets import load_digits

    x = load_digits().data[:n].astype("float64") / 16.0
    return x


def _ours(workload: str, n: int, repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from torchntk import layers as L

    x = torch.tensor(_digits(n))
    kw = {}
    if workload == "graph":
        x, p = (torch.tensor(a) for a in _graphs(n))
        kw = {"pattern": p}
        spec = L.serial(*[m for _ in range(2) for m in (L.Dense(512, b_std=0.1), L.Aggregate(), L.Relu())],
                        L.GlobalSumPool(), L.Dense(1, b_std=0.1))
    elif workload == "transformer":
        x = x.reshape(-1, 16, 4).transpose(1, 2).contiguous()
        spec = _transformer(L, 1, "softmax")
    elif workload == "fc":
        spec = L.serial(*[m for _ in range(4) for m in (L.Dense(512, b_std=0.1), L.Relu())], L.Dense(1, b_std=0.1))
    else:
        x = x.reshape(-1, 1, 8, 8)
        convs = [m for _ in range(3) for m in (L.Conv(64, (3, 3), padding="SAME", b_std=0.1), L.Relu())]
        head = [L.GlobalAvgPool()] if workload == "cnn_gap" else [L.Flatten()]
        spec = L.serial(*convs, *head, L.Dense(1, b_std=0.1))
    base = _rss_mib()
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        k = spec.kernel(x, **kw)
        times.append(time.perf_counter() - t0)
    return {"first": times[0], "time": statistics.median(times[1:] or times), "base_mib": base,
            "peak_mib": _rss_mib(), "checksum": [float(k.nngp.sum()), float(k.ntk.sum())]}


def _peer(workload: str, n: int, repeats: int, threads: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=true"
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import neural_tangents as nt
    from neural_tangents import stax

    x = jnp.asarray(_digits(n))
    kw = {}
    if workload == "graph":
        xg, pg = _graphs(n)
        x, kw = jnp.asarray(xg.transpose(0, 2, 1)), {"pattern": (jnp.asarray(pg), jnp.asarray(pg))}
        layers = [m for _ in range(2) for m in (stax.Dense(512, b_std=0.1), stax.Aggregate(aggregate_axis=1), stax.Relu())]
        _, _, kernel_fn = stax.serial(*layers, stax.GlobalSumPool(), stax.Dense(1, b_std=0.1))
    elif workload == "transformer":
        import warnings

        warnings.filterwarnings("ignore", message="Linear scaling attention")
        x = x.reshape(-1, 16, 4)
        _, _, kernel_fn = _transformer(stax, -1, "SOFTMAX")
    elif workload == "fc":
        layers = [m for _ in range(4) for m in (stax.Dense(512, b_std=0.1), stax.Relu())]
        _, _, kernel_fn = stax.serial(*layers, stax.Dense(1, b_std=0.1))
    else:
        x = x.reshape(-1, 8, 8, 1)
        convs = [m for _ in range(3) for m in (stax.Conv(64, (3, 3), padding="SAME", b_std=0.1), stax.Relu())]
        head = [stax.GlobalAvgPool()] if workload == "cnn_gap" else [stax.Flatten()]
        _, _, kernel_fn = stax.serial(*convs, *head, stax.Dense(1, b_std=0.1))
    batch = PEER_BATCH[workload]
    if batch:
        fn = nt.batch(kernel_fn, batch_size=batch, store_on_device=False)
    else:
        fn = jax.jit(kernel_fn, static_argnames="get")
    base = _rss_mib()
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        k = fn(x, None, ("nngp", "ntk"), **kw)
        k.nngp.block_until_ready(), k.ntk.block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"first": times[0], "time": statistics.median(times[1:] or times), "base_mib": base,
            "peak_mib": _rss_mib(), "checksum": [float(k.nngp.sum()), float(k.ntk.sum())], "batch": batch}


def _worker(args: argparse.Namespace) -> None:
    fn = _ours if args.worker == "torchntk" else _peer
    out = fn(args.workloads[0], args.n or WORKLOADS[args.workloads[0]], args.repeats, args.threads)
    print("RESULT " + json.dumps(out), flush=True)


def _run(contender: str, workload: str, repeats: int, threads: int, n: int | None = None) -> dict | None:
    cmd = [sys.executable, __file__, workload, "--worker", contender, "--repeats", str(repeats), "--threads", str(threads)]
    if n:
        cmd += ["--n", str(n)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr or "").strip().splitlines()[-3:]
    print(f"  {contender} {workload}: failed ({' | '.join(tail)})", file=sys.stderr)
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workloads", nargs="*", help=f"any of {', '.join(WORKLOADS)} (default: all)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs after the warm-up (0: time the first run)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--n", type=int, default=None, help="override every workload's number of inputs (quick checks)")
    p.add_argument("--worker", choices=["torchntk", "peer"], help=argparse.SUPPRESS)
    args = p.parse_args()
    bad = [w for w in args.workloads if w not in WORKLOADS]
    if bad:
        p.error(f"unknown workload(s) {bad}; choose from {list(WORKLOADS)}")
    args.workloads = args.workloads or list(WORKLOADS)
    if args.worker:
        _worker(args)
        return
    try:
        import neural_tangents  # noqa: F401

        have_peer = True
    except Exception:  # noqa: BLE001 - any import failure means: no peer here
        have_peer = False
        print("neural_tangents not importable: the peer is skipped")
    print(f"float64, CPU, {args.threads} threads, median of {args.repeats} after a warm-up; "
          "peak RSS per contender in its own process")
    head = (f"{'workload':10s} {'N':>5s} | {'torchntk s':>10s} {'peak MiB':>9s} (+run) | "
            f"{'peer s':>7s} {'1st call':>8s} {'peak MiB':>9s} (+run) | {'time ratio':>10s} {'mem ratio':>9s} {'agree':>8s}")
    print(head)
    print("-" * len(head))
    for w in args.workloads:
        ours = _run("torchntk", w, args.repeats, args.threads, args.n)
        peer = _run("peer", w, args.repeats, args.threads, args.n) if have_peer else None
        if ours is None:
            continue
        line = (f"{w:10s} {args.n or WORKLOADS[w]:5d} | {ours['time']:10.3f} {ours['peak_mib']:9.0f} "
                f"(+{ours['peak_mib'] - ours['base_mib']:.0f}) | ")
        if peer:
            agree = max(abs(a - b) / abs(b) for a, b in zip(ours["checksum"], peer["checksum"]))
            line += (f"{peer['time']:7.3f} {peer['first']:8.2f} {peer['peak_mib']:9.0f} "
                     f"(+{peer['peak_mib'] - peer['base_mib']:.0f}) | {ours['time'] / peer['time']:10.2f} "
                     f"{ours['peak_mib'] / peer['peak_mib']:9.2f} {agree:8.1e}")
        else:
            line += "   (no peer)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
