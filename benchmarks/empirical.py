"""Empirical NTK, side by side in one process: torchntk vs the torch.func recipe vs the peer.

Contenders, all on scikit-learn's digits (inputs scaled to [0, 1]):

* torchntk's ``empirical_ntk`` with each implementation ("jacobian", "ntvp", "structured")
  and "auto";
* the recipe of the torch.func tutorial ("Neural Tangent Kernels"): per-example Jacobians with
  ``vmap(jacrev)``, then one einsum per parameter tensor, summed;
* neural-tangents' structured-derivatives NTK (``implementation=3``, ``vmap_axes=0``, jitted,
  compiled outside the timing) on the same MLP and CNN with the same weights, when it imports
  (run with the peer's Python).

Workloads: MLP 64-512-512-10 (ReLU, bias) at N = 96 in "full" and "mean" modes; a CNN (three
3x3 convolutions with 64 channels, SAME padding, ReLU, then a dense layer to 10) on the 8x8
images at N = 32; a BERT-style encoder (token and position embeddings, two
``nn.TransformerEncoderLayer`` of width 64 with 4 heads, mean pooling, a dense layer to 10) on
N = 64 random token sequences of length 16 in "mean" mode (torchntk and the recipe; the peer
has no such model with these weights); torchntk vs the peer on the MLP at N = 96 and 256 and
on the CNN at N = 32; and
a scale line: the 4000 x 4000 "mean" kernel of an MLP with about a million parameters under
``memory="4GiB"``, run in a child process whose peak resident memory is reported.

Every contender gets the same thread budget (``--threads``, default 2) with its own default
threading on: torch's intra-op threads, and XLA's multi-threaded Eigen with as many intra-op
threads (never ``--xla_cpu_multi_thread_eigen=false``, which makes the peer single-threaded).
The rows against the peer run each contender in its own process, one after the other
(:func:`bench_peer_processes`); the header states the CPU, the load average and the commit.
Everything runs
in float32 (the peer's default; jax_enable_x64 is on, but the arrays are
float32). Times are medians over repeats after one warm-up call; "first" is the time of that
first call on a fresh copy of the model (torchntk plans and caches its plan then; the process's
one-time import and library start-up costs are paid before any timing, by a warm-up on another
model). torchntk shares plans by model structure and input shape, so in each workload "auto",
run first, pays the planning probe and the contenders after it (and the "mean" rows after the
"full" ones) reuse the plan, as a user's second model of the same architecture would. The
torch.func recipes run after all torchntk and peer timings (see :func:`bench_recipes`), and
their rows are printed then. Every process runs under glibc's default allocator (what a
user's program gets; no ``MALLOC_*`` tuning), and no memory sampler runs during the timed
calls. "peak" is measured on one more call after ``malloc_trim(0)`` (the heap's free pages
given back, so memory freed by an earlier call does not hide this one's): the largest rise of
the process's resident memory over its level before the call, sampled every millisecond;
"ran" names the implementation that "auto" chose.

    .peer-venv/bin/python benchmarks/empirical.py            # everything (about 3 minutes)
    .peer-venv/bin/python benchmarks/empirical.py --only cnn peer   # some parts
    .venv/bin/python benchmarks/empirical.py --quick         # no peer, fewer repeats
    .venv/bin/python benchmarks/empirical.py --quick --tiny  # smoke test at small sizes
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import logging
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

import torchntk
from torchntk.nn import MLP, Conv2d, Linear

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Largest rise of the resident set size over its level at entry (sampled every 1 ms)."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def rise(self) -> int:
        return self.peak - self.base


def _trim() -> None:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim(0)``), so that the
    resident memory before a call holds only what is live, and the call's own rise shows."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # another C library: the peak column may read low
        pass


def measure_calls(fns: list, repeats: int) -> list[tuple]:
    """Per contender of ``fns``: (median seconds, peak rise in bytes, last result, first-call
    seconds). One first call of each (timed on its own), ``repeats`` rounds of warm calls with
    the contenders alternated (``a, b, a, b, ...``: a drift of the machine's speed moves every
    median alike), then one more call of each after :func:`_trim` for the peak column (the
    largest rise of the resident memory over its level before the call). Every call runs under
    glibc's default allocator, as a user's program does, and the timed calls without a memory
    sampler; a first call finds the heap as the calls before it left it (trimmed, it would also
    pay for faulting in every page of its working set, which is the allocator's first touch,
    not the library's first call).

    When a first call takes over 3 s the contenders are reported from their first calls alone
    (the time is dominated by compute, not by first-call overheads)."""
    firsts, outs = [], []
    for fn in fns:
        t = time.perf_counter()
        outs.append(fn())
        firsts.append(time.perf_counter() - t)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats if max(firsts) <= 3.0 else 0):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - t)
    peaks = []
    for fn in fns:
        _trim()
        with PeakRSS() as mem:
            fn()
        peaks.append(mem.rise)
    return [(statistics.median(ts) if ts else first, peak, out, first)
            for ts, peak, out, first in zip(times, peaks, outs, firsts)]


def measure(fn, repeats: int):
    """:func:`measure_calls` of one contender."""
    return measure_calls([fn], repeats)[0]


# -- the torch.func tutorial recipe ------------------------------------------------------------

def recipe_ntk(net: nn.Module, x1: torch.Tensor, x2: torch.Tensor, mode: str) -> torch.Tensor:
    params = {k: v.detach() for k, v in net.named_parameters()}

    def fnet_single(p, x):
        return functional_call(net, p, (x.unsqueeze(0),)).squeeze(0)

    jac1 = vmap(jacrev(fnet_single), (None, 0))(params, x1)
    jac1 = [j.flatten(2) for j in jac1.values()]
    jac2 = vmap(jacrev(fnet_single), (None, 0))(params, x2)
    jac2 = [j.flatten(2) for j in jac2.values()]
    if mode == "full":
        return torch.stack([torch.einsum("Naf,Mbf->NMab", a, b) for a, b in zip(jac1, jac2)]).sum(0)
    return torch.stack([torch.einsum("Naf,Maf->NM", a, b) for a, b in zip(jac1, jac2)]).sum(0) / jac1[0].shape[1]


# -- models --------------------------------------------------------------------------------------

def make_mlp(widths=(512, 512), seed=0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    return MLP(64, list(widths), 10, activation="relu", beta=0.1, generator=g)


def make_cnn(seed=0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    return nn.Sequential(
        Conv2d(1, 64, 3, padding="same", b_std=0.1, generator=g), nn.ReLU(),
        Conv2d(64, 64, 3, padding="same", b_std=0.1, generator=g), nn.ReLU(),
        Conv2d(64, 64, 3, padding="same", b_std=0.1, generator=g), nn.ReLU(),
        nn.Flatten(), Linear(64 * 8 * 8, 10, b_std=0.1, generator=g),
    )


class BertStyle(nn.Module):
    """Token ids (N, L) -> token + position embeddings -> Transformer encoder -> mean -> dense."""

    def __init__(self, vocab=1000, length=16, width=64, heads=4, layers=2, out=10, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(length, width)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0,
                                           activation="gelu", batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, out)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.head(self.enc(self.tok(ids) + self.pos(pos)).mean(1))


class LabelLogits(nn.Module):
    """A ``transformers`` causal language model -> the logits of ``labels`` at the last position
    (``out.logits[:, -1, labels]``), the outputs of the kernel view of prompt-based fine-tuning."""

    def __init__(self, lm: nn.Module, labels: list[int]):
        super().__init__()
        self.lm, self.labels = lm, labels

    def forward(self, ids):
        return self.lm(ids).logits[:, -1, self.labels]


def make_gpt2(width: int = 256, layers: int = 2, vocab: int = 5000, seed: int = 0) -> nn.Module | None:
    """A GPT-2 style model from a ``transformers`` configuration (random weights, eager attention,
    head tied to the token embedding), as :class:`LabelLogits` of 10 label words; None without
    ``transformers``."""
    try:
        import transformers
    except ImportError:
        return None
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=width, n_layer=layers, n_head=4,
                                  bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "eager"
    return LabelLogits(transformers.GPT2LMHeadModel(cfg).eval(), list(range(100, 110)))


def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data / 16.0, dtype=torch.float32)


# -- the peer ------------------------------------------------------------------------------------

def peer_kernel_fns(net: nn.Module, image_shape: tuple[int, int, int] | None = None):
    """neural-tangents' structured NTK of the same MLP or CNN, with the torch weights; or None.

    ``image_shape = (C, H, W)`` for a CNN: the peer takes channels-last images ``(N, H, W, C)``
    (convert the inputs with ``x.permute(0, 2, 3, 1)``), HWIO kernels, and flattens ``(H, W, C)``,
    so the dense layer after ``nn.Flatten`` gets its input columns reordered to match.
    """
    try:
        import jax

        # float32 everywhere; x64 stays on for the MLP (as in the peer tests) but off for the
        # CNN, whose structured convolution rule mixes float64 and float32 arrays under x64.
        jax.config.update("jax_enable_x64", image_shape is None)
        import jax.numpy as jnp
        import neural_tangents as nt
        from neural_tangents import stax
    except Exception as err:  # noqa: BLE001 - any import failure means: no peer
        print(f"(peer skipped: {type(err).__name__}: {err})")
        return None
    layers, params = [], []
    flat_from = None  # (C, H, W) of the input of the first dense layer after a Flatten
    channels = None if image_shape is None else image_shape[0]
    for m in net:
        if isinstance(m, Conv2d):  # stride 1, SAME: the image size is kept
            channels = m.out_channels
            layers.append(stax.Conv(m.out_channels, tuple(m.kernel_size), padding=m.padding.upper(),
                                    W_std=m.W_std, b_std=m.b_std))
            params.append((jnp.asarray(m.weight.detach().permute(2, 3, 1, 0).numpy()),
                           jnp.asarray(m.bias.detach().numpy())))
        elif isinstance(m, nn.Flatten):
            layers.append(stax.Flatten())
            params.append(())
            flat_from = (channels, *image_shape[1:])
        elif isinstance(m, Linear):
            w = m.weight.detach()
            if flat_from is not None:  # columns (c, h, w) -> (h, w, c)
                w = w.view(-1, *flat_from).permute(0, 2, 3, 1).reshape(w.shape[0], -1)
                flat_from = None
            layers.append(stax.Dense(m.out_features, W_std=m.W_std, b_std=m.b_std))
            params.append((jnp.asarray(w.numpy().T), jnp.asarray(m.bias.detach().numpy())))
        else:
            layers.append(stax.Relu())
            params.append(())
    _, apply_fn, _ = stax.serial(*layers)
    fns = {}
    for mode, axes in (("full", ()), ("mean", (-1,))):
        k = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=axes, vmap_axes=0, implementation=3))
        fns[mode] = (lambda k: lambda x: k(x, None, params).block_until_ready())(k)
    return fns, jnp


def bench_peer(workload: str, fns: dict, net: nn.Module, x: torch.Tensor, x_peer, reps: int) -> None:
    """neural-tangents (compiled outside the timing) then torchntk "auto" on a fresh copy of
    ``net``, both modes, in this process; ``x_peer`` is ``x`` in the peer's layout. The fair
    comparison, each contender in its own process, is :func:`bench_peer_processes`."""
    for mode in ("full", "mean"):
        t0 = time.perf_counter()
        fns[mode](x_peer)  # compile outside the timing; the compile-and-run is its first call
        fp = time.perf_counter() - t0
        tp, pp, kp, _ = measure(lambda: fns[mode](x_peer), reps)
        report(f"{workload} {mode} vs peer", "neural-tangents", tp, pp, None, first=fp)
        fresh = copy.deepcopy(net)
        tt, pt, kt, ft = measure(lambda: torchntk.empirical_ntk(fresh, x, mode=mode), reps)
        diff = rel_err(kt, torch.from_numpy(np.asarray(kp)))
        report(f"{workload} {mode} vs peer", "torchntk auto", tt, pt, None,
               f"peer/torchntk time {tp / tt:.2f}x; ran {CHOSEN.name}; rel. diff {diff:.1e}", first=ft)


def _peer_inputs(model: str, n: int):
    """The model (seeded) and inputs of one peer workload, in both layouts."""
    X = digits()
    if model == "mlp":
        return make_mlp(), X[:n], None
    imgs = X[:n].view(n, 1, 8, 8)
    return make_cnn(), imgs, (1, 8, 8)


def child_contender(contender: str, model: str, n: int, reps: int, out: str) -> None:
    """Child process: time one contender on one workload, both modes; print one JSON line and
    save the kernels to ``out`` (an .npz) for the parent's agreement check."""
    import json

    net, x, image_shape = _peer_inputs(model, n)
    res, kernels = {}, {}
    if contender == "peer":
        peer = peer_kernel_fns(net, image_shape=image_shape)
        if peer is None:
            print("RESULT " + json.dumps({"error": "the peer does not import"}))
            return
        fns, jnp = peer
        xp = jnp.asarray((x if image_shape is None else x.permute(0, 2, 3, 1)).numpy())
        for mode in ("full", "mean"):
            t0 = time.perf_counter()
            fns[mode](xp)  # compile and run: its first call
            first = time.perf_counter() - t0
            t, peak, k, _ = measure(lambda: fns[mode](xp), reps)
            res[mode], kernels[mode] = {"median": t, "first": first, "peak": peak}, np.asarray(k)
    else:
        for mode in ("full", "mean"):
            fresh = copy.deepcopy(net)
            t, peak, k, first = measure(lambda: torchntk.empirical_ntk(fresh, x, mode=mode), reps)
            res[mode], kernels[mode] = {"median": t, "first": first, "peak": peak, "ran": CHOSEN.name}, k.numpy()
    np.savez(out, **kernels)
    print("RESULT " + json.dumps(res))


def bench_peer_processes(threads: int, reps: int) -> None:
    """The fair comparison with the peer: each contender in its own process with the same thread
    budget and its own default threading on (torch: ``threads`` intra-op threads; XLA: its
    multi-threaded Eigen with ``intra_op_parallelism_threads=threads``), run one after the
    other; the ratios printed are the peer's median over torchntk's."""
    import json
    import tempfile

    for model, n in (("mlp", 96), ("mlp", 256), ("cnn", 32)):
        found = {}
        with tempfile.TemporaryDirectory() as tmp:
            for contender in ("peer", "torchntk"):
                out = os.path.join(tmp, f"{contender}.npz")
                cmd = [sys.executable, __file__, "--child", contender, model, str(n), str(reps), out,
                       "--threads", str(threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(threads))
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                found[contender] = json.loads(line[-1][7:]) if line else {"error": proc.stderr[-1500:]}
                if "error" not in found[contender]:
                    found[contender]["kernels"] = dict(np.load(out))
        if any("error" in r for r in found.values()):
            print(f"{model.upper()} N={n} vs peer: skipped ({found})")
            continue
        for mode in ("full", "mean"):
            p, t = found["peer"][mode], found["torchntk"][mode]
            diff = rel_err(torch.from_numpy(found["torchntk"]["kernels"][mode]),
                           torch.from_numpy(found["peer"]["kernels"][mode]))
            w = f"{model.upper()} N={n} {mode} (processes)"
            report(w, "neural-tangents", p["median"], p["peak"], None, first=p["first"])
            report(w, "torchntk auto", t["median"], t["peak"], None,
                   f"peer/torchntk time {p['median'] / t['median']:.2f}x; ran {t['ran']}; "
                   f"first/warm {t['first'] / t['median']:.2f}; rel. diff {diff:.1e}", first=t["first"])


def _child_env(threads: int) -> dict:
    """The environment of a contender's process: ``threads`` for torch (OpenMP) and for XLA's
    multi-threaded Eigen (left on, as is the peer's default)."""
    env = dict(os.environ)
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=true "
                            f"intra_op_parallelism_threads={threads}").strip()
    return env


def machine() -> str:
    """The CPU, the load average and the commit, for the header of every run."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "?"
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"CPU {cpu} ({os.cpu_count()} cores), load average {load}, commit {commit}"


# -- report ----------------------------------------------------------------------------------------

ROWS: list[tuple] = []


def report(workload: str, name: str, seconds: float, peak: int, ref: float | None, extra: str = "",
           first: float | None = None):
    ratio = "" if ref is None else f"{ref / seconds:8.1f}x"
    ROWS.append((workload, name, seconds, first, peak, ratio, extra))
    fc = "" if first is None else f"{first:9.4f} s"
    print(f"{workload:<28} {name:<22} {seconds:9.4f} s {fc:>11} {peak / 2**20:9.1f} MiB {ratio:>9} {extra}",
          flush=True)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


class Chosen(logging.Handler):
    """Remembers the implementation of torchntk's last call (its DEBUG log record)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.name = "?"

    def emit(self, record):
        # the record's argument is the call's report (``logging.Handler.name`` must stay a str)
        arg = record.args[0] if isinstance(record.args, tuple) else record.args
        self.name = str(getattr(arg, "implementation", arg))


CHOSEN = Chosen()


def bench_torch(workload, net, x, mode, repeats, impls):
    """Each torchntk implementation, each on its own fresh copy of ``net``; the recipe is timed
    later by :func:`bench_recipes`, with the results kept in ``PENDING``."""
    rows = PENDING.setdefault(workload, (net, x, mode, []))[3]
    for impl in impls:
        fresh = copy.deepcopy(net)
        t, peak, theta, first = measure(
            lambda: torchntk.empirical_ntk(fresh, x, mode=mode, implementation=impl), repeats)
        rows.append((impl, CHOSEN.name, t, peak, theta, first))


PENDING: dict[str, tuple] = {}  # workload -> (model, inputs, mode, torchntk rows)


def bench_recipes(recipe_repeats: int) -> None:
    """The recipe of each workload of ``PENDING``, then its torchntk rows with the speed-ups.

    The recipes run after every torchntk timing: they take gigabytes, and a call that starts
    right after those are given back was measured slower (up to 1.24x on a quiet 16-core
    machine, more on the 2-core one), which would be charged to torchntk.
    """
    for workload, (net, x, mode, rows) in PENDING.items():
        fresh = copy.deepcopy(net)
        t_ref, peak, ref, first = measure(lambda: recipe_ntk(fresh, x, x, mode), recipe_repeats)
        fresh = None  # the copy is given back before the torchntk rows are reported
        report(workload, "torch.func recipe", t_ref, peak, None, first=first)
        for impl, chosen, t, peak, theta, first in rows:
            runs = f"ran {chosen}; " if impl == "auto" else ""
            report(workload, f"torchntk {impl}", t, peak, t_ref,
                   f"(speed-up; {runs}first/warm {first / t:.2f}; rel. diff {rel_err(theta, ref):.1e})",
                   first=first)
    PENDING.clear()


def bench_sketch(net: nn.Module, ids: torch.Tensor, k: int, repeats: int) -> None:
    """``sketch=k`` against the exact call (``"auto"``, mode "mean"), each on a fresh copy of
    ``net``, at N = 32 and 8x that, their calls alternated (:func:`measure_calls`): time (median
    after a first call), the ratio, and the relative Frobenius error of three seeds (with the
    sketch's own estimate of it)."""
    for n in (ids.shape[0], 8 * ids.shape[0]):
        x = ids if n == ids.shape[0] else torch.randint(0, 5000, (n, ids.shape[1]),
                                                         generator=torch.Generator().manual_seed(n))
        work = f"GPT-2 N={n} mean"
        exact_net, sketch_net = copy.deepcopy(net), copy.deepcopy(net)
        (t_ex, p_ex, exact, f_ex), (t_sk, p_sk, est, f_sk) = measure_calls([
            lambda: torchntk.empirical_ntk(exact_net, x, mode="mean"),
            lambda: torchntk.empirical.sketched_ntk(sketch_net, x, k=k, mode="mean")], repeats)
        report(work, "torchntk auto (exact)", t_ex, p_ex, None, first=f_ex)
        errs = [est] + [torchntk.empirical.sketched_ntk(sketch_net, x, k=k, seed=s, mode="mean") for s in (1, 2)]
        fro = [float((e.kernel.double() - exact.double()).norm() / exact.double().norm()) for e in errs]
        report(work, f"sketch={k}", t_sk, p_sk, t_ex,
               f"(speed-up over exact; first/warm {f_sk / t_sk:.2f}; rel. Frobenius error "
               f"{', '.join(f'{e:.3f}' for e in fro)}; estimated {', '.join(f'{e.error:.3f}' for e in errs)})",
               first=f_sk)


def warm_up() -> None:
    """Pay the process's one-time costs (imports, library start-up) before any timing."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 36, 3))
    x = torch.randn(4, 1, 8, 8)
    recipe_ntk(net, x, x, "full")
    for impl in ("structured", "jacobian", "ntvp", "autograd"):
        torchntk.empirical_ntk(net, x, implementation=impl)


def scale_check() -> None:
    """Child process: the 4000 x 4000 mean kernel of a ~1M-parameter MLP under memory='4GiB'."""
    torch.manual_seed(0)
    net = make_mlp(widths=(1000, 1000))
    n_params = sum(p.numel() for p in net.parameters())
    x = torch.randn(4000, 64)
    t = time.perf_counter()
    theta = torchntk.empirical_ntk(net, x, mode="mean", memory="4GiB")
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"scale: mean kernel {tuple(theta.shape)} of a {n_params}-parameter MLP, memory='4GiB': "
          f"{dt:.1f} s, peak RSS of the whole process {peak / 2**30:.2f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, no peer, no scale line")
    ap.add_argument("--threads", type=int, default=2,
                    help="thread budget of every contender: torch's intra-op threads and XLA's "
                         "multi-threaded Eigen (default 2; 0 keeps the libraries' defaults)")
    ap.add_argument("--tiny", action="store_true", help="small sizes: a smoke test of the script")
    ap.add_argument("--only", nargs="+",
                    choices=("mlp", "cnn", "gpt2", "bert", "peer", "peer-inprocess", "scale"),
                    help="run only these parts (default: all but peer-inprocess); 'peer' is the MLP "
                         "and CNN rows against neural-tangents, each contender in its own process; "
                         "'peer-inprocess' the same in this process")
    ap.add_argument("--scale-check", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)  # contender model n repeats out.npz
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.getLogger("torchntk.empirical").addHandler(CHOSEN)
    logging.getLogger("torchntk.empirical").setLevel(logging.DEBUG)
    if args.scale_check:
        scale_check()
        return
    if args.child:
        contender, model, n, reps, out = args.child
        warm_up()
        child_contender(contender, model, int(n), int(reps), out)
        return
    reps, rreps = (3, 1) if args.quick else (7, 3)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32; {machine()}")
    print(f"{'workload':<28} {'contender':<22} {'median':>11} {'first call':>11} {'peak':>13} {'vs recipe':>9}")
    X = digits()
    impls = ["auto", "structured", "jacobian", "ntvp"]
    n_mlp, n_cnn, n_bert = (12, 6, 8) if args.tiny else (96, 32, 64)
    warm_up()

    def want(part: str) -> bool:
        return part in args.only if args.only is not None else part != "peer-inprocess"

    mlp = make_mlp((64, 64) if args.tiny else (512, 512))
    cnn = make_cnn()
    imgs = X[:n_cnn].view(n_cnn, 1, 8, 8)
    workloads = []  # (workload, model, inputs, mode, implementations)
    if want("mlp"):
        workloads += [(f"MLP N={n_mlp} {m}", mlp, X[:n_mlp], m, impls) for m in ("full", "mean")]
    if want("cnn"):
        workloads += [(f"CNN N={n_cnn} {m}", cnn, imgs, m, impls[:3]) for m in ("full", "mean")]
    gpt2 = make_gpt2(width=32 if args.tiny else 256) if want("gpt2") else None
    if gpt2 is not None:
        n_gpt = 4 if args.tiny else 32
        ids = torch.randint(0, 5000, (n_gpt, 16), generator=torch.Generator().manual_seed(0))
        # transformers' one-time costs in a process (its first forward and backward passes),
        # paid on another instance and two examples before any timing, like warm_up's
        torchntk.empirical_ntk(copy.deepcopy(gpt2), ids[:2], mode="mean")
        workloads.append((f"GPT-2 tiny N={n_gpt} mean", gpt2, ids, "mean", impls[:3]))
        if not args.tiny:
            bench_sketch(gpt2, ids, 4096, reps)
    elif want("gpt2"):
        print("(GPT-2 skipped: transformers does not import)")
    if want("bert"):
        bert = BertStyle(width=16 if args.tiny else 64).eval()
        ids = torch.randint(0, 1000, (n_bert, 16), generator=torch.Generator().manual_seed(0))
        workloads.append((f"BERT-style N={n_bert} mean", bert, ids, "mean", impls[:3] + ["autograd"]))
    # Two passes: "auto" and "structured" of every workload, then the implementations that take
    # gigabytes here (a call right after those are given back was measured slower, see
    # bench_recipes), so that no "auto" call, first calls included, follows them.
    for fast in (True, False):
        for workload, net, x, mode, names in workloads:
            chosen = [i for i in names if (i in ("auto", "structured")) == fast]
            bench_torch(workload, net, x, mode, reps, chosen)

    if not args.quick and want("peer"):
        bench_peer_processes(args.threads, reps)
    if not args.quick and want("peer-inprocess"):
        peer = peer_kernel_fns(mlp)
        if peer is not None:
            fns, jnp = peer
            for n in (96, 256):
                x = X[:n]
                bench_peer(f"MLP N={n}", fns, mlp, x, jnp.asarray(x.numpy()), reps)
        peer = peer_kernel_fns(cnn, image_shape=(1, 8, 8))
        if peer is not None:
            fns, jnp = peer
            bench_peer(f"CNN N={n_cnn}", fns, cnn, imgs, jnp.asarray(imgs.permute(0, 2, 3, 1).numpy()), reps)

    bench_recipes(rreps)

    if not args.quick and want("scale"):
        out = subprocess.run([sys.executable, __file__, "--scale-check"], capture_output=True, text=True)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("scale:")]
        if line:
            print(line[0])
        else:
            print("scale check failed:", out.stderr[-2000:])


if __name__ == "__main__":
    main()
