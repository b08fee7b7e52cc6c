"""What the empirical NTK needs of a model, checked before and after the kernel (private).

The NTK ``Theta(x, x') = J(x) J(x')^T`` is defined for a deterministic per-example function
``x -> f(theta, x)`` with finite parameters. Each rule below turns a violation into a
torchntk error instead of a silent wrong kernel:

* :func:`check_finite_model`: every parameter and floating buffer is finite (``O(P)``, once per
  call); a NaN weight makes every entry NaN;
* :func:`check_per_example`: on a plan-cache miss, ``f`` of one example alone equals its row of
  ``f`` on a batch of two, and two calls agree (a forward subtracting the batch mean has an
  all-zero NTK; a random forward has none);
* :func:`check_kernel_finite`: the kernel itself is finite (the model's output or derivatives
  may overflow where parameters and inputs are finite);
* :func:`in_place_error`: the error of a forward that overwrites in place a tensor autograd
  saved for its backward pass, which no implementation can differentiate.
"""

from __future__ import annotations

import math

import torch

from ..errors import ModelStateError, NonFiniteError
from ._functional import Functional

def _tolerance(t: torch.Tensor) -> float:
    """The relative gap between ``f(x_0)`` alone and in a batch that rounding can explain:
    batched matmuls sum in another order (a few ulps per layer). ``sqrt(eps)``: 1.5e-8 in
    float64, 3.5e-4 in float32 on the CPU; float32 on a GPU may run its matmuls and
    convolutions in TF32 (10-bit mantissa, eps 1e-3), and half precisions have eps 1e-3 to 8e-3,
    so they get 3e-2. All far below the O(1) gap of a forward that mixes examples."""
    if t.dtype in (torch.float16, torch.bfloat16) or (t.dtype == torch.float32 and t.device.type != "cpu"):
        return 3e-2
    return math.sqrt(torch.finfo(t.dtype).eps)


def check_finite_model(fm: Functional) -> None:
    """Raise NonFiniteError naming the first parameter or buffer with a NaN or infinite entry."""
    if fm.module is None:
        named = [(f"`params`[{n!r}]", t) for n, t in fm.params.items()]
    else:
        named = [(f"`model` parameter {n!r}", t) for n, t in {**fm.frozen, **fm.params}.items()]
        named += [(f"`model` buffer {n!r}", b) for n, b in fm.module.named_buffers() if b.is_floating_point()]
    tensors = [t for _, t in named if t.is_floating_point() and t.numel()]
    if not tensors:
        return
    flags = torch.stack([torch.isfinite(t).all() for t in tensors])
    if bool(flags.all()):
        return
    for label, t in named:
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise NonFiniteError(
                f"{label} has {bad} non-finite (NaN or inf) entr{'y' if bad == 1 else 'ies'} of "
                f"{t.numel()}; the kernel would be NaN. Re-initialize or repair the model "
                "(e.g. after a diverged training step) before computing its NTK"
            )


