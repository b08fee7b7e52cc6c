"""Monte Carlo over real finite MLPs, many networks at once (batched matrix products).

Each network is the one ``spec.module`` builds (NTK parameterization, standard-normal ``W``
and ``b``): ``z^(l) = sqrt(C_W / n_{l-1}) W^(l) a^(l-1) + sqrt(C_b) b^(l)``. Its output unit 0
and diagonal NTK follow from one forward and one backward pass,

    Theta(x, x) = sum_l G^(l) ||delta^(l)||^2,   G^(l) = C_b + C_W ||a^(l-1)||^2 / n_{l-1},
    delta^(L) = 1,   delta^(l) = sqrt(C_W / n_l) (W^(l+1)T delta^(l+1)) * phi'(z^(l)),

(the gradient of ``f`` with respect to ``W^(l)_ij`` is ``delta_i sqrt(C_W/n) a_j``, to ``b^(l)_i``
it is ``delta_i sqrt(C_b)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import layers
from .._checks import check_finite, check_nonempty_batch, check_tensor
from ..errors import InvalidArgumentError, ShapeError
from ..layers.activations._quadrature import _eval  # private import of the layers
from ._spec import MLPLayout, read_mlp

__all__ = ["MonteCarloMoments", "monte_carlo_moments", "sample_networks"]

#: Weight entries drawn at once (networks per chunk = this / the largest layer).
_CHUNK_ENTRIES = 1 << 22


def draw_params(layout: MLPLayout, n0: int, samples: int, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Standard-normal ``(W, b)`` of ``samples`` networks: ``W (S, n_out, n_in)``, ``b (S, n_out)``
    (the readout has one unit)."""
    dims = (n0, *layout.widths, 1)
    out = []
    for i in range(layout.depth):
        w = torch.randn(samples, dims[i + 1], dims[i], generator=generator, dtype=torch.float64)
        b = torch.randn(samples, dims[i + 1], generator=generator, dtype=torch.float64)
        out.append((w, b))
    return out


