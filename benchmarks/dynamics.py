"""Squared-loss training predictions: torchntk.dynamics.mse vs neural-tangents vs a bare eigh.

Workload: the depth-5 ReLU NTK (torchntk.layers; ``Dense(512, W_std, b_std) + Relu`` five
times, then ``Dense(1)``, scalar kernel) on the 1,797 sklearn digits as training set and 500
test points (digits again), one-hot targets (O = 10), predictions at 100 log-spaced times
(gradient flow), float64. Pixels are scaled to [0, 1]. Contenders, all cold (a fresh predictor each repeat, so the
eigendecomposition is part of the time):

- torchntk: ``mse(K, y)(t, K_test_train)`` (train and test outputs at all 100 times);
- neural-tangents: ``predict.gradient_descent_mse(K, y)(t_nt, k_test_train=...)`` with
  ``t_nt = O * t`` (its loss is a mean over all N*O entries);
- floor: ``torch.linalg.eigh(K)`` alone (and, for reference, ``scipy.linalg.eigh(K,
  driver="evd")``, which torchntk uses on the CPU).

Then the accuracy part: 1,297 train / 500 test, test accuracy along t and at t = inf
(kernel regression).

Run with the peer's Python so both libraries share one process (without neural-tangents the
peer column is skipped):

    /work/main/.peer-venv/bin/python benchmarks/dynamics.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import numpy as np
import torch

from torchntk import layers as L
from torchntk.dynamics import mse

W_STD, B_STD, DEPTH = 1.5, 0.05, 5


def spec():
    body = []
    for _ in range(DEPTH):
        body += [L.Dense(512, W_std=W_STD, b_std=B_STD), L.Relu()]
    return L.serial(*body, L.Dense(1, W_std=W_STD, b_std=B_STD))


def load_digits():
    from sklearn.datasets import load_digits as _load

    data = _load()
    x = torch.as_tensor(data.data, dtype=torch.float64) / 16.0  # pixels in [0, 1]
    labels = torch.as_tensor(data.target)
    return x, labels


class PeakRSS:
    """Peak resident memory above the starting point while the block runs (sampled, 2 ms)."""

    def __enter__(self):
        self.base = self._rss()
        self.peak = self.base
        self._stop = False
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2 ** 20


def timed(fn, repeats):
    times, mems, out = [], [], None
    for _ in range(repeats):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        mems.append(mem.mib)
    return statistics.median(times), max(mems), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--times", type=int, default=100)
    args = ap.parse_args()

    x, labels = load_digits()
    y = torch.nn.functional.one_hot(labels, 10).to(torch.float64)
    o = y.shape[1]
    net = spec()
    t0 = time.perf_counter()
    k_all = net.kernel(x).ntk                                   # (1797, 1797)
    print(f"depth-{DEPTH} ReLU NTK of 1797 digits: {time.perf_counter() - t0:.2f} s")
    k_tt = k_all
    test_idx = torch.arange(500) * 3                            # 500 test points
    k_xt = k_all[test_idx]
    ts = torch.logspace(-1, 5, args.times, dtype=torch.float64)
    print(f"threads: torch {torch.get_num_threads()}, repeats {args.repeats} (median)")

    def ours():
        return mse(k_tt, y)(ts, k_xt)

    def floor():
        return torch.linalg.eigh(k_tt)

    def scipy_floor():
        import scipy.linalg

        return scipy.linalg.eigh(k_tt.numpy(), driver="evd", check_finite=False)

    rows = []
    t_floor, m_floor, _ = timed(floor, args.repeats)
    rows.append(("bare torch.linalg.eigh (floor)", t_floor, m_floor))
    t_sf, m_sf, _ = timed(scipy_floor, args.repeats)
    rows.append(("bare scipy.linalg.eigh (evd)", t_sf, m_sf))
    t_ours, m_ours, (f_tr, f_te) = timed(ours, args.repeats)
    rows.append(("torchntk.dynamics.mse", t_ours, m_ours))

    peer = None
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        import neural_tangents as nt

        kj, yj, kxj = jnp.asarray(k_tt.numpy()), jnp.asarray(y.numpy()), jnp.asarray(k_xt.numpy())
        f0j, f0xj = jnp.zeros_like(yj), jnp.zeros((kxj.shape[0], o))
        tj = jnp.asarray(ts.numpy() * o)                         # t_nt = O * t

        def theirs():
            fn = nt.predict.gradient_descent_mse(kj, yj)
            out = fn(t=tj, fx_train_0=f0j, fx_test_0=f0xj, k_test_train=kxj)
            jax.block_until_ready(out)
            return out

        theirs()  # compile once; the timed calls still redo the eigendecomposition
        t_peer, m_peer, peer = timed(theirs, args.repeats)
        rows.append(("neural-tangents gradient_descent_mse", t_peer, m_peer))
    except ImportError as err:
        print(f"(neural-tangents not importable: {err}; peer column skipped)")

    print(f"\npredictions at {args.times} times, 1797 train + 500 test, O = {o}, float64")
    print(f"{'contender':40s} {'time s':>8s} {'peak MiB':>9s} {'/ floor':>8s}")
    for name, t, m in rows:
        print(f"{name:40s} {t:8.3f} {m:9.0f} {t / t_floor:8.2f}")
    if peer is not None:
        d_tr = float(np.abs(np.asarray(peer[0]) - f_tr.numpy()).max())
        d_te = float(np.abs(np.asarray(peer[1]) - f_te.numpy()).max())
        print(f"ours / peer: {t_ours / t_peer:.2f};  max |ours - peer|: train {d_tr:.2e}, "
              f"test {d_te:.2e}")

    # -- accuracy: 1297 train / 500 test --------------------------------------------------
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1297], perm[1297:]
    k = net.kernel(x[te], x[tr]).ntk
    k_train = net.kernel(x[tr]).ntk
    pred = mse(k_train, y[tr])
    curve = torch.tensor([0, 1, 10, 100, 1e3, 1e4, 1e5, 1e6, float("inf")], dtype=torch.float64)
    _, f_test = pred(curve, k)
    acc = (f_test.argmax(-1) == labels[te]).double().mean(-1)
    print("\ntest accuracy along gradient-flow time t (1297 train / 500 test):")
    for tt, a in zip(curve.tolist(), acc.tolist()):
        print(f"  t = {tt:>8g}: {100 * a:5.1f}%")
    print(f"t = inf (kernel regression): {100 * acc[-1]:.1f}% (reference: 98.6%)")


if __name__ == "__main__":
    main()
