"""``empirical_ntk``: the finite-width NTK of any PyTorch model (entry point and validation)."""

from __future__ import annotations

import logging
import time
import warnings
from typing import Callable

import torch
from torch import nn

from .._checks import check_batches, check_choice, check_tensor
from ..errors import BudgetWarning, InvalidArgumentError, ShapeError
from . import _cost
from .._memory import format_memory, memory_budget
from .._progress import check_progress
from ._blocks import EFFICIENT_BLOCK, block_bytes, compute_tiled, count_tiles, plan_block
from ._failures import failing_operation, is_capability_error, unsupported
from ._guards import check_finite_model, check_kernel_finite, check_per_example, in_place_error
from ._functional import (OutputSelector, ParamSelector, ids_error, make_functional, model_input,
                          plain_input)
from ._report import EmpiricalNTKReport, Estimate
from ._modes import MODES
from .pseudo import SummedOutput
from .sketch import IMPLEMENTATIONS as SKETCH_IMPLEMENTATIONS
from .sketch import sketched_ntk

IMPLEMENTATIONS = ("auto", "jacobian", "ntvp", "structured", "autograd")
# DEBUG records of the implementation each call runs (what "auto" chose, and any fallback).
_LOG = logging.getLogger("torchntk.empirical")


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
    sketch: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
    return_report: bool = False,
) -> torch.Tensor | dict[str, torch.Tensor] | tuple[torch.Tensor | dict[str, torch.Tensor], EmpiricalNTKReport]:
    """The empirical NTK ``Theta[i, j, a, b] = sum_p df_a(x1_i)/dtheta_p * df_b(x2_j)/dtheta_p``.

    Args:
        model: an ``nn.Module`` mapping a batch ``(N, ...)`` to ``(N, O)`` or ``(N,)`` (``O = 1``),
            or a plain function ``f(params, x)`` of a dict of tensors, with that dict as ``params``.
            The model must be deterministic per example: call ``model.eval()`` when it has
            BatchNorm or Dropout (a forward that mixes the examples of a batch, or is random,
            raises :class:`~torchntk.errors.ModelStateError`), with finite parameters
            (:class:`~torchntk.errors.NonFiniteError` names the first that is not). A
            parameter shared by several modules or uses counts once (its feature is the sum
            of its uses' gradients). The model is never modified. A model returning a dict,
            tuple or output object needs ``output``.
        x1: inputs ``(N1, ...)``: floating point (the dtype of the model's parameters), or
            integer ids (token ids of an embedding); a tensor or a numpy array (floating arrays
            are converted to the model's dtype and device, integer ones to int64 ids).
        x2: inputs ``(N2, ...)`` with the same feature shape; ``None`` computes the symmetric
            ``Theta(x1, x1)`` once (upper tiles, mirrored) and makes it exactly symmetric.
        mode: ``"full"`` -> ``(N1, N2, O, O)``; ``"diagonal"`` -> ``(N1, N2, O)`` (entries
            ``a == b``); ``"mean"`` -> ``(N1, N2)``, ``(1/O) sum_a Theta[i, j, a, a]``;
            ``"pseudo"`` -> ``(N1, N2)``, the pseudo-NTK ``(1/O) sum_ab Theta[i, j, a, b]``, the
            kernel of ``sum_a f_a / sqrt(O)`` at the cost of one output (see
            :mod:`torchntk.empirical.pseudo`).
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
            (units of :mod:`torchntk._memory`). Default when neither is given:
            :func:`torchntk._memory.default_memory`, a quarter of the memory available (RAM, or
            free GPU memory for CUDA inputs) rounded down to a power of two, within
            [512 MiB, 16 GiB]. A budget that forces blocks of fewer than 64 examples warns
            (:class:`~torchntk.errors.BudgetWarning`) with the budget efficient blocks need.
        accumulate_dtype: e.g. ``torch.float64``: cast the features to it before their products
            and accumulate (and return) in it. Default: the model output's dtype.
        sketch: ``None`` (exact) or an even ``k``: an unbiased estimate from the per-example
            gradients projected to ``k`` dimensions (:func:`torchntk.empirical.sketched_ntk`,
            which also returns the estimate's error; relative Frobenius error about
            ``sqrt((1 + effective rank) / k)``, times a factor of the Kronecker projections of
            the structured sketch); ``seed`` fixes the projection; ``implementation`` is
            ``"auto"``, ``"structured"`` (per-layer projections of the factorized gradients)
            or ``"jacobian"`` (count sketches of per-example Jacobians).
        progress: a progress bar over the tiles (tqdm, :mod:`torchntk._progress`): ``None``
            (default) shows it when stderr is a terminal and the call runs over 2 s, ``True``
            always, ``False`` never.
        return_report: also return an
            :class:`~torchntk.empirical.EmpiricalNTKReport`: the implementation that ran and
            why (the cost model's flop and memory estimates, what was left out or failed), the
            blocks, and the budget and estimated peak memory; ``print(report)`` summarizes it.

    Returns:
        A tensor of the shape of ``mode`` (dtype and device of the model output), or a dict of
        such tensors when ``per_layer=True``; with ``return_report=True`` the pair
        ``(kernel, report)``.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
        >>> x = torch.randn(5, 3)
        >>> empirical_ntk(net, x).shape
        torch.Size([5, 5, 2, 2])
        >>> empirical_ntk(net, x, torch.randn(4, 3), mode="mean").shape
        torch.Size([5, 4])
        >>> kernel, report = empirical_ntk(net, x, return_report=True)
        >>> report.implementation, report.block
        ('structured', 5)
    """
    mode = _choice("mode", mode, MODES + ("pseudo",))
    if mode == "pseudo":
        return empirical_ntk(model, x1, x2, mode="mean", implementation=implementation, params=params,
                             output=SummedOutput(output), per_layer=per_layer, block_size=block_size,
                             memory=memory, accumulate_dtype=accumulate_dtype, sketch=sketch, seed=seed,
                             progress=progress, return_report=return_report)
    if sketch is not None:
        if return_report is not False:
            raise InvalidArgumentError(
                "`return_report` is for the exact kernel; with `sketch`, call "
                "torchntk.empirical.sketched_ntk, whose result carries the estimate's error")
        if per_layer or implementation not in SKETCH_IMPLEMENTATIONS:
            raise InvalidArgumentError(
                "`sketch` projects the per-example gradients: it takes implementation='auto', "
                f"'structured' or 'jacobian' and per_layer=False, got implementation={implementation!r}, "
                f"per_layer={per_layer!r}")
        return sketched_ntk(model, x1, x2, k=sketch, seed=seed, mode=mode, params=params, output=output,
                            memory=memory, block_size=block_size, accumulate_dtype=accumulate_dtype,
                            implementation=implementation).kernel
    implementation = _choice("implementation", implementation, IMPLEMENTATIONS)
    for flag, value in (("per_layer", per_layer), ("return_report", return_report)):
        if not isinstance(value, bool):
            raise InvalidArgumentError(f"`{flag}` must be True or False, got {value!r}")
    check_progress(progress)
    fm = make_functional(model, params, output)
    x1, x2 = model_input("x1", x1, fm), model_input("x2", x2, fm)
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
    budget = memory_budget(memory, device=x1.device)
    source = "block_size" if block_size is not None else ("default" if memory is None else "memory")
    x1 = plain_input(x1)
    x2 = None if x2 is None else plain_input(x2)
    start = time.perf_counter()
    try:
        kernel, report = _compute(
            fm, x1, x2, mode, implementation, per_layer, block_size, budget, source, accumulate_dtype, progress
        )
    except IndexError as err:
        explained = ids_error({"x1": x1, "x2": x2}, fm, err)
        if explained is None:
            raise
        raise explained from err
    report.seconds = time.perf_counter() - start
    if _LOG.isEnabledFor(logging.DEBUG):
        _LOG.debug("%s", report)
    return (kernel, report) if return_report else kernel


