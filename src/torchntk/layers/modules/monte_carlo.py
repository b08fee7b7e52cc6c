"""Monte Carlo NNGP and NTK: averages of finite networks over random initializations.

For ``n`` independent draws ``theta_1..theta_n`` of a network's parameters,

    NNGP_hat[i, j, a, b] = (1/n) sum_s f_a(x1_i; theta_s) f_b(x2_j; theta_s)
    NTK_hat[i, j, a, b]  = (1/n) sum_s Theta_emp(x1_i, x2_j; theta_s)[a, b]

(``Theta_emp`` by :func:`torchntk.empirical_ntk`), reduced over the outputs as ``mode`` says:
``"full"`` ``(N1, N2, O, O)``, ``"diagonal"`` ``(N1, N2, O)``, ``"mean"`` ``(N1, N2)`` (the mean of
the ``a = b`` entries: the estimate of the scalar infinite-width kernel of a spec). The sums are
accumulated in float64.

This works for *any* module, so it is also the fallback for layers without an infinite-width
rule in :mod:`torchntk.layers` (``nn.MaxPool2d``, ``nn.BatchNorm2d`` in eval mode, attention...):
write a module factory and average. The error falls as ``n^(-1/2)`` (draws) and, against the
infinite-width kernel, as ``width^(-1/2)``.

Example:
    >>> from torchntk import layers as L
    >>> spec = L.serial(L.Dense(256), L.Relu(), L.Dense(1))
    >>> x = torch.randn(4, 3, dtype=torch.float64)
    >>> est = L.monte_carlo_kernel(spec, x, n_samples=8, seed=0)
    >>> est.nngp.shape, est.ntk.shape, est.n_samples
    (torch.Size([4, 4]), torch.Size([4, 4]), 8)
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Union

import torch
from torch import nn

from ..._checks import check_batches, check_choice, check_int
from ...empirical import empirical_ntk
from ...empirical._modes import MODES
from ...errors import InvalidArgumentError, ShapeError
from .. import _side
from .._core.protocol import Layer

__all__ = ["MonteCarloKernel", "monte_carlo_kernel", "monte_carlo_kernels"]

Factory = Union[Layer, Callable[..., nn.Module]]


@dataclass
class MonteCarloKernel:
    """A Monte Carlo estimate of the NNGP and NTK after ``n_samples`` draws.

    Attributes:
        nngp: the mean output covariance, shape by ``mode`` (``None`` if not requested).
        ntk: the mean empirical NTK, same shape (``None`` if not requested).
        n_samples: number of initializations averaged.
    """

    nngp: torch.Tensor | None
    ntk: torch.Tensor | None
    n_samples: int


def _builder(factory: Factory, x: torch.Tensor, dtype: torch.dtype) -> Callable[[torch.Generator], nn.Module]:
    """A function ``generator -> fresh module`` for a spec or a user factory."""
    if isinstance(factory, Layer):
        shape = tuple(x.shape[1:])

        def build(g: torch.Generator) -> nn.Module:
            return factory.module(shape, generator=g, dtype=dtype, device=x.device)

        return build
    if isinstance(factory, nn.Module) or not callable(factory):
        raise InvalidArgumentError(
            "`model_factory` must be a torchntk.layers spec or a callable returning a fresh "
            f"nn.Module (one new initialization per call), got {type(factory).__name__}"
        )
    try:
        params = inspect.signature(factory).parameters.values()
        takes_generator = any(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params
        )
    except (TypeError, ValueError):  # builtins without a signature
        takes_generator = False

    def build(g: torch.Generator) -> nn.Module:
        if takes_generator:
            module = factory(g)
        else:  # seed torch's global RNG from `g`, without disturbing the caller's stream
            seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device))
            devices = [x.device] if x.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                module = factory()
        if not isinstance(module, nn.Module):
            raise InvalidArgumentError(
                f"`model_factory` must return an nn.Module, got {type(module).__name__}"
            )
        return module.to(device=x.device)

    return build


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != x.shape[0]:
        raise ShapeError(
            f"the model must map a batch of {x.shape[0]} inputs to (N, O) or (N,) outputs, got "
            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}"
        )
    return out.reshape(out.shape[0], -1).to(torch.float64)


class _WithMask(nn.Module):
    """``model(x, mask=m)`` as a one-argument module of ``z = [x, m]``: the padding mask rides
    along as a last channel (1 = padding), so that every empirical-NTK implementation, which
    calls the model on rows of its input, sees each row with its own mask (and ``pattern``,
    when given, is passed on)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor, pattern: torch.Tensor | None = None) -> torch.Tensor:
        mask = z[:, -1] > 0.5
        if pattern is None:
            return self.model(_side.zero_masked(z[:, :-1], mask), mask=mask)
        return self.model(_side.zero_masked(z[:, :-1], mask), mask=mask, pattern=pattern)


