"""How many features: the approximation error for ``m``, estimated and measured.

Error measure: the relative Frobenius error of the feature kernel on a set of inputs,

    err = ||Phi Phi^T - K||_F / ||K||_F        (K = spec.kernel(x).nngp or .ntk)

**Estimate.** One random layer of ``m`` features estimates every entry by an average of ``m``
products ``a(u) a(v)``, whose variance is about ``q11 q22 + q12^2`` (exact for a linear
activation, within a small factor for the others). Summed over the entries this gives

    err(m)  ~  C sqrt((1 + r^2) / m),      r = tr(K) / ||K||_F,

where ``r^2`` is the *effective rank* of ``K`` (about 1 for deep ReLU kernels, which are
dominated by a near-constant component; up to ``N`` for a nearly diagonal kernel, where the
error then grows like ``sqrt(N / m)``) and ``C`` collects the activation's fourth moments and
the compounding over layers: between 0.5 and 2 for the networks of ``docs/features.md``
(ReLU depth 4, Erf depth 3, a CNN), larger for deeper nets. :func:`expected_error` evaluates
it with ``C = 2`` (a cautious value).

**Measurement.** :func:`measure_error` computes the exact kernel on a subsample (``n_sample``
rows: cost ``n_sample^2``) and the error of the map there; :meth:`FeatureError.n_features_for`
extrapolates by the ``m^(-1/2)`` law (checked by the tests between ``m = 1024`` and ``16384``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InvalidArgumentError
from .map import FeatureMap

__all__ = ["FeatureError", "measure_error", "expected_error", "relative_error"]


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """``||approx - exact||_F / ||exact||_F``."""
    exact = exact.to(torch.float64)
    return float(torch.linalg.norm(approx.to(torch.float64) - exact) / torch.linalg.norm(exact))


@dataclass(frozen=True)
class FeatureError:
    """Relative Frobenius errors of a feature map on a subsample (``ntk`` None: no NTK)."""

    nngp: float
    ntk: float | None
    n_features: int
    n_sample: int

    def n_features_for(self, target: float, kind: str = "ntk") -> int:
        """The ``m`` expected to reach ``target`` error: ``m (err / target)^2`` (the ``m^-1/2`` law)."""
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not target > 0:
            raise InvalidArgumentError(f"`target` must be a number > 0, got {target!r}")
        err = self.ntk if kind == "ntk" else self.nngp
        if err is None:
            raise InvalidArgumentError("this map has no NTK features; use kind='nngp'")
        return max(2, math.ceil(self.n_features * (err / target) ** 2))


def measure_error(fm: FeatureMap, x: Any, *, n_sample: int = 256, seed: int = 0) -> FeatureError:
    """The errors of ``fm`` on ``n_sample`` rows of ``x`` drawn at random (all rows if fewer).

    Costs the exact kernel of the subsample (``spec.kernel``) and its features.

    Example:
        >>> from torchntk import layers as L
        >>> spec = L.serial(L.Dense(64, b_std=0.1), L.Relu(), L.Dense(1, b_std=0.1))
        >>> e = measure_error(FeatureMap(spec, 512), torch.randn(100, 4), n_sample=50)
        >>> e.ntk < 0.5
        True
    """
    if not isinstance(fm, FeatureMap):
        raise InvalidArgumentError(f"`fm` must be a FeatureMap, got {type(fm).__name__}")
    if isinstance(n_sample, bool) or not isinstance(n_sample, int) or n_sample < 2:
        raise InvalidArgumentError(f"`n_sample` must be an int >= 2, got {n_sample!r}")
    x = fm._check(x)
    if x.shape[0] > n_sample:
        gen = torch.Generator().manual_seed(int(seed))
        x = x[torch.randperm(x.shape[0], generator=gen)[:n_sample].to(x.device)]
    k = fm.spec.kernel(x)
    f = fm(x)
    ntk = None
    if f.ntk is not None and k.ntk is not None:
        ntk = relative_error(f.ntk @ f.ntk.T, k.ntk)
    return FeatureError(relative_error(f.nngp @ f.nngp.T, k.nngp), ntk, fm.n_features, int(x.shape[0]))


def expected_error(kernel: torch.Tensor, n_features: int, *, constant: float = 2.0) -> float:
    """The estimate ``C sqrt((1 + r^2) / m)`` with ``r = tr(K) / ||K||_F`` of a kernel sample."""
    if not isinstance(kernel, torch.Tensor) or kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise InvalidArgumentError("`kernel` must be a square (N, N) kernel tensor of a sample of inputs")
    if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
        raise InvalidArgumentError(f"`n_features` must be a positive int, got {n_features!r}")
    k = kernel.to(torch.float64)
    r = float(torch.diagonal(k).sum() / torch.linalg.norm(k))
    return constant * math.sqrt((1.0 + r * r) / n_features)
