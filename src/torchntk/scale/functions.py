"""Kernel functions for :func:`~torchntk.scale.tiled_kernel` from specs and models.

A kernel function maps two blocks of inputs ``(r, *f)`` and ``(c, *f)`` to kernel blocks
``(r, c, *trailing)``. These helpers build one from an infinite-width spec
(:mod:`torchntk.layers`) or from a finite network (:func:`torchntk.empirical_ntk`), and attach
a ``torchntk_identity`` (a hash of the spec or of the model's structure and weights, with the
settings) that the kernel store records and checks on resume.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..empirical import empirical_ntk
from ..errors import InvalidArgumentError
from ._identity import module_hash, object_hash


class SpecKernelFn:
    """``(a, b) -> {name: spec.kernel(a, b).<name>}`` for ``name`` in ``which`` (float64).

    On the diagonal tiles of a symmetric kernel the engine passes the same tensor twice;
    the spec is then called with ``x2=None``, exactly as ``spec.kernel(x)`` does for its own
    diagonal blocks, so that ``tiled_kernel(fn, x, block_size=T)`` reproduces
    ``spec.kernel(x, block_size=T)`` bit for bit.
    """

    def __init__(self, spec: Any, which: Sequence[str] = ("nngp", "ntk"), **kernel_kwargs: Any) -> None:
        if isinstance(which, str):
            which = (which,)
        which = tuple(which)
        bad = [w for w in which if w not in ("nngp", "ntk")]
        if not which or bad:
            raise InvalidArgumentError(f"`which` must name 'nngp' and/or 'ntk', got {which!r}")
        if not callable(getattr(spec, "kernel", None)):
            raise InvalidArgumentError(
                f"`spec` must be a torchntk.layers spec (with .kernel), got {type(spec).__name__}"
            )
        self.spec, self.which, self.kernel_kwargs = spec, which, dict(kernel_kwargs)
        self.torchntk_identity = {
            "kind": "spec",
            "spec": object_hash(spec),
            "spec_repr": repr(spec)[:2000],
            "which": list(which),
            "kernel_kwargs": {k: repr(v) for k, v in sorted(kernel_kwargs.items())},
        }

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        kw = dict(self.kernel_kwargs)
        if "block_size" not in kw and "batch_size" not in kw:
            kw["block_size"] = max(a.shape[0], b.shape[0])  # one block: the engine tiles
        k = self.spec.kernel(a, None if b is a else b, **kw)
        return {name: getattr(k, name) for name in self.which}


class ModelKernelFn:
    """``(a, b) -> torchntk.empirical_ntk(model, a, b, mode=mode, **kwargs)``.

    Shapes: ``"full"`` ``(r, c, O, O)``, ``"diagonal"`` ``(r, c, O)``, ``"mean"`` ``(r, c)``.
    The model should be in ``eval()`` mode (deterministic per example).
    """

    def __init__(self, model: torch.nn.Module, mode: str = "mean", **ntk_kwargs: Any) -> None:
        if not isinstance(model, torch.nn.Module):
            raise InvalidArgumentError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        self.model, self.mode, self.ntk_kwargs = model, mode, dict(ntk_kwargs)
        self.torchntk_identity = {
            "kind": "model",
            "model": module_hash(model),
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "mode": mode,
            "ntk_kwargs": {k: repr(v) for k, v in sorted(ntk_kwargs.items())},
        }

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return empirical_ntk(self.model, a, None if b is a else b, mode=self.mode, **self.ntk_kwargs)


def kernel_fn_from_spec(spec: Any, which: Sequence[str] = ("nngp", "ntk"), **kernel_kwargs: Any) -> SpecKernelFn:
    """A kernel function of an infinite-width spec: ``{"nngp": (r, c), "ntk": (r, c)}`` blocks.

    Example::

        >>> from torchntk import layers as L
        >>> spec = L.serial(L.Dense(1), L.Relu(), L.Dense(1))
        >>> fn = kernel_fn_from_spec(spec)
        >>> K = tiled_kernel(fn, torch.randn(500, 3, dtype=torch.float64), block_size=128)  # doctest: +SKIP
    """
    return SpecKernelFn(spec, which, **kernel_kwargs)


def kernel_fn_from_model(model: torch.nn.Module, mode: str = "mean", **ntk_kwargs: Any) -> ModelKernelFn:
    """A kernel function of a finite network's empirical NTK (see :class:`ModelKernelFn`).

    Example::

        >>> net = torchntk.nn.MLP(3, [256], 1).double().eval()   # doctest: +SKIP
        >>> store = tiled_kernel(kernel_fn_from_model(net), x, out="ntk.zarr")
    """
    return ModelKernelFn(model, mode, **ntk_kwargs)


def with_identity(kernel_fn: Callable, identity: dict[str, Any]) -> Callable:
    """Attach an identity to any kernel function (recorded in stores and checked on resume)."""
    kernel_fn.torchntk_identity = dict(identity)  # type: ignore[attr-defined]
    return kernel_fn
