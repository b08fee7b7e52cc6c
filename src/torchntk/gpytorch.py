"""GPyTorch adapter: the infinite-width NNGP or NTK of a spec as a ``gpytorch.kernels.Kernel``.

``NTKKernel(depth)`` is the kernel of ``layers.mlp(512, depth)`` (ReLU) with learnable ``W_std`` and
``b_std`` (GPyTorch parameters ``raw_W_std``, ``raw_b_std`` under positivity constraints);
``NTKKernel(spec)`` is a fixed spec's kernel; ``NTKKernel(build, hyperparameters={...})``
fits any family ``build(**params) -> spec``. Usable wherever GPyTorch takes a kernel (``ExactGP``
models, BoTorch's ``SingleTaskGP(covar_module=...)``): inputs ``(..., n, d)``, float64 advised.

Needs the optional extra ``gp`` (``pip install torchntk[gp]``: gpytorch, botorch).

Example:
    >>> import gpytorch
    >>> k = NTKKernel(3, kind="nngp")
    >>> k(torch.randn(5, 3, dtype=torch.float64)).to_dense().shape
    torch.Size([5, 5])
"""

from __future__ import annotations

import functools

from typing import Any, Callable, Mapping

import torch

try:
    import gpytorch
    from gpytorch.constraints import Positive
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("torchntk.gpytorch needs gpytorch: pip install 'torchntk[gp]'") from err

from .errors import InvalidArgumentError
from .gp import spec_kernel
from .gp.fitting import KINDS
from .layers import Layer, mlp
from ._checks import check_choice

__all__ = ["NTKKernel"]


class _Fixed:
    """The builder of a fixed spec (a module-level class, so that the kernel pickles)."""

    def __init__(self, spec: Layer) -> None:
        self.spec = spec

    def __call__(self) -> Layer:
        return self.spec


class NTKKernel(gpytorch.kernels.Kernel):
    """The NNGP (``kind="nngp"``) or NTK (``kind="ntk"``) of a spec as a GPyTorch kernel.

    Args:
        spec_or_depth: an int ``depth`` (the ReLU network ``layers.mlp(512, depth)`` with
            learnable ``W_std``, ``b_std``), a fixed spec, or a callable ``build(**params)``
            returning a spec (learnable ``params``: the keys of ``hyperparameters``).
        kind: ``"nngp"`` or ``"ntk"`` (any case).
        hyperparameters: initial values ``> 0`` of the learnable hyperparameters; default
            ``{"W_std": 1.0, "b_std": 0.1}`` for a depth, none for a fixed spec.
        constraint: GPyTorch constraint of every hyperparameter (default ``Positive()``).

    Each hyperparameter ``p`` is the GPyTorch parameter ``raw_p`` (0-dim) seen through its
    constraint: ``kernel.W_std`` reads it, ``kernel.W_std = 1.3`` sets it. Batch shapes of the
    kernel's own parameters are not supported (inputs may have batch axes).

    Example:
        >>> k = NTKKernel(3, kind="ntk", hyperparameters={"W_std": 1.5, "b_std": 0.2})
        >>> round(float(k.W_std), 6)
        1.5
    """

    has_lengthscale = False
    is_stationary = False

    def __init__(
        self,
        spec_or_depth: int | Layer | Callable[..., Layer] = 3,
        kind: str = "ntk",
        *,
        hyperparameters: Mapping[str, float] | None = None,
        constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("batch_shape") not in (None, torch.Size([])):
            raise InvalidArgumentError("NTKKernel: `batch_shape` is not supported")
        super().__init__(**kwargs)
        self.kind = check_choice("kind", str(kind).lower(), KINDS)
        if isinstance(spec_or_depth, Layer):
            if hyperparameters:
                raise InvalidArgumentError("NTKKernel: a fixed spec has no `hyperparameters`; pass a builder")
            self._build: Callable[..., Layer] = _Fixed(spec_or_depth)
            hyperparameters = {}
        elif isinstance(spec_or_depth, int) and not isinstance(spec_or_depth, bool):
            depth = spec_or_depth
            mlp(512, depth)  # validates the depth
            self._build = functools.partial(mlp, 512, depth)  # picklable, unlike a closure
            hyperparameters = {"W_std": 1.0, "b_std": 0.1} if hyperparameters is None else hyperparameters
        elif callable(spec_or_depth):
            self._build = spec_or_depth
            hyperparameters = {} if hyperparameters is None else hyperparameters
        else:
            raise InvalidArgumentError(
                f"NTKKernel: `spec_or_depth` must be an int, a torchntk.layers spec or a builder, got {spec_or_depth!r}"
            )
        self._names = tuple(str(n) for n in hyperparameters)
        for name, value in hyperparameters.items():
            if not (isinstance(value, (int, float)) and value > 0):
                raise InvalidArgumentError(f"NTKKernel: hyperparameter `{name}` must start > 0, got {value!r}")
            cons = Positive() if constraint is None else constraint
            self.register_parameter(f"raw_{name}", torch.nn.Parameter(torch.zeros((), dtype=torch.float64)))
            self.register_constraint(f"raw_{name}", cons)
            self._set(name, float(value))

    def _set(self, name: str, value: Any) -> None:
        raw = getattr(self, f"raw_{name}")
        cons = getattr(self, f"raw_{name}_constraint")
        value = torch.as_tensor(value, dtype=raw.dtype, device=raw.device)
        self.initialize(**{f"raw_{name}": cons.inverse_transform(value)})

    def __getattr__(self, name: str) -> Any:
        names = self.__dict__.get("_names", ())
        if name in names:
            return getattr(self, f"raw_{name}_constraint").transform(getattr(self, f"raw_{name}"))
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__.get("_names", ()):
            self._set(name, value)
        else:
            super().__setattr__(name, value)

    def hyperparameters(self) -> dict[str, torch.Tensor]:
        """The constrained hyperparameters ``{name: 0-dim tensor}`` (differentiable)."""
        return {n: getattr(self, n) for n in self._names}

    def spec(self) -> Layer:
        """The spec at the current hyperparameters (0-dim tensors: differentiable)."""
        return self._build(**self.hyperparameters())

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False,
                last_dim_is_batch: bool = False, **params: Any) -> torch.Tensor:
        if last_dim_is_batch:
            raise InvalidArgumentError("NTKKernel: `last_dim_is_batch` is not supported")
        spec = self.spec()
        same = x1.shape == x2.shape and torch.equal(x1, x2)
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
        a = x1.expand(*batch, *x1.shape[-2:]).reshape(-1, *x1.shape[-2:])
        b = x2.expand(*batch, *x2.shape[-2:]).reshape(-1, *x2.shape[-2:])
        out = []
        for i in range(a.shape[0]):
            if diag:
                # k(x, x) of each point on its own (a 1 x 1 kernel per row)
                out.append(torch.stack([spec_kernel(spec, a[i, j:j + 1], kind=self.kind)[0, 0]
                                        for j in range(a.shape[1])]))
            else:
                k = spec_kernel(spec, a[i], None if same else b[i], kind=self.kind)
                out.append(k)
        res = torch.stack(out).to(x1.dtype)
        return res.reshape(*batch, *res.shape[1:])
