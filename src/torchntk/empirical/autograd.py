"""The autograd implementation: the last resort that works wherever ``torch.autograd`` does.

No ``torch.func`` transform is involved: for every example ``x_i`` one ordinary forward pass
gives ``f(theta, x_i) (O,)``, and ``torch.autograd.grad`` with the ``O`` rows of the identity as
output cotangents gives the per-example Jacobian ``J_p[i] (O, *theta_p.shape)`` of every
differentiated parameter tensor, as one batched backward pass (``is_grads_batched=True``) or,
when an operation of the model has no batching rule, as ``O`` backward passes. The kernel is
then contracted as in :mod:`.jacobian`:

    Theta[i, j, a, b] = sum_p  <J_p[i, a], J_p[j, b]>.

It covers what the vectorized paths cannot: recurrent layers (``nn.LSTM``, ``nn.GRU``), custom
``torch.autograd.Function``s without ``vmap``/``jvp`` rules, in-place code, data-dependent
control flow. Cost: ``N`` forward passes and ``N`` (or ``N O``) backward passes in a Python
loop, plus the products of the Jacobian path; memory ``(N1 + N2) O P`` numbers, bounded by the
tiling.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from ._functional import Functional
from ._modes import Accumulator
from .jacobian import contract_jacobians


def batched_grads(
    out: torch.Tensor | Sequence[torch.Tensor], inputs: Sequence[torch.Tensor],
    cotangents: torch.Tensor | Sequence[torch.Tensor], state: dict | None = None
) -> list[torch.Tensor | None]:
    """``[d <cotangents[k], out> / d inputs]`` for every ``k``: tensors ``(K, *input.shape)``;
    ``out`` and ``cotangents`` may be sequences of the same length (the sum of their products).

    One batched backward pass (``is_grads_batched=True``); if the graph holds an operation
    without a batching rule, one backward pass per cotangent. ``state`` (a dict kept by the
    caller) remembers that the batched pass failed, so it is not tried again. Inputs that ``out``
    does not depend on give ``None``.
    """
    if state is None or state.get("batched", True):
        try:
            return list(torch.autograd.grad(
                out, inputs, cotangents, retain_graph=True, allow_unused=True, is_grads_batched=True,
            ))
        except RuntimeError as err:
            if isinstance(err, torch.OutOfMemoryError):
                raise
            if state is not None:
                state["batched"] = False
    many = not isinstance(cotangents, torch.Tensor)
    count = cotangents[0].shape[0] if many else cotangents.shape[0]
    per = [
        torch.autograd.grad(out, inputs, [c[k] for c in cotangents] if many else cotangents[k],
                            retain_graph=True, allow_unused=True)
        for k in range(count)
    ]
    return [None if per[0][m] is None else torch.stack([g[m] for g in per]) for m in range(len(inputs))]


@contextlib.contextmanager
def _cudnn(enabled: bool) -> Iterator[None]:
    previous = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = previous


def per_example_jacobians(
    fm: Functional, x: torch.Tensor, names: Sequence[str] | None = None, state: dict | None = None
) -> dict[str, torch.Tensor]:
    """Per-example Jacobians ``{name: (N, O, *shape)}`` of ``fm`` at ``x (N, ...)`` by a loop of
    forward passes and batched reverse-mode passes (see the module doc).

    cuDNN's recurrent kernels have no backward pass in eval mode ("cudnn RNN backward can only
    be called in training mode"); on that error the loop runs again with cuDNN off, on
    PyTorch's native RNN kernels, which differentiate in either mode (``state`` remembers it).
    """
    state = {} if state is None else state
    if not state.get("cudnn", True):
        with _cudnn(False):
            return _jacobian_loop(fm, x, names, state)
    try:
        return _jacobian_loop(fm, x, names, state)
    except RuntimeError as err:
        if "cudnn RNN backward" not in str(err):
            raise
    state["cudnn"] = False
    with _cudnn(False):
        return _jacobian_loop(fm, x, names, state)


def _jacobian_loop(
    fm: Functional, x: torch.Tensor, names: Sequence[str] | None, state: dict
) -> dict[str, torch.Tensor]:
    names = list(fm.params) if names is None else list(names)
    if not names:
        return {}
    leaves = {n: fm.params[n].detach().requires_grad_(True) for n in names}
    params = {**fm.params, **leaves}
    rows: list[list[torch.Tensor]] = []
    eye = None
    with torch.enable_grad():
        for i in range(x.shape[0]):
            out = fm(params, x[i : i + 1])[0]  # (O,)
            if eye is None:
                eye = torch.eye(out.shape[0], dtype=out.dtype, device=out.device)
            grads = batched_grads(out, list(leaves.values()), eye, state) if out.requires_grad else [None] * len(names)
            rows.append([
                (torch.zeros((eye.shape[0], *p.shape), dtype=p.dtype, device=p.device) if g is None else g.detach())
                for g, p in zip(grads, leaves.values())
            ])
            del out, grads
    return {n: torch.stack([r[k] for r in rows]) for k, n in enumerate(names)}


class AutogradBackend:
    """Blocked-kernel backend: features are per-example Jacobians from plain autograd."""

    name = "autograd"

    def __init__(self, fm: Functional, out_dim: int) -> None:
        self.fm, self.out_dim = fm, out_dim
        self.state: dict = {}

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return per_example_jacobians(self.fm, x, state=self.state)

    def contract(self, f1: dict, f2: dict, mode: str, acc: Accumulator) -> None:
        contract_jacobians(f1, f2, mode, acc)

    def take(self, f: dict, rows: slice) -> dict:
        """The features of the examples ``rows`` (features are per example)."""
        return {k: v[rows] for k, v in f.items()}