class _WithPattern(nn.Module):
    """``model(x, pattern=p)`` as a one-argument module of the rows ``z = [x.flatten(1),
    p.flatten(1)]``: the graph pattern (dense weights, or edge indices held exactly as floats)
    rides along with each example, as the mask does."""

    def __init__(self, model: nn.Module, x_shape: tuple[int, ...], p_shape: tuple[int, ...], p_dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.x_shape, self.p_shape, self.p_dtype = model, x_shape, p_shape, p_dtype

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n = math.prod(self.x_shape)
        x = z[:, :n].reshape(z.shape[0], *self.x_shape)
        p = z[:, n:].reshape(z.shape[0], *self.p_shape)
        p = p if self.p_dtype.is_floating_point else p.round().to(self.p_dtype)
        return self.model(x, pattern=p)


def _with_pattern(x: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """The rows ``[x.flatten(1), pattern.flatten(1)]`` in ``x``'s dtype."""
    if not pattern.is_floating_point() and x.dtype != torch.float64 and pattern.numel() and int(pattern.abs().max()) > 2**24:
        raise InvalidArgumentError("`pattern`: node indices above 2^24 need float64 inputs to ride along exactly")
    return torch.cat([x.flatten(1), pattern.flatten(1).to(x.dtype)], 1)


def _with_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x (N, C, *spatial)`` with the mask ``(N, *spatial)`` as one more channel (0 without one)."""
    extra = torch.zeros_like(x[:, :1]) if mask is None else mask.unsqueeze(1).to(x.dtype)
    return torch.cat([x, extra], 1)


def _output_products(f1: torch.Tensor, f2: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "full":
        return torch.einsum("ia,jb->ijab", f1, f2)
    if mode == "diagonal":
        return torch.einsum("ia,ja->ija", f1, f2)
    return f1 @ f2.T / f1.shape[1]


def monte_carlo_kernels(
    model_factory: Factory,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    n_samples: int,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    mode: str = "mean",
    nngp: bool = True,
    ntk: bool = True,
    eval_mode: bool = True,
    mask: Any = None,
    pattern: Any = None,
    **ntk_options: Any,
) -> Iterator[MonteCarloKernel]:
    """Yield the running Monte Carlo estimate after each of ``n_samples`` initializations.

    Same arguments as :func:`monte_carlo_kernel`; the ``s``-th item averages the first ``s``
    draws (its tensors are fresh float64 tensors, safe to keep), so the items trace the
    convergence of the estimate.

    Example:
        >>> from torchntk import layers as L
        >>> spec = L.serial(L.Dense(128), L.Erf(), L.Dense(1))
        >>> x = torch.randn(3, 2, dtype=torch.float64)
        >>> exact = spec.kernel(x).ntk
        >>> errors = [float((e.ntk - exact).norm() / exact.norm())
        ...           for e in L.monte_carlo_kernels(spec, x, n_samples=4, seed=0)]
    """
    x1, x2 = check_batches(x1, x2)
    mode = check_choice("mode", mode, MODES, any_case=True)
    n_samples = check_int("n_samples", n_samples, minimum=1)
    if not (nngp or ntk):
        raise InvalidArgumentError("nothing to estimate: `nngp` and `ntk` are both False")
    if generator is not None and seed is not None:
        raise InvalidArgumentError("give either `seed` or `generator`, not both")
    if generator is None:
        generator = torch.Generator(device=x1.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed))
    elif not isinstance(generator, torch.Generator):
        raise InvalidArgumentError(f"`generator` must be a torch.Generator, got {type(generator).__name__}")
    dtype = x1.dtype if x1.is_floating_point() else torch.get_default_dtype()
    build = _builder(model_factory, x1, dtype)
    m1, m2 = _side.side_pair("mask", mask, x1, x2, _side.check_mask)
    if m1 is not None or m2 is not None:
        if not x1.is_floating_point():
            raise InvalidArgumentError(f"`mask` goes with floating inputs, got `x1` of {x1.dtype}")
        unmasked = build

        def build(g: torch.Generator) -> nn.Module:
            return _WithMask(unmasked(g))

        x1 = _with_mask(x1, m1)
        x2 = None if x2 is None else _with_mask(x2, m2)
    p1, p2 = _side.side_pair("pattern", pattern, x1, x2, _side.check_pattern)
    if p1 is not None or p2 is not None:
        if p1 is None or (x2 is not None and p2 is None):
            raise InvalidArgumentError("`pattern`: give the graph pattern of every batch, (p1, p2), or p1 when `x2` is None")
        if p2 is not None and p2.shape[1:] != p1.shape[1:]:
            raise InvalidArgumentError(
                f"`pattern`: both batches' patterns must have the same per-sample shape (pad sparse edge lists with -1), "
                f"got {tuple(p1.shape[1:])} and {tuple(p2.shape[1:])}"
            )
        if not x1.is_floating_point():
            raise InvalidArgumentError(f"`pattern` goes with floating inputs, got `x1` of {x1.dtype}")
        inner, shape = build, tuple(x1.shape[1:])

        def build(g: torch.Generator) -> nn.Module:
            return _WithPattern(inner(g), shape, tuple(p1.shape[1:]), p1.dtype)

        x1 = _with_pattern(x1, p1)
        x2 = None if x2 is None else _with_pattern(x2, p2)
    return _iterate(build, x1, x2, n_samples, generator, mode, nngp, ntk, eval_mode, ntk_options)


def _iterate(
    build: Callable[[torch.Generator], nn.Module],
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    n_samples: int,
    generator: torch.Generator,
    mode: str,
    nngp: bool,
    ntk: bool,
    eval_mode: bool,
    ntk_options: dict[str, Any],
) -> Iterator[MonteCarloKernel]:
    xb = x1 if x2 is None else x2
    sum_nngp: torch.Tensor | None = None
    sum_ntk: torch.Tensor | None = None
    for s in range(1, n_samples + 1):
        model = build(generator)
        if eval_mode:
            model.eval()
        if nngp:
            f1 = _outputs(model, x1)
            f2 = f1 if x2 is None else _outputs(model, xb)
            term = _output_products(f1, f2, mode)
            sum_nngp = term if sum_nngp is None else sum_nngp + term
        if ntk:
            theta = empirical_ntk(model, x1, x2, mode=mode, **ntk_options).to(torch.float64)
            sum_ntk = theta if sum_ntk is None else sum_ntk + theta
        yield MonteCarloKernel(
            nngp=None if sum_nngp is None else sum_nngp / s,
            ntk=None if sum_ntk is None else sum_ntk / s,
            n_samples=s,
        )


def monte_carlo_kernel(
    model_factory: Factory,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    n_samples: int,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    mode: str = "mean",
    nngp: bool = True,
    ntk: bool = True,
    eval_mode: bool = True,
    mask: Any = None,
    pattern: Any = None,
    **ntk_options: Any,
) -> MonteCarloKernel:
    """Average empirical NNGP and NTK of ``n_samples`` random initializations (float64).

    Args:
        model_factory: a :mod:`torchntk.layers` spec (its ``spec.module(x1.shape[1:])``, with
            parameters of ``x1``'s dtype and device), or a callable returning a freshly
            initialized ``nn.Module`` on each call: ``factory(generator)`` if it takes an
            argument, else ``factory()`` with torch's global RNG seeded from ``generator``
            (the caller's RNG state is restored). Any module works, which makes this the
            fallback for layers without an infinite-width rule (MaxPool, BatchNorm...).
        x1: inputs ``(N1, ...)``; x2: ``(N2, ...)`` or ``None`` for ``x1``.
        n_samples: number of initializations.
        seed, generator: reproducibility (one of them; a random seed if neither).
        mode: ``"mean"`` (default, ``(N1, N2)``), ``"diagonal"`` (``(N1, N2, O)``) or ``"full"``
            (``(N1, N2, O, O)``), for both kernels (CONVENTIONS section 3).
        nngp, ntk: which kernels to estimate.
        eval_mode: call ``model.eval()`` before use (default; BatchNorm then uses its running
            statistics and Dropout is off, so each example's output is its own).
        mask: padding masks as in ``spec.kernel``: ``(m1, m2)`` boolean ``(N1, *spatial)`` /
            ``(N2, *spatial)``, True at padding (``m2`` None when ``x2`` is; one tensor then;
            ``None`` for a batch without padding). Masked input positions are set to 0 and
            each model is called as ``model(x, mask=m)`` (as the modules of ``spec.module``
            take it), so the estimate converges to ``spec.kernel(x1, x2, mask=...)``. The
            model is then wrapped: names in ``params=`` take the prefix ``"model."``.
        pattern: graph patterns as in ``spec.kernel``: ``(p1, p2)``, dense floating
            ``(N, V, V)`` or sparse integer ``(N, E, 2)`` (the same kind, and the same ``E``, for
            both), or one tensor when ``x2`` is None; each model is called as
            ``model(x, pattern=p)`` (as the modules of ``spec.module`` take it), so the estimate
            converges to ``spec.kernel(x1, x2, pattern=...)``. The model is then wrapped:
            names in ``params=`` take one more prefix ``"model."``.
        **ntk_options: passed to :func:`torchntk.empirical_ntk` (``implementation``,
            ``params``, ``block_size``, ``memory``...).

    Returns:
        :class:`MonteCarloKernel` with ``nngp``, ``ntk`` (float64) and ``n_samples``.

    Example:
        >>> net = lambda: torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
        >>> est = monte_carlo_kernel(net, torch.randn(5, 3), n_samples=4, seed=0, mode="full")
        >>> est.ntk.shape
        torch.Size([5, 5, 2, 2])
    """
    last: MonteCarloKernel | None = None
    for last in monte_carlo_kernels(
        model_factory, x1, x2, n_samples=n_samples, seed=seed, generator=generator, mode=mode,
        nngp=nngp, ntk=ntk, eval_mode=eval_mode, mask=mask, pattern=pattern, **ntk_options,
    ):
        pass
    assert last is not None
    return last
