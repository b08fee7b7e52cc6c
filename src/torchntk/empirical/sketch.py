"""Sketched empirical NTK: random projections of the per-example gradients to ``k`` dimensions.

For every example ``x_i`` and output ``a`` the gradient ``g_ia = d f_a(x_i) / d theta`` (``P``
numbers) is projected to ``k`` numbers by two independent count sketches of ``k / 2`` buckets
each, one after the other:

    phi_ia = [ S_1 g_ia, S_2 g_ia ] / sqrt(2),     (S g)_c = sum_{p : h(p) = c} s(p) g_p

with, per sketch, a bucket ``h(p)`` uniform in ``{0, ..., k/2 - 1}`` and a sign ``s(p) = +-1``
drawn for every parameter entry. Then ``E[<phi_ia, phi_jb>] = <g_ia, g_jb> = Theta[i, j, a, b]``
exactly (unbiased), and the variance of each entry is at most ``(Theta_ia,ia Theta_jb,jb +
Theta_ia,jb^2) / k`` (that of a dense Gaussian projection), so the relative Frobenius error is
about ``sqrt((1 + effective rank) / k)``. The two halves are independent sketches: the error of
a kernel is estimated from the kernels of the halves, ``||Theta_1 - Theta_2||_F / 2`` (each half
has twice the variance of the whole, and the halves' difference four times).

No ``P x k`` matrix is ever formed: the buckets and signs of a parameter tensor are drawn again
from a generator seeded by ``(seed, its index)`` whenever they are needed, and the per-example
gradients come from :func:`torchntk.empirical.jacobian.jacobians` on blocks of examples and groups
of parameter tensors sized by the memory budget (``block x O x group size`` numbers at a time).
The projected features are what data attribution (TRAK-style scores) and the feature-space
solvers of :mod:`torchntk.features` take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from .._checks import check_batches, check_choice
from .._memory import memory_budget
from .._progress import progress_bar
from ..errors import InvalidArgumentError
from ._guards import check_finite_model, check_per_example
from ._functional import Functional, OutputSelector, ParamSelector, make_functional, plain_input
from ._modes import MODES
from .jacobian import jacobians

__all__ = ["gradient_features", "sketched_ntk", "SketchedKernel"]


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 2 or k % 2:
        raise InvalidArgumentError(f"`sketch` (k) must be an even int >= 2, got {k!r}")
    return k


def _hashes(numel: int, half: int, seed: int, index: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The buckets and signs of one parameter tensor for both sketches (drawn again on each call)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 7919 * index + 17)
    out = []
    for _ in range(2):
        bucket = torch.randint(0, half, (numel,), generator=g)
        sign = torch.randint(0, 2, (numel,), generator=g, dtype=torch.int8) * 2 - 1
        out.append((bucket.to(device), sign.to(device)))
    return out


def _groups(fm: Functional, limit: float) -> list[list[str]]:
    """Parameter names in consecutive groups of at most ``limit`` entries (one tensor at least)."""
    groups: list[list[str]] = [[]]
    size = 0
    for name, p in fm.params.items():
        if groups[-1] and size + p.numel() > limit:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += p.numel()
    return groups


def _blocks(n: int, b: int) -> Iterator[slice]:
    for s in range(0, n, b):
        yield slice(s, min(s + b, n))


def gradient_features(
    model: nn.Module | Callable,
    x: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    params: ParamSelector = None,
    output: OutputSelector = None,
    memory: int | float | str | None = None,
    block_size: int | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Projected per-example gradients ``phi (N, O, k)``: ``<phi[i, a], phi[j, b]>`` is an unbiased
    estimate of the empirical NTK ``Theta[i, j, a, b]`` (see the module docstring).

    Args:
        model, params, output: as in :func:`torchntk.empirical_ntk`.
        x: inputs ``(N, ...)``.
        k: the sketch size (even): the features have ``k`` columns.
        seed: of the buckets and signs; the same seed gives the same projection on every call,
            so features of different batches can be compared.
        memory: budget of the per-example gradients held at once (default:
            :func:`torchntk._memory.default_memory`, a share of the memory available).
        block_size: examples per block (default: as many as ``memory`` allows, at most 64).
        progress: a bar over the blocks (``None``: shown past 2 s on a terminal).

    Returns:
        ``(N, O, k)`` in the dtype of the model's parameters.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
        >>> gradient_features(net, torch.randn(5, 3), 64).shape
        torch.Size([5, 2, 64])
    """
    k = _check_k(k)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgumentError(f"`seed` must be an int, got {seed!r}")
    x, _ = check_batches(x)
    budget = memory_budget(memory)
    with torch.inference_mode(False), torch.enable_grad():
        fm = make_functional(model, params, output)
        x = plain_input(x)
        check_finite_model(fm)
        out_dim = fm.probe(x, "x")
        check_per_example(fm, x)
        item = fm.dtype.itemsize
        total = sum(p.numel() for p in fm.params.values())
        # the Jacobian of a block of b examples and a group of G entries: b * O * G numbers (x3
        # for vmap's temporaries); blocks of up to 64 examples, groups of what is left
        b = block_size or int(max(1, min(64, x.shape[0], budget / (3 * item * out_dim * max(total, 1)))))
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise InvalidArgumentError(f"`block_size` must be a positive int, got {block_size!r}")
        groups = _groups(fm, max(1.0, budget / (3 * item * out_dim * b)))
        index = {name: i for i, name in enumerate(fm.params)}
        half = k // 2
        dev = next(iter(fm.params.values())).device
        phi = torch.zeros(x.shape[0], out_dim, k, dtype=fm.dtype, device=dev)
        blocks = list(_blocks(x.shape[0], b))
        bar = progress_bar(len(blocks) * len(groups), "gradient_features", progress)
        try:
            for rows in blocks:
                for names in groups:
                    jac = jacobians(fm, x[rows], names)
                    for name, j in jac.items():
                        flat = j.reshape(j.shape[0], out_dim, -1)
                        for part, (bucket, sign) in enumerate(_hashes(flat.shape[-1], half, seed, index[name], dev)):
                            cols = slice(part * half, (part + 1) * half)
                            phi[rows, :, cols].index_add_(2, bucket, flat * sign.to(flat.dtype))  # a view of phi
                    bar.update()
        finally:
            bar.close()
    return phi / math.sqrt(2.0)


