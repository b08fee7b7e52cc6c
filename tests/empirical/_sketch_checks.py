"""The statistical checks of a sketched kernel, shared by the tests of both projections."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def check_unbiased(estimate: Callable[[int], torch.Tensor], exact: torch.Tensor, seeds: int = 40) -> None:
    """``estimate(seed)`` is unbiased: the mean of ``seeds`` independent estimates has an error
    that falls like ``1/sqrt(seeds)`` (2x margin)."""
    ests = [estimate(s) for s in range(seeds)]
    single = np.mean([rel(e, exact) for e in ests])
    assert rel(torch.stack(ests).mean(0), exact) < 2 * single / math.sqrt(seeds)


def check_error_law(estimate: Callable[[int, int], object], exact: torch.Tensor, ks=(256, 1024, 4096),
                    seeds: int = 3) -> None:
    """``estimate(k, seed)`` (a :class:`~torchntk.empirical.SketchedKernel`) has an error falling
    like ``k^(-1/2)`` (fitted slope in [-0.65, -0.35]) and an error estimate of the right size
    (within 2x: it is itself a random number)."""
    errs, estimates = [], []
    for k in ks:
        e = [estimate(k, s) for s in range(seeds)]
        errs.append(np.mean([rel(s.kernel, exact) for s in e]))
        estimates.append(np.mean([s.error for s in e]))
    slope = np.polyfit(np.log(ks), np.log(errs), 1)[0]
    assert -0.65 <= slope <= -0.35, (errs, slope)
    assert all(0.5 < est / err < 2.0 for est, err in zip(estimates, errs)), (estimates, errs)
