"""Full-batch gradient descent on the cost of CONVENTIONS section 4, with recordings (private API).

``C(f) = (1/(2N)) sum_i ||f(x_i) - y_i||^2`` and ``theta <- theta - eta * grad C``: step ``k`` is
the time ``t = eta * k`` of the gradient flow. The trainer records the network's outputs on the
training and held-out inputs at chosen steps and the cost at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn


@dataclass
class Trajectory:
    """What one training run recorded.

    Attributes:
        steps: ``(T,)`` int64 steps at which outputs were recorded (``0`` is initialization).
        f_train: ``(T, N, O)`` float64 outputs on the training inputs.
        f_test: ``(T, M, O)`` float64 outputs on the held-out inputs (``M = 0`` when none).
        cost: ``(K + 1,)`` float64 cost ``C`` before each step and after the last.
    """

    steps: np.ndarray
    f_train: np.ndarray
    f_test: np.ndarray
    cost: np.ndarray


def cost(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``C = (1/(2N)) sum_i ||f_i - y_i||^2`` for ``f, y`` of shape ``(N, O)``."""
    return 0.5 * ((f - y) ** 2).sum() / f.shape[0]


def train_full_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    learning_rate: float,
    steps: int,
    record_steps: Sequence[int],
    x_test: torch.Tensor | None = None,
    callback: Callable[[int], None] | None = None,
) -> Trajectory:
    """Train ``model`` in place by ``steps`` full-batch gradient-descent steps on ``C``.

    Args:
        model: network mapping ``(N, n0)`` to ``(N, O)``.
        x, y: training inputs ``(N, n0)`` and targets ``(N, O)``.
        learning_rate: the step ``eta``; ``t = eta * k`` after ``k`` steps.
        steps: number of steps ``K``.
        record_steps: steps (``0..K``) at which outputs are recorded.
        x_test: held-out inputs ``(M, n0)`` whose outputs are recorded too.
        callback: called with the step index after each update (a drift tracker's ``step``).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    record = set(int(s) for s in record_steps)
    rec_steps, f_tr, f_te, costs = [], [], [], []
    for k in range(steps + 1):
        out = model(x)
        c = cost(out, y)
        costs.append(float(c.detach()))
        if k in record:
            rec_steps.append(k)
            f_tr.append(out.detach().double().cpu().numpy())
            if x_test is not None:
                with torch.no_grad():
                    f_te.append(model(x_test).double().cpu().numpy())
        if k == steps:
            break
        grads = torch.autograd.grad(c, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(learning_rate * g)
        if callback is not None:
            callback(k + 1)
    n_out = f_tr[0].shape[1] if f_tr else 0
    test = np.stack(f_te) if f_te else np.zeros((len(rec_steps), 0, n_out))
    return Trajectory(np.asarray(rec_steps, dtype=np.int64), np.stack(f_tr), test, np.asarray(costs))
