"""Compare torchntk with the peer on a recipe, shrink a disagreement, and arbitrate it by Monte Carlo.

- :func:`compare` computes both libraries' NNGP and NTK (kernel and cross-kernel, float64) and
  classifies the outcome: ``agree`` (every entry within ``RTOL`` of the largest one),
  ``disagree``, ``shapes`` (different kernel shapes), ``peer_refused`` / ``ours_refused`` (an
  exception), ``peer_nonfinite`` / ``ours_nonfinite`` / ``both_nonfinite`` (float64 overflow; also when torchntk raises ``NonFiniteError`` and the
  peer's kernel has non-finite entries). The peer runs as called (``"plain"``: op by op), jitted (``"jit"``) or with
  ``jax.disable_jit()`` (``"eager"``, the mode used to arbitrate).
- :func:`minimize` shrinks a recipe (drops layers and branches, reduces fans to one branch,
  resets arguments to their defaults) while a predicate still holds, to the smallest such recipe.
- :func:`arbitrate` draws the recipe's finite networks (``spec.module``) at growing width and
  averages their outputs' covariance and empirical NTK over initializations
  (``torchntk.layers.monte_carlo_kernels``); at each width it reports the Monte Carlo estimate
  with its standard error and the relative distance to each library's kernel at that width.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from torchntk.errors import NonFiniteError

from . import _convert as C

# Closed forms in float64 agree to ~1e-13 per layer, but at correlation 1 (every self-kernel's
# diagonal, and deep networks drive all correlations towards 1) the arc-cosine-type rules
# (ReLU/ABRelu/Abs, their attention mechanisms) take sqrt(q11 q22 - q12^2), whose slope is
# infinite there: a rounding of eps = 1.1e-16 in the q's becomes ~sqrt(eps) = 1e-8 relative (the
# peer's jitted and eager runs differ by that much). Hence 1e-7.
RTOL = 1e-7


@dataclass
class Outcome:
    status: str
    errors: dict = field(default_factory=dict)  # "nngp", "ntk", "nngp_cross", "ntk_cross" -> relative error
    message: str = ""

    @property
    def worst(self) -> float:
        return max(self.errors.values(), default=0.0)


def ours(recipe: tuple, x1: torch.Tensor, x2: torch.Tensor | None, patterns=None, width: float = 1.0):
    kw = {} if patterns is None else {"pattern": patterns if x2 is not None else patterns[0]}
    return C.build(recipe, width).kernel(x1, x2, **kw)


def peer(recipe: tuple, x1: torch.Tensor, x2: torch.Tensor | None, patterns=None, width: float = 1.0,
         mode: str = "plain", spatial_ndim: int | None = None, repairs: tuple[str, ...] = (),
         zero_bias: str = "none"):
    import jax

    nd = x1.ndim - 2 if spatial_ndim is None else spatial_ndim
    kernel_fn = C.build_stax(recipe, width, spatial_ndim=nd, repairs=repairs, zero_bias=zero_bias)[2]
    kw = {}
    if patterns is not None:
        p1 = patterns[0].numpy()
        kw["pattern"] = (p1, p1 if x2 is None else patterns[1].numpy())
    args = (C.to_peer(x1), None if x2 is None else C.to_peer(x2))
    if mode == "jit":
        return jax.jit(lambda a, b: kernel_fn(a, b, ("nngp", "ntk"), **kw))(*args)
    ctx = jax.disable_jit() if mode == "eager" else contextlib.nullcontext()
    with ctx:
        return kernel_fn(*args, ("nngp", "ntk"), **kw)


def _peer_overflows(recipe, x1, second, patterns, mode, repairs, zero_bias) -> bool:
    """Whether the peer returns an NNGP or NTK with non-finite entries (a refusal is not that)."""
    try:
        b = peer(recipe, x1, second, patterns, mode=mode, repairs=repairs, zero_bias=zero_bias)
    except Exception:  # noqa: BLE001
        return False
    return not (np.isfinite(np.asarray(b.nngp)).all() and np.isfinite(np.asarray(b.ntk)).all())


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|: the entrywise error relative to the kernel's scale."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def compare(recipe: tuple, x1: torch.Tensor, x2: torch.Tensor, patterns=None, *, mode: str = "plain",
            rtol: float = RTOL, repairs: tuple[str, ...] = (), zero_bias: str = "none") -> Outcome:
    """Both libraries on ``(x1, x1)`` and ``(x1, x2)``; see the module docstring."""
    errors = {}
    for suffix, second in (("", None), ("_cross", x2)):
        try:
            a = ours(recipe, x1, second, patterns)
        except NonFiniteError as e:  # torchntk refuses a kernel float64 cannot hold: so must the peer
            if _peer_overflows(recipe, x1, second, patterns, mode, repairs, zero_bias):
                return Outcome("both_nonfinite", errors, f"{type(e).__name__}: {e}")
            return Outcome("ours_refused", errors, f"{type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001 - classified, then reported
            return Outcome("ours_refused", errors, f"{type(e).__name__}: {e}")
        try:
            b = peer(recipe, x1, second, patterns, mode=mode, repairs=repairs, zero_bias=zero_bias)
        except Exception as e:  # noqa: BLE001
            return Outcome("peer_refused", errors, f"{type(e).__name__}: {e}")
        for name in ("nngp", "ntk"):
            mine, theirs = getattr(a, name).numpy(), np.asarray(getattr(b, name))
            if mine.shape != theirs.shape:
                return Outcome("shapes", errors, f"{name}{suffix}: shapes {mine.shape} and {theirs.shape}")
            fin_a, fin_b = np.isfinite(mine).all(), np.isfinite(theirs).all()
            if not (fin_a or fin_b):  # both overflow float64 (e.g. deep identity attention)
                return Outcome("both_nonfinite", errors, f"{name}{suffix}")
            if not fin_a:
                return Outcome("ours_nonfinite", errors, f"{name}{suffix}")
            if not fin_b:
                return Outcome("peer_nonfinite", errors, f"{name}{suffix}")
            errors[name + suffix] = rel(mine, theirs)
    status = "agree" if max(errors.values()) <= rtol else "disagree"
    return Outcome(status, errors)


# -- the minimizer ----------------------------------------------------------------------------


def _reductions(node: tuple):
    """Every recipe one step smaller than ``node`` (fewer layers, branches or arguments)."""
    kind = node[0]
    if kind == "serial":
        items = node[1]
        for i in range(len(items)):
            if len(items) > 1 and i < len(items) - 1:  # the readout stays
                yield ("serial", items[:i] + items[i + 1:])
            for smaller in _reductions(items[i]):
                if smaller[0] == "inline":
                    yield ("serial", items[:i] + smaller[1] + items[i + 1:])
                else:
                    yield ("serial", items[:i] + [smaller] + items[i + 1:])
    elif kind == "fan":
        branches, how = node[1], node[2]
        for b in branches:  # the fan replaced by one of its branches
            yield ("inline", list(b))
        for j, b in enumerate(branches):
            for k in range(len(b)):
                yield ("fan", branches[:j] + [b[:k] + b[k + 1:]] + branches[j + 1:], how)
            for k, leaf in enumerate(b):
                for smaller in _reductions(leaf):
                    if smaller[0] != "inline":
                        yield ("fan", branches[:j] + [b[:k] + [smaller] + b[k + 1:]] + branches[j + 1:], how)
        if how == "concat":
            yield ("fan", branches, "sum")
    else:
        name, kw = node
        for key in kw:  # back to the default of one argument
            yield (name, {k: v for k, v in kw.items() if k != key})


def size(node: tuple) -> int:
    """Layers plus arguments: what the minimizer decreases."""
    if node[0] == "serial":
        return sum(size(n) for n in node[1])
    if node[0] == "fan":
        return 3 + sum(size(n) for b in node[1] for n in b)
    return 1 + len(node[1])


def minimize(recipe: tuple, fails: Callable[[tuple], bool], max_steps: int = 400) -> tuple:
    """Greedy delta debugging: take the first one-step reduction for which ``fails`` still
    holds, until none does (``fails`` must be False for recipes that do not build)."""
    steps = 0
    improved = True
    while improved and steps < max_steps:
        improved = False
        for smaller in _reductions(recipe):
            steps += 1
            if smaller[0] == "inline" or size(smaller) >= size(recipe):
                continue
            try:
                ok = fails(smaller)
            except Exception:  # noqa: BLE001 - a recipe that does not build is not a failure
                ok = False
            if ok:
                recipe, improved = smaller, True
                break
    return recipe


# -- the Monte Carlo arbiter ------------------------------------------------------------------


@dataclass
class Arbitration:
    width: float
    mc: dict  # name -> MC estimate (numpy)
    stderr: float  # relative standard error of the NTK estimate (max entry)
    to_ours: dict  # name -> relative distance MC vs torchntk at this width
    to_peer: dict


def monte_carlo(recipe: tuple, x1: torch.Tensor, x2: torch.Tensor, width: float, n_samples: int, seed: int = 0):
    """Monte Carlo NNGP and NTK (``mode="mean"``) of ``build(recipe, width).module`` networks,
    with the relative standard error of the NTK (from the spread of the draws)."""
    from torchntk import layers as L

    spec = C.build(recipe, width, readout=False)
    ests = list(L.monte_carlo_kernels(spec, x1, x2, n_samples=n_samples, seed=seed))
    means, last = [e.ntk for e in ests], ests[-1]
    draws = torch.stack([means[0]] + [(s + 1) * means[s] - s * means[s - 1] for s in range(1, len(means))])
    se = float(draws.std(0).max() / math.sqrt(n_samples) / last.ntk.abs().max())
    return {"nngp": last.nngp.numpy(), "ntk": last.ntk.numpy()}, se


def arbitrate(recipe: tuple, x1: torch.Tensor, x2: torch.Tensor, widths=(1, 4, 16), n_samples: int = 8,
              seed: int = 0, peer_mode: str = "eager") -> list[Arbitration]:
    """The Monte Carlo kernel at each width against both libraries' kernels at that width."""
    out = []
    for w in widths:
        mc, se = monte_carlo(recipe, x1, x2, w, n_samples, seed)
        a, b = ours(recipe, x1, x2, width=w), peer(recipe, x1, x2, width=w, mode=peer_mode)
        to_ours = {n: rel(mc[n], getattr(a, n).numpy()) for n in mc}
        to_peer = {n: rel(mc[n], np.asarray(getattr(b, n))) for n in mc}
        out.append(Arbitration(w, mc, se, to_ours, to_peer))
    return out