@dataclass
class SketchedKernel:
    """A sketched empirical NTK and its estimated error.

    Attributes:
        kernel: the estimate, in the shape of ``mode`` (the features' dtype, or ``accumulate_dtype``).
        error: estimated relative Frobenius error ``||kernel - Theta||_F / ||Theta||_F``, from the
            two independent halves of the sketch.
        k: the sketch size.
    """

    kernel: torch.Tensor
    error: float
    k: int


def _contract(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    a, b = a.double(), b.double()
    if mode == "full":
        return torch.einsum("iak,jbk->ijab", a, b)
    diag = torch.einsum("iak,jak->ija", a, b)
    return diag if mode == "diagonal" else diag.mean(-1)


def sketched_ntk(
    model: nn.Module | Callable,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    k: int = 4096,
    seed: int = 0,
    mode: str = "full",
    params: ParamSelector = None,
    output: OutputSelector = None,
    memory: int | float | str | None = None,
    block_size: int | None = None,
    progress: bool | None = None,
    accumulate_dtype: torch.dtype | None = None,
) -> SketchedKernel:
    """The empirical NTK estimated from :func:`gradient_features` of size ``k``, with its error.

    ``empirical_ntk(model, x1, x2, sketch=k, seed=seed, mode=mode)`` returns its ``kernel``. The
    products are summed in float64 and returned in the features' dtype (the model's parameters')
    or ``accumulate_dtype``.
    Cost: one Jacobian of every example (as ``implementation="jacobian"``) and ``N1 N2 O^2 k``
    (full) or ``N1 N2 O k`` flops for the products, instead of ``P`` in place of ``k``; memory
    ``(N1 + N2) O k`` for the features.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
        >>> est = sketched_ntk(net, torch.randn(6, 3), k=512, mode="mean")
        >>> est.kernel.shape, 0 < est.error < 1
        (torch.Size([6, 6]), True)
    """
    mode = check_choice("mode", mode.lower() if isinstance(mode, str) else mode, MODES)
    kw = dict(seed=seed, params=params, output=output, memory=memory, block_size=block_size, progress=progress)
    f1 = gradient_features(model, x1, k, **kw)
    f2 = f1 if x2 is None else gradient_features(model, x2, k, **kw)
    half = k // 2
    # the halves are scaled by 1/sqrt(2) inside phi: each half's own estimate is 2 <phi_h, phi_h'>
    k1 = 2 * _contract(f1[..., :half], f2[..., :half], mode)
    k2 = 2 * _contract(f1[..., half:], f2[..., half:], mode)
    kernel = (k1 + k2) / 2
    if x2 is None:
        kernel = (kernel + kernel.transpose(0, 1) if mode != "full" else kernel + kernel.permute(1, 0, 3, 2)) / 2
    norm = float(torch.linalg.vector_norm(kernel))
    error = float(torch.linalg.vector_norm(k1 - k2)) / 2 / max(norm, 1e-300)
    return SketchedKernel(kernel.to(accumulate_dtype or f1.dtype), error, k)