def _compute(fm, x1, x2, mode, implementation, per_layer, block_size, budget, source, accumulate_dtype,
             progress) -> tuple[torch.Tensor | dict[str, torch.Tensor], EmpiricalNTKReport]:
    """:func:`empirical_ntk` after the argument checks: plan, run, fall back, check."""
    # Derivatives are needed even when the caller is in no_grad or inference mode.
    with torch.inference_mode(False), torch.enable_grad():
        check_finite_model(fm)
        with _cost.planning_threads():
            entry = _cost.entry(fm, x1)  # runs the model on a few examples on a plan-cache miss
            if not entry.per_example:
                check_per_example(fm, x1[:2] if x1.shape[0] > 1 or x2 is None else torch.cat([x1, x2[:1]]))
                entry.per_example = True
        n1 = x1.shape[0]
        n2 = n1 if x2 is None else x2.shape[0]
        left_out: dict[str, str] = {}
        plans, _ = _cost.candidates(
            fm, x1, n2, entry.out_dim, mode, implementation, budget, per_layer, accumulate_dtype, entry, left_out
        )
        estimates = [Estimate(p.backend.name, p.flops, p.min_bytes()) for p in plans]
        failed: dict[str, str] = {}
        for k, plan in enumerate(plans):
            figures = (plan.fixed_bytes, plan.example_bytes, plan.pair_bytes)
            block = plan_block(max(n1, n2), block_size, budget, *figures)
            if block_size is None and block < min(max(n1, n2), EFFICIENT_BLOCK):
                _warn_budget(plan.backend.name, block, budget, max(n1, n2), figures,
                             count_tiles(n1, n2, block, x2 is None))
            try:
                kernel = compute_tiled(plan.backend, x1, x2, mode, per_layer, block, accumulate_dtype, progress)
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
                failed[name] = failing_operation(err)
                warnings.warn(
                    f"empirical_ntk: implementation {name!r} cannot handle this model (it failed at "
                    f"{failed[name]}); using {plans[k + 1].backend.name!r} instead. "
                    "implementation='auto' remembers this for this model.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            check_kernel_finite(kernel, fm, x1, x2)
            report = EmpiricalNTKReport(
                plan.backend.name, implementation, estimates, left_out, failed, n1, n2,
                entry.out_dim, block, count_tiles(n1, n2, block, x2 is None), budget, source,
                block_bytes(block, *figures),
            )
            return kernel, report
        raise AssertionError("unreachable: the last plan returns or raises")  # pragma: no cover


def _warn_budget(name: str, block: int, budget: int, n: int, figures: tuple[float, float, float], tiles: int) -> None:
    """The :class:`~torchntk.errors.BudgetWarning` of a budget that forces tiny blocks."""
    good = min(n, EFFICIENT_BLOCK)
    need, whole = (format_memory(block_bytes(b, *figures), round_up=True) for b in (good, n))
    over = (f" (the kernel alone takes {format_memory(figures[0])}, more than the budget)"
            if figures[0] > budget else "")
    warnings.warn(
        f"empirical_ntk: the memory budget of {format_memory(budget)}{over} allows blocks of only "
        f"{block} example(s) for implementation {name!r}: {tiles} tiles, "
        f"each computing the features of its blocks again, so the call may run many times "
        f"slower than with larger blocks. Blocks of {good} examples need memory={need!r}, one "
        f"block of all {n} examples memory={whole!r}; or pass block_size= to choose the blocks",
        BudgetWarning,
        stacklevel=4,
    )


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
