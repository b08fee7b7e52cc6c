"""``empirical_ntk``: the finite-width NTK of any PyTorch model (entry point and validation)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .._checks import check_batches, check_choice, check_tensor
from ..errors import InvalidArgumentError, ShapeError
from . import _cost
from .._memory import memory_budget
from ._blocks import compute_tiled, plan_block
from ._functional import ParamSelector, make_functional
from ._modes import MODES

IMPLEMENTATIONS = ("auto", "jacobian", "ntvp", "structured")


def empirical_ntk(
    model: nn.Module | Callable,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    mode: str = "full",
    implementation: str = "auto",
    params: ParamSelector = None,
    per_layer: bool = False,
    block_size: int | None = None,
    memory: int | float | str | None = None,
    accumulate_dtype: torch.dtype | None = None,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The empirical NTK ``Theta[i, j, a, b] = sum_p df_a(x1_i)/dtheta_p * df_b(x2_j)/dtheta_p``.

    Args:
        model: an ``nn.Module`` mapping a batch ``(N, ...)`` to ``(N, O)`` or ``(N,)`` (``O = 1``),
            or a plain function ``f(params, x)`` of a dict of tensors, with that dict as ``params``.
            The model must be deterministic per example: call ``model.eval()`` when it has
            BatchNorm or Dropout.
        x1: inputs ``(N1, ...)``.
        x2: inputs ``(N2, ...)`` with the same feature shape; ``None`` computes the symmetric
            ``Theta(x1, x1)`` once (upper tiles, mirrored) and makes it exactly symmetric.
        mode: ``"full"`` -> ``(N1, N2, O, O)``; ``"diagonal"`` -> ``(N1, N2, O)`` (entries
            ``a == b``); ``"mean"`` -> ``(N1, N2)``, ``(1/O) sum_a Theta[i, j, a, a]``.
        implementation: ``"jacobian"`` (per-example Jacobians, contracted tensor by tensor),
            ``"ntvp"`` (NTK-vector products, no Jacobian), ``"structured"`` (per-layer
            factorization of Linear/Conv layers, the rest by Jacobians), or ``"auto"`` (the
            cheapest by the cost model of :mod:`torchntk.empirical._cost`). All are exact.
        params: for a module: ``None`` (all parameters with ``requires_grad``), a name or list of
            names of parameters or modules (``"4"`` = every parameter of submodule ``4``), or a
            predicate ``(name, param) -> bool``; for a plain function: the dict of parameters.
        per_layer: return ``{parameter name: part}`` whose values sum to the kernel.
        block_size: tile the kernel in blocks of this many examples (bounds peak memory).
        memory: a peak-memory budget for the tiling, in bytes or as ``"2GiB"``, ``"500MB"``
            (units of :mod:`torchntk._memory`; default when neither is given: 2 GiB).
        accumulate_dtype: e.g. ``torch.float64``: cast the features to it before their products
            and accumulate (and return) in it. Default: the model output's dtype.

    Returns:
        A tensor of the shape of ``mode`` (dtype and device of the model output), or a dict of
        such tensors when ``per_layer=True``.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
        >>> x = torch.randn(5, 3)
        >>> empirical_ntk(net, x).shape
        torch.Size([5, 5, 2, 2])
        >>> empirical_ntk(net, x, torch.randn(4, 3), mode="mean").shape
        torch.Size([5, 4])
    """
    check_choice("mode", mode, MODES)
    check_choice("implementation", implementation, IMPLEMENTATIONS)
    x1, x2 = check_batches(x1, x2)
    if accumulate_dtype is not None and not (
        isinstance(accumulate_dtype, torch.dtype) and accumulate_dtype.is_floating_point
    ):
        raise InvalidArgumentError(
            f"`accumulate_dtype` must be a floating torch.dtype such as torch.float64, got {accumulate_dtype!r}"
        )
    if not isinstance(per_layer, bool):
        raise InvalidArgumentError(f"`per_layer` must be True or False, got {per_layer!r}")
    budget = memory_budget(memory)
    # Derivatives are needed even when the caller is in no_grad or inference mode.
    with torch.inference_mode(False), torch.enable_grad():
        fm = make_functional(model, params)
        x1 = _plain(x1)
        x2 = None if x2 is None else _plain(x2)
        out_dim = fm.probe(x1)
        n2 = x1.shape[0] if x2 is None else x2.shape[0]
        plan = _cost.plan(fm, x1, n2, out_dim, mode, implementation, budget, per_layer, accumulate_dtype)
        block = plan_block(
            max(x1.shape[0], n2), block_size, budget, plan.fixed_bytes, plan.example_bytes, plan.pair_bytes
        )
        return compute_tiled(plan.backend, x1, x2, mode, per_layer, block, accumulate_dtype)


def _plain(x: torch.Tensor) -> torch.Tensor:
    """``x`` detached, and copied out of inference mode if it was created there."""
    x = x.detach()
    return x.clone() if x.is_inference() else x


def flatten_kernel(theta: torch.Tensor) -> torch.Tensor:
    """A ``"full"`` kernel ``(N1, N2, O, O)`` as the 2-D matrix ``(N1*O, N2*O)``, row ``i*O + a``.

    Example:
        >>> flatten_kernel(torch.zeros(3, 4, 2, 2)).shape
        torch.Size([6, 8])
    """
    theta = check_tensor("theta", theta)
    if theta.ndim != 4 or theta.shape[2] != theta.shape[3]:
        raise ShapeError(f"`theta` must be a 'full' kernel (N1, N2, O, O), got {tuple(theta.shape)}")
    n1, n2, o, _ = theta.shape
    return theta.permute(0, 2, 1, 3).reshape(n1 * o, n2 * o)
