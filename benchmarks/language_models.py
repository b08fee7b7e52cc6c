"""The exact empirical NTK of GPT-2 style models at 10^7-10^8 parameters under a memory budget.

Each row runs in its own process (``--child``): a ``transformers`` GPT-2 built from a
configuration with random weights (eager attention, head tied to the token embedding), the
logits of 10 label words at the last of ``T = 16`` positions (:class:`empirical.LabelLogits`),
``empirical_ntk(..., mode="mean", memory=...)`` on ``N`` random token sequences, float32, with the
thread budget of ``--threads``. Printed per row: the parameter count, wall time, the process's
peak resident set size (``ru_maxrss``) and the implementation and blocks ``"auto"`` chose.
With ``--check`` the first two examples' block is compared with ``implementation="jacobian"``
(an independent path: per-example Jacobians of every parameter). With ``--sketch K`` each row
computes ``sketched_ntk(..., k=K)`` instead (the structured projections), and ``--check``
compares its first 32 x 32 block with the exact kernel of those 32 examples (relative
Frobenius error, beside the sketch's own estimate of its error).

    .venv/bin/python benchmarks/language_models.py            # both rows (about 15 min on 2 cores)
    .venv/bin/python benchmarks/language_models.py --only 22M --check
    .venv/bin/python benchmarks/language_models.py --sketch 4096 --check
    .venv/bin/python benchmarks/language_models.py --only 124M --dense-head   # without the sparse head

Needs ``transformers`` (skipped without it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from empirical import LabelLogits, machine  # noqa: E402

import torchntk  # noqa: E402

# name: (GPT2Config overrides, N, memory)
ROWS = {
    "22M": ({"n_embd": 512, "n_layer": 6, "n_head": 8, "vocab_size": 5000, "n_positions": 64}, 256, "4GiB"),
    "124M": ({}, 64, "8GiB"),  # the GPT-2 small configuration: 12 layers, d = 768, vocab 50257
}
T = 16


def build(overrides: dict) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(**overrides)
    cfg._attn_implementation = "eager"
    return LabelLogits(transformers.GPT2LMHeadModel(cfg).eval(), list(range(100, 110)))


def child(name: str, threads: int, check: bool, sketch: int | None = None) -> None:
    torch.set_num_threads(threads)
    overrides, n, memory = ROWS[name]
    net = build(overrides)
    vocab = net.lm.config.vocab_size
    ids = torch.randint(0, vocab, (n, T), generator=torch.Generator().manual_seed(0))
    if sketch is not None:
        return sketch_child(name, net, ids, memory, sketch, check)
    t = time.perf_counter()
    K, report = torchntk.empirical_ntk(net, ids, mode="mean", memory=memory, return_report=True)
    seconds = time.perf_counter() - t
    out = {"row": name, "parameters": sum(p.numel() for p in net.parameters()), "N": n, "memory": memory,
           "seconds": seconds, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "implementation": report.implementation, "blocks": report.block, "tiles": report.tiles}
    if check:
        ref = torchntk.empirical_ntk(net, ids[:2], mode="mean", implementation="jacobian")
        out["check_rel_err"] = float((K[:2, :2] - ref).abs().max() / ref.abs().max())
    print(json.dumps(out), flush=True)


def sketch_child(name: str, net: torch.nn.Module, ids: torch.Tensor, memory: str, k: int, check: bool) -> None:
    t = time.perf_counter()
    est = torchntk.empirical.sketched_ntk(net, ids, k=k, mode="mean", memory=memory)
    seconds = time.perf_counter() - t
    out = {"row": name, "parameters": sum(p.numel() for p in net.parameters()), "N": ids.shape[0], "memory": memory,
           "seconds": seconds, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "sketch": k, "estimated_error": est.error}
    if check:
        m = min(32, ids.shape[0])
        exact = torchntk.empirical_ntk(net, ids[:m], mode="mean", memory=memory).double()
        out["check_rel_err"] = float((est.kernel[:m, :m].double() - exact).norm() / exact.norm())
    print(json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=list(ROWS), default=list(ROWS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="compare the first 2x2 block with 'jacobian'")
    ap.add_argument("--sketch", type=int, default=None, metavar="K", help="the sketched kernel of size K instead")
    ap.add_argument("--dense-head", action="store_true",
                    help="form the head's input cotangent densely, as autograd does (no sparse head): "
                         "the ablation of empirical/_sparse_head.py")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.dense_head:
        from torchntk.empirical import _sparse_head

        _sparse_head.SPARSE_HEAD_MIN = 1 << 62  # no layer saves that much
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("(skipped: transformers does not import)")
        return
    if args.child:
        return child(args.child, args.threads, args.check, args.sketch)
    print(machine(), f"threads {args.threads}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for name in args.only:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--threads", str(args.threads)]
        cmd += (["--check"] if args.check else []) + ([] if args.sketch is None else ["--sketch", str(args.sketch)])
        cmd += ["--dense-head"] if args.dense_head else []
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = next((ln for ln in res.stdout.splitlines() if ln.startswith("{")), None)
        if line is None:
            print(f"{name}: failed\n{res.stderr[-2000:]}")
            continue
        r = json.loads(line)
        if "sketch" in r:
            extra = f", sketch={r['sketch']}: estimated error {r['estimated_error']:.3f}"
            if "check_rel_err" in r:
                extra += f", against the exact kernel of the first 32: {r['check_rel_err']:.3f}"
            print(f"GPT-2 {r['parameters'] / 1e6:.1f}M params, N={r['N']}, T={T}, mean, memory={r['memory']}: "
                  f"{r['seconds']:.1f} s, peak RSS {r['peak_rss_gib']:.2f} GiB{extra}", flush=True)
            continue
        extra = f", check vs jacobian {r['check_rel_err']:.1e}" if "check_rel_err" in r else ""
        print(f"GPT-2 {r['parameters'] / 1e6:.1f}M params, N={r['N']}, T={T}, mean, memory={r['memory']}: "
              f"{r['seconds']:.1f} s, peak RSS {r['peak_rss_gib']:.2f} GiB, {r['implementation']} in blocks "
              f"of {r['blocks']} ({r['tiles']} tiles){extra}", flush=True)


if __name__ == "__main__":
    main()