def _gap(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Largest absolute difference of ``a`` and ``b`` and that relative to ``max |b|``."""
    gap = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(b.abs().max()) if b.numel() else 0.0
    return gap, gap / max(scale, torch.finfo(b.dtype).tiny)


def check_per_example(fm: Functional, x: torch.Tensor) -> None:
    """Raise ModelStateError unless ``f`` is deterministic per example on the batch ``x``.

    ``x`` holds at least two examples (fewer: nothing to compare). Runs the model at most three times
    on at most two examples, without gradients: ``f(x[:2])`` twice (the first may be the
    output :meth:`Functional.probe` computed on them), then ``f(x[:1])``; the
    results must agree to :func:`_tolerance` relative to the largest output.
    """
    if x.shape[0] < 2:
        return
    with torch.no_grad():
        both = fm.probed_output(x[:2])  # the probe's forward pass on these examples, if it ran
        if both is None:
            both = fm(fm.params, x[:2])
        again = fm(fm.params, x[:2])
        one = fm(fm.params, x[:1])
    if not (bool(torch.isfinite(both).all()) and bool(torch.isfinite(one).all())):
        raise NonFiniteError(
            "`model` returns NaN or inf on the first examples of the input although its "
            "parameters and the inputs are finite; the kernel would not be finite. Check the "
            "model's forward (an overflow, a log or division of zero)"
        )
    tol = _tolerance(both)
    gap, rel = _gap(again, both)
    if rel > tol:
        raise ModelStateError(
            f"`model` is not deterministic: two calls on the same two examples differ by {gap:.3g} "
            f"(relative {rel:.2g}); the NTK needs a deterministic per-example function "
            "x -> f(theta, x). Fix: call model.eval() and remove random operations from the forward"
        )
    gap, rel = _gap(one[0], both[0])
    if rel > tol:
        raise ModelStateError(
            "`model` mixes the examples of a batch: its output for one example alone differs "
            f"from its output for the same example in a batch of two by {gap:.3g} (relative "
            f"{rel:.2g}), e.g. a forward that normalizes with batch statistics (x - x.mean(0)). "
            "The NTK is defined for a per-example function x -> f(theta, x), and such a kernel "
            "would be meaningless (for a subtracted batch mean it is all zero). Fix: normalize "
            "each example on its own or with fixed statistics"
        )


def _bad_outputs(fm: Functional, x: torch.Tensor, chunk: int = 256) -> list[int]:
    """The examples of ``x`` whose model output is not finite (forward passes by chunks)."""
    bad: list[int] = []
    with torch.no_grad():
        for s in range(0, x.shape[0], chunk):
            out = fm(fm.params, x[s : s + chunk])
            bad += (torch.nonzero(~torch.isfinite(out).all(1)).flatten() + s).tolist()
    return bad


def check_kernel_finite(
    kernel: torch.Tensor | dict[str, torch.Tensor], fm: Functional, x1: torch.Tensor, x2: torch.Tensor | None
) -> None:
    """Raise NonFiniteError naming the examples behind non-finite kernel entries.

    Those are the examples with a non-finite output; when every output is finite (only a
    derivative is not), the examples whose whole row (column) is non-finite, or else every
    row (column) holding a non-finite entry. Costs one sum over the kernel when it is finite:
    an inf or NaN entry makes the sum inf or NaN, so a finite sum means finite entries (a sum
    that overflows on finite entries takes the entrywise check).
    """
    parts = kernel.values() if isinstance(kernel, dict) else [kernel]
    for t in parts:
        if bool(torch.isfinite(t.sum())):
            continue
        ok = torch.isfinite(t)
        if bool(ok.all()):
            continue
        bad = ~ok.reshape(t.shape[0], t.shape[1], -1).all(-1)
        rows, cols = _bad_outputs(fm, x1), [] if x2 is None else _bad_outputs(fm, x2)
        if not rows and not cols:
            rows = torch.nonzero(bad.all(1) if bool(bad.all(1).any()) else bad.any(1)).flatten().tolist()
            cols = torch.nonzero(bad.all(0) if bool(bad.all(0).any()) else bad.any(0)).flatten().tolist()
        where = f"examples {rows[:8]} of `x1`" + ("" if x2 is None else f" and {cols[:8]} of `x2`")
        raise NonFiniteError(
            f"the empirical NTK has non-finite (NaN or inf) entries, from {where}, although the "
            "parameters and inputs are finite: the model's output or its derivatives overflow "
            "or are NaN there (e.g. a log or division of zero, exp of a large number, sqrt at 0)"
        )


_IN_PLACE = "modified by an inplace operation"


def in_place_error(fm: Functional, x: torch.Tensor, err: BaseException) -> ModelStateError | None:
    """The error for a forward that plain autograd cannot differentiate because it overwrites in
    place a tensor saved for the backward pass (``torch.relu(h).add_(1)``), or ``None`` when
    ``err`` is not that or one reverse-mode pass on ``x[:1]`` succeeds (then another
    implementation may work)."""
    if _IN_PLACE not in str(err):
        return None
    leaves = {n: t.detach().requires_grad_(True) for n, t in fm.params.items()}
    try:
        with torch.enable_grad():
            out = fm({**fm.params, **leaves}, x[:1])
            torch.autograd.grad(out.sum(), list(leaves.values()), allow_unused=True)
    except RuntimeError as plain:
        if _IN_PLACE not in str(plain):
            return None
        detail = str(plain).strip().splitlines()[0]
        return ModelStateError(
            "`model` cannot be differentiated by autograd: its forward overwrites in place a "
            "tensor that autograd saved for the backward pass, so model(x).sum().backward() fails "
            f"as well ({detail}). Fix: make that operation out of place, e.g. `h = h + 1` instead "
            "of `h.add_(1)` after torch.relu/tanh/sigmoid/exp, or nn.ReLU() instead of "
            "nn.ReLU(inplace=True) before such an update"
        )
    return None
