"""Kernels at scale: tiled FC-ReLU depth-5 NNGP + NTK into zarr under a memory budget, CG on
the store, an empirical "mean" kernel, and the peer's batched kernel side by side.

Workloads (float64, CPU; inputs: sklearn's 8x8 digits scaled to [0, 1], repeated with
N(0, 0.05^2) noise up to N examples):

- ``tiled``:  the analytic kernel of Dense(1, b_std=0.1) + ReLU five times, Dense(1, b_std=0.1)
              (torchntk.layers, via ``kernel_fn_from_spec``) for N examples into a zarr store
              with ``memory=--memory``: wall time, peak RSS, entries per second (N^2 entries
              delivered, of which the symmetric engine computes the upper triangle);
- ``inmemory``: the same spec's ``spec.kernel(x)`` in one process at ``--n-mem`` examples
              (its whole N x N result in RAM): the throughput to compare with;
- ``cg``:     CG with a Nystrom preconditioner on the NTK store (+ diag_reg) to a relative
              residual of 1e-6, streaming tiles from disk for every product;
- ``empirical``: the empirical "mean" NTK of an MLP(64 -> 512 -> 512 -> 10) for ``--n-emp``
              examples through ``kernel_fn_from_model`` into a store;
- ``peer``:   neural-tangents' ``nt.batch(kernel_fn, batch_size)`` for the same FC kernel at
              ``--n-peer`` examples, and torchntk's tiled engine at the same N.

Each workload runs in its own subprocess so that its peak RSS is its own. Run::

    /work/main/.peer-venv/bin/python benchmarks/scale.py --n 20000 --memory 2GiB
    /work/main/.peer-venv/bin/python benchmarks/scale.py --only tiled cg --n 32000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _data(n: int, seed: int = 0):
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    x = load_digits().data / 16.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.shape[0], n)
    return torch.from_numpy(x[idx] + 0.05 * rng.standard_normal((n, x.shape[1])))


def _spec():
    from torchntk import layers as L

    parts = []
    for _ in range(5):
        parts += [L.Dense(1, b_std=0.1), L.Relu()]
    return L.serial(*parts, L.Dense(1, b_std=0.1))


def _tiled(args, n: int, out: str) -> dict:
    from torchntk.scale import kernel_fn_from_spec, tiled_kernel

    x = _data(n)
    base = _rss_mib()
    t = time.perf_counter()
    store = tiled_kernel(kernel_fn_from_spec(_spec()), x, out=out, memory=args.memory, progress=False)
    wall = time.perf_counter() - t
    return {"n": n, "wall_s": wall, "entries_per_s": n * n / wall, "tile": store.plan.tile,
            "tiles": store.plan.n_tiles, "peak_rss_mib": _rss_mib(), "rss_before_mib": base,
            "store_gb": sum(f.stat().st_size for f in __import__("pathlib").Path(out).rglob("*") if f.is_file()) / 1e9}


def _inmemory(args, n: int) -> dict:
    x = _data(n)
    spec = _spec()
    spec.kernel(x[:64])
    t = time.perf_counter()
    k = spec.kernel(x)
    wall = time.perf_counter() - t
    return {"n": n, "wall_s": wall, "entries_per_s": n * n / wall, "peak_rss_mib": _rss_mib(),
            "check": float(k.ntk[0, 0])}


def _cg(args, out: str) -> dict:
    import torch

    from torchntk.scale import KernelStore, cg_solve

    store = KernelStore.open(out)
    n = store.plan.n1
    x = _data(n)
    y = torch.sin(3 * x[:, :8].sum(1)).reshape(-1, 1)
    t = time.perf_counter()
    alpha, info = cg_solve(store, y, diag_reg=args.diag_reg, rtol=1e-6, preconditioner="nystrom",
                           rank=args.rank)
    wall = time.perf_counter() - t
    return {"n": n, "wall_s": wall, "iterations": info["iterations"][0], "products": info["products"],
            "relative_residual": info["relative_residual"][0], "peak_rss_mib": _rss_mib(),
            "diag_reg": args.diag_reg, "rank": args.rank}


def _empirical(args, n: int, out: str) -> dict:
    import torch

    from torchntk.scale import kernel_fn_from_model, tiled_kernel

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                              torch.nn.ReLU(), torch.nn.Linear(512, 10)).double().eval()
    x = _data(n)
    t = time.perf_counter()
    store = tiled_kernel(kernel_fn_from_model(net, mode="mean"), x, out=out, memory=args.memory, progress=False)
    wall = time.perf_counter() - t
    return {"n": n, "wall_s": wall, "entries_per_s": n * n / wall, "tile": store.plan.tile,
            "peak_rss_mib": _rss_mib()}


def _peer(args, n: int) -> dict:
    try:
        import jax
        import neural_tangents as nt
        from neural_tangents import stax
    except ImportError as err:
        return {"skipped": f"neural_tangents not importable ({err})"}
    jax.config.update("jax_enable_x64", True)
    import numpy as np

    layers = []
    for _ in range(5):
        layers += [stax.Dense(1, b_std=0.1), stax.Relu()]
    _, _, kfn = stax.serial(*layers, stax.Dense(1, b_std=0.1))
    x = np.asarray(_data(n).numpy())
    batched = nt.batch(kfn, batch_size=args.peer_batch, store_on_device=True)
    t = time.perf_counter()
    k = batched(x, None, ("nngp", "ntk"))
    k.ntk.block_until_ready()
    wall = time.perf_counter() - t
    return {"n": n, "wall_s": wall, "entries_per_s": n * n / wall, "peak_rss_mib": _rss_mib(),
            "batch_size": args.peer_batch}


def _child(args) -> None:
    kind = args.child
    if kind == "tiled":
        res = _tiled(args, args.n, args.out)
    elif kind == "tiled_peer_n":
        res = _tiled(args, args.n_peer, args.out)
    elif kind == "inmemory":
        res = _inmemory(args, args.n_mem)
    elif kind == "cg":
        res = _cg(args, args.out)
    elif kind == "empirical":
        res = _empirical(args, args.n_emp, args.out)
    else:
        res = _peer(args, args.n_peer)
    print("RESULT " + json.dumps(res))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--n-mem", type=int, default=6000)
    p.add_argument("--n-emp", type=int, default=8000)
    p.add_argument("--n-peer", type=int, default=16000)
    p.add_argument("--peer-batch", type=int, default=2000)
    p.add_argument("--memory", default="2GiB")
    p.add_argument("--diag-reg", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=300)
    p.add_argument("--dir", default=None, help="where the stores go (default: a temporary directory)")
    p.add_argument("--only", nargs="*", default=["tiled", "inmemory", "cg", "empirical", "peer"])
    p.add_argument("--child", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    root = args.dir or tempfile.mkdtemp(prefix="torchntk-scale-")
    os.makedirs(root, exist_ok=True)
    plan = []
    for kind in args.only:
        if kind == "peer":
            plan += [("peer", None), ("tiled_peer_n", os.path.join(root, f"peer{args.n_peer}.zarr"))]
        elif kind in ("tiled", "cg"):
            plan.append((kind, os.path.join(root, f"fc{args.n}.zarr")))
        elif kind == "empirical":
            plan.append((kind, os.path.join(root, f"emp{args.n_emp}.zarr")))
        else:
            plan.append((kind, None))
    results = {}
    for kind, out in plan:
        if kind in ("tiled", "empirical", "tiled_peer_n") and out and os.path.exists(out):
            shutil.rmtree(out)
        cmd = [sys.executable, __file__, "--child", kind] + sys.argv[1:]
        if out:
            cmd += ["--out", out]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        results[kind] = json.loads(line[-1][7:]) if line else {"error": proc.stderr[-2000:]}
        print(f"{kind:14s} {json.dumps(results[kind])}", flush=True)
    if "tiled" in results and "inmemory" in results and "entries_per_s" in results["inmemory"]:
        ratio = results["tiled"].get("entries_per_s", 0) / results["inmemory"]["entries_per_s"]
        print(f"throughput tiled/in-memory (entries delivered per second): {ratio:.2f}x")
    if "peer" in results and "tiled_peer_n" in results and "wall_s" in results.get("peer", {}):
        print(f"peer/torchntk wall time at N={args.n_peer}: "
              f"{results['peer']['wall_s'] / results['tiled_peer_n']['wall_s']:.2f}x")


if __name__ == "__main__":
    main()