def forward_backward(
    layout: MLPLayout, params: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f, Theta, G)``: output unit 0, its diagonal NTK ``Theta(x_i, x_i)`` and the readout's
    stochastic kernel ``G^(L)`` (the variance of ``f`` given the last hidden layer), each ``(S, N)``."""
    a = x.to(torch.float64).expand(params[0][0].shape[0], *x.shape)
    kernels, slopes, weights = [], [], []
    for l, (w, b) in enumerate(params):
        cw, cb = layout.cw[l], layout.cb[l]
        n_in = a.shape[-1]
        kernels.append(cb + cw * (a * a).sum(-1) / n_in)
        z = math.sqrt(cw / n_in) * torch.bmm(a, w.transpose(1, 2)) + math.sqrt(cb) * b[:, None, :]
        weights.append(math.sqrt(cw / n_in) * w)
        if l < len(layout.activations):
            a, da = _eval(layout.activations[l].fn, z, True)
            slopes.append(da)
    f = z[..., 0]
    delta = torch.ones_like(z)
    theta = kernels[-1] * (delta * delta).sum(-1)
    for l in range(layout.depth - 2, -1, -1):
        delta = torch.bmm(delta, weights[l + 1]) * slopes[l]
        theta = theta + kernels[l] * (delta * delta).sum(-1)
    return f, theta, kernels[-1]


def sample_networks(
    spec: layers.Layer,
    x: torch.Tensor,
    samples: int,
    *,
    width: int | Sequence[int] | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outputs and diagonal NTKs of ``samples`` independent finite networks of ``spec``.

    Args:
        spec, width: as :func:`~torchntk.finite.corrections`.
        x: inputs ``(N, n_0)``.
        samples: number of networks; seed: of the ``torch.Generator`` of the draws.

    Returns:
        ``(f, theta, G)``, float64 ``(samples, N)``: output unit 0, ``Theta(x_i, x_i)`` and the
        readout's stochastic kernel ``G^(L)`` (see :func:`forward_backward`).
    """
    x = check_finite("x", check_nonempty_batch("x", check_tensor("x", x)))
    if x.ndim != 2:
        raise ShapeError(f"`x` must be (N, features) for an MLP spec, got shape {tuple(x.shape)}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise InvalidArgumentError(f"`samples` must be an int >= 2, got {samples!r}")
    layout = read_mlp(spec, width)
    gen = torch.Generator().manual_seed(int(seed))
    biggest = max(a * b for a, b in zip((x.shape[1], *layout.widths), (*layout.widths, 1)))
    chunk = max(1, _CHUNK_ENTRIES // biggest)
    parts = []
    for start in range(0, samples, chunk):
        params = draw_params(layout, x.shape[1], min(chunk, samples - start), gen)
        parts.append(forward_backward(layout, params, x))
    return tuple(torch.cat(p) for p in zip(*parts))


@dataclass(frozen=True)
class MonteCarloMoments:
    """Monte Carlo estimates (``(N,)`` float64) and their standard errors (``*_se``, by the
    delta method on the sample moments) of the quantities of :class:`~torchntk.finite.Corrections`.

    Given the last hidden layer the output is exactly ``N(0, G^(L))``, so ``E[f^2] = E[G^(L)]`` and
    ``E[f^4] - 3 E[f^2]^2 = 3 Var[G^(L)]``: ``nngp_mean`` and ``nngp_cumulant4`` average ``G^(L)``
    over the networks (the readout weights integrated exactly), which has a far smaller error
    than the raw ``f^4``. The raw estimates are ``nngp_mean_raw`` and ``nngp_cumulant4_raw``.
    """

    samples: int
    nngp_mean: torch.Tensor
    nngp_mean_se: torch.Tensor
    nngp_cumulant4: torch.Tensor
    nngp_cumulant4_se: torch.Tensor
    ntk_mean: torch.Tensor
    ntk_mean_se: torch.Tensor
    ntk_variance: torch.Tensor
    ntk_variance_se: torch.Tensor
    nngp_mean_raw: torch.Tensor
    nngp_cumulant4_raw: torch.Tensor
    nngp_cumulant4_raw_se: torch.Tensor


def _moment_and_se(u: torch.Tensor, v: torch.Tensor, du: torch.Tensor, dv: float) -> torch.Tensor:
    """Standard error of a smooth function of ``(mean u, mean v)`` with gradient ``(du, dv)``."""
    cu, cv = u - u.mean(0), v - v.mean(0)
    var = (du * du * (cu * cu).mean(0) + 2 * du * dv * (cu * cv).mean(0) + dv * dv * (cv * cv).mean(0))
    return torch.sqrt(var / (u.shape[0] - 1))


def summarize(f: torch.Tensor, theta: torch.Tensor, kernel: torch.Tensor) -> MonteCarloMoments:
    """The moments of samples ``(S, N)`` of outputs, diagonal NTKs and readout kernels ``G^(L)``."""
    s = f.shape[0]
    f2 = f * f
    m2, m4 = f2.mean(0), (f2 * f2).mean(0)
    gm = kernel.mean(0)
    tm = theta.mean(0)
    return MonteCarloMoments(
        samples=s,
        nngp_mean=gm,
        nngp_mean_se=kernel.std(0) / math.sqrt(s),
        nngp_cumulant4=3 * kernel.var(0),
        nngp_cumulant4_se=3 * _moment_and_se(kernel, kernel * kernel, -2 * gm, 1.0),
        ntk_mean=tm,
        ntk_mean_se=theta.std(0) / math.sqrt(s),
        ntk_variance=theta.var(0),
        ntk_variance_se=_moment_and_se(theta, theta * theta, -2 * tm, 1.0),
        nngp_mean_raw=m2,
        nngp_cumulant4_raw=m4 - 3 * m2 * m2,
        nngp_cumulant4_raw_se=_moment_and_se(f2, f2 * f2, -6 * m2, 1.0),
    )


def monte_carlo_moments(
    spec: layers.Layer,
    x: torch.Tensor,
    samples: int,
    *,
    width: int | Sequence[int] | None = None,
    seed: int = 0,
) -> MonteCarloMoments:
    """Monte Carlo moments over ``samples`` finite networks (see :func:`sample_networks`)."""
    return summarize(*sample_networks(spec, x, samples, width=width, seed=seed))
