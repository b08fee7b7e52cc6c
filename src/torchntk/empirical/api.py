"""``empirical_ntk``: the finite-width NTK of any PyTorch model (entry point and validation)."""

from __future__ import annotations

import logging
import warnings
from typing import Callable

import torch
from torch import nn

from .._checks import check_batches, check_choice, check_tensor
from ..errors import InvalidArgumentError, ShapeError
from . import _cost
from .._memory import memory_budget
from ._blocks import compute_tiled, plan_block
from ._failures import failing_operation, is_capability_error, unsupported
from ._guards import check_finite_model, check_kernel_finite, check_per_example, in_place_error
from ._functional import OutputSelector, ParamSelector, ids_error, make_functional, plain_input
from ._modes import MODES

IMPLEMENTATIONS = ("auto", "jacobian", "ntvp", "structured", "autograd")
# DEBUG records of the implementation each call runs (what "auto" chose, and any fallback).
_LOG = logging.getLogger("torchntk.empirical")


def _check_kind(name: str, x: object) -> None:
    """What :func:`check_batches` does not check: data (no meta tensor), real numbers or ids."""
    if not isinstance(x, torch.Tensor):
        return
    if x.device.type == "meta":
        raise InvalidArgumentError(
            f"`{name}` is a meta tensor (shape {tuple(x.shape)}, no data); pass a tensor with values"
        )
    if x.is_complex() or x.dtype == torch.bool:
        raise InvalidArgumentError(
            f"`{name}` must hold real numbers or integer ids (token ids), got dtype {x.dtype}"
        )


def _choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` lower-cased (choices are accepted in any case), checked against ``choices``."""
    return check_choice(name, value.lower() if isinstance(value, str) else value, choices)


def empirical_ntk(
    model: nn.Module | Callable,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    mode: str = "full",
    implementation: str = "auto",
    params: ParamSelector = None,
    output: OutputSelector = None,
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
            BatchNorm or Dropout. A model returning a dict, tuple or output object needs
            ``output``.
        x1: inputs ``(N1, ...)``: floating point (the dtype of the model's parameters), or
            integer ids (token ids of an embedding).
        x2: inputs ``(N2, ...)`` with the same feature shape; ``None`` computes the symmetric
            ``Theta(x1, x1)`` once (upper tiles, mirrored) and makes it exactly symmetric.
        mode: ``"full"`` -> ``(N1, N2, O, O)``; ``"diagonal"`` -> ``(N1, N2, O)`` (entries
            ``a == b``); ``"mean"`` -> ``(N1, N2)``, ``(1/O) sum_a Theta[i, j, a, a]``.
        implementation: ``"jacobian"`` (per-example Jacobians, contracted tensor by tensor),
            ``"ntvp"`` (NTK-vector products, no Jacobian), ``"structured"`` (per-layer
            factorization of Linear/Conv layers, the rest by Jacobians), ``"autograd"`` (a loop
            of per-example reverse-mode passes: needs nothing but autograd, for recurrent
            layers, custom autograd functions, in-place code), or ``"auto"`` (the cheapest by
            the cost model of :mod:`torchntk.empirical._cost` among those that handle the
            model; when one fails at run time it warns once and uses the next). All are exact.
            An explicit implementation that cannot handle the model raises
            :class:`~torchntk.errors.UnsupportedLayerError` naming the failing operation.
        params: for a module: ``None`` (all parameters with ``requires_grad``), a name or list of
            names of parameters or modules (``"4"`` = every parameter of submodule ``4``), or a
            predicate ``(name, param) -> bool``; for a plain function: the dict of parameters.
        output: which tensor of the model's output ``f`` is: ``None`` (the output itself, which
            must be a tensor), a key or attribute name (``"logits"``), an index (``0``), or a
            function of the output (``lambda out: out.logits[:, -1]``). It must give
            ``(N, O)`` or ``(N,)``.
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
    mode = _choice("mode", mode, MODES)
    implementation = _choice("implementation", implementation, IMPLEMENTATIONS)
    _check_kind("x1", x1)
    _check_kind("x2", x2)
    x1, x2 = check_batches(x1, x2)
    if x2 is not None and x2.dtype != x1.dtype:
        raise InvalidArgumentError(
            f"`x2` has dtype {x2.dtype} but `x1` has {x1.dtype}; pass both in the same dtype"
        )
    if accumulate_dtype is not None and not (
        isinstance(accumulate_dtype, torch.dtype) and accumulate_dtype.is_floating_point
    ):
        raise InvalidArgumentError(
            f"`accumulate_dtype` must be a floating torch.dtype such as torch.float64, got {accumulate_dtype!r}"
        )
    if not isinstance(per_layer, bool):
        raise InvalidArgumentError(f"`per_layer` must be True or False, got {per_layer!r}")
    budget = memory_budget(memory)
    fm = make_functional(model, params, output)
    x1 = plain_input(x1)
    x2 = None if x2 is None else plain_input(x2)
    try:
        return _compute(fm, x1, x2, mode, implementation, per_layer, block_size, budget, accumulate_dtype)
    except IndexError as err:
        explained = ids_error({"x1": x1, "x2": x2}, fm, err)
        if explained is None:
            raise
        raise explained from err


def _compute(fm, x1, x2, mode, implementation, per_layer, block_size, budget, accumulate_dtype):
    """:func:`empirical_ntk` after the argument checks: plan, run, fall back, check."""
    # Derivatives are needed even when the caller is in no_grad or inference mode.
    with torch.inference_mode(False), torch.enable_grad():
        check_finite_model(fm)
        entry = _cost.entry(fm, x1)  # runs the model on a few examples on a plan-cache miss
        if not entry.per_example:
            check_per_example(fm, x1[:2] if x1.shape[0] > 1 or x2 is None else torch.cat([x1, x2[:1]]))
            entry.per_example = True
        n2 = x1.shape[0] if x2 is None else x2.shape[0]
        plans, _ = _cost.candidates(
            fm, x1, n2, entry.out_dim, mode, implementation, budget, per_layer, accumulate_dtype, entry
        )
        for k, plan in enumerate(plans):
            block = plan_block(
                max(x1.shape[0], n2), block_size, budget, plan.fixed_bytes, plan.example_bytes, plan.pair_bytes
            )
            if _LOG.isEnabledFor(logging.DEBUG):
                _LOG.debug("empirical_ntk: implementation %r, blocks of %d examples", plan.backend.name, block)
            try:
                kernel = compute_tiled(plan.backend, x1, x2, mode, per_layer, block, accumulate_dtype)
            except Exception as err:
                if not is_capability_error(err):
                    raise
                stop = in_place_error(fm, x1, err)
                if stop is not None:
                    raise stop from err
                name = plan.backend.name
                if implementation != "auto" or k + 1 == len(plans):
                    raise unsupported(name, err) from err
                entry.failed.add(name)
                warnings.warn(
                    f"empirical_ntk: implementation {name!r} cannot handle this model (it failed at "
                    f"{failing_operation(err)}); using {plans[k + 1].backend.name!r} instead. "
                    "implementation='auto' remembers this for this model.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            check_kernel_finite(kernel, fm, x1, x2)
            return kernel
        raise AssertionError("unreachable: the last plan returns or raises")  # pragma: no cover


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
