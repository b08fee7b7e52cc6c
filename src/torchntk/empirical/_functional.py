"""A model seen as a function of (some of) its parameters (private).

:func:`make_functional` turns an ``nn.Module`` (or a plain function ``f(params, x)`` with a
``params`` dict) into a :class:`Functional`: the differentiated parameters as a name -> tensor
dict and a function ``fn(params, x) -> (N, O)``. Parameters that are not differentiated, and
all buffers, pass through untouched (``torch.func.functional_call``).

It also refuses models whose output for one example depends on the other examples of the batch
or on chance (train-mode BatchNorm or Dropout): the NTK is defined for a deterministic
per-example function ``x -> f(theta, x)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence, Union

import torch
from torch import nn
from torch.func import functional_call

from ..errors import InvalidArgumentError, ModelStateError, ShapeError

ParamSelector = Union[None, str, Sequence[str], Callable[[str, torch.Tensor], bool], Mapping[str, torch.Tensor]]


@dataclass
class Functional:
    """A model as ``fn(params, x) -> (N, O)``.

    Attributes:
        params: the differentiated parameters, detached, in a stable order (name -> tensor).
        module: the ``nn.Module`` behind ``fn`` (``None`` for a plain function).
        frozen: tensors passed to ``functional_call`` unchanged (unselected parameters).
        raw: the user's function ``(params, x) -> (N, O) or (N,)`` before reshaping.
    """

    params: dict[str, torch.Tensor]
    module: nn.Module | None
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)
    raw: Callable | None = None

    def raw_call(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The model output as the model returns it (no reshaping)."""
        if self.module is not None:
            return functional_call(self.module, {**self.frozen, **params}, (x,))
        return self.raw(dict(params), x)

    def __call__(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``f(params, x)`` as a ``(N, O)`` tensor (a ``(N,)`` output becomes ``(N, 1)``)."""
        out = self.raw_call(params, x)
        return out.unsqueeze(-1) if out.ndim == 1 else out

    def single(self, params: Mapping[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        """``f(params, x_i)`` of one example ``xi`` (no batch axis) as a ``(O,)`` vector."""
        return self(params, xi.unsqueeze(0))[0]

    def probe(self, x: torch.Tensor) -> int:
        """Run the model on (at most two) examples of ``x``; check the output; return ``O``."""
        n = min(2, x.shape[0])
        with torch.no_grad():
            out = self.raw_call(self.params, x[:n])
        if not isinstance(out, torch.Tensor):
            raise ShapeError(
                f"`model` must return a tensor of shape (N, O) or (N,), got {type(out).__name__}"
            )
        if out.ndim not in (1, 2) or out.shape[0] != n:
            raise ShapeError(
                f"`model` must map a batch (N, ...) to an output (N, O) or (N,); for an input "
                f"batch of {n} it returned shape {tuple(out.shape)} (flatten extra output axes, "
                "e.g. with nn.Flatten, and keep the batch axis first)"
            )
        if not out.is_floating_point():
            raise ShapeError(f"`model` output must be floating point, got dtype {out.dtype}")
        return 1 if out.ndim == 1 else int(out.shape[1])


def check_deterministic(module: nn.Module) -> None:
    """Raise ModelStateError for train-mode BatchNorm/Dropout (or BatchNorm without stats)."""
    for name, m in module.named_modules():
        label = name or type(module).__name__
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.training or not m.track_running_stats or m.running_mean is None:
                raise ModelStateError(
                    f"`model` contains {type(m).__name__} ({label!r}) that normalizes with the "
                    "statistics of the current batch, so f(x_i) depends on the other inputs; the "
                    "NTK needs a deterministic per-example function x -> f(theta, x). "
                    "Fix: call model.eval() (BatchNorm then uses its running statistics)."
                )
        elif isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            raise ModelStateError(
                f"`model` contains {type(m).__name__} ({label!r}) in training mode: the output is "
                "random, while the NTK needs a deterministic per-example function "
                "x -> f(theta, x). Fix: call model.eval() before computing the kernel."
            )


def _select(named: dict[str, torch.Tensor], params: ParamSelector) -> list[str]:
    if params is None:
        return [n for n, p in named.items() if p.requires_grad]
    if callable(params):
        return [n for n, p in named.items() if params(n, p)]
    if isinstance(params, str):
        params = [params]
    if isinstance(params, (list, tuple, set, frozenset)):
        chosen: list[str] = []
        for key in params:
            if not isinstance(key, str):
                raise InvalidArgumentError(
                    f"`params` must list parameter names (str), got an item {key!r}"
                )
            hits = [n for n in named if n == key or n.startswith(key + ".")]
            if not hits:
                raise InvalidArgumentError(
                    f"`params` names {key!r}, which is neither a parameter nor a module of the "
                    f"model; parameters are: {', '.join(named) or '(none)'}"
                )
            chosen += [h for h in hits if h not in chosen]
        return [n for n in named if n in chosen]  # model order
    raise InvalidArgumentError(
        "`params` must be None, a parameter/module name, a list of names or a predicate "
        f"(name, param) -> bool for an nn.Module, got {type(params).__name__}"
    )


def make_functional(model: nn.Module | Callable, params: ParamSelector = None) -> Functional:
    """Build the :class:`Functional` of ``model`` differentiated w.r.t. the ``params`` subset.

    Args:
        model: an ``nn.Module`` mapping ``(N, ...)`` to ``(N, O)`` or ``(N,)``, or a function
            ``f(params_dict, x)`` doing the same; a function needs ``params`` as a dict.
        params: for a module, ``None`` (every parameter with ``requires_grad``), a name or list
            of names (parameters, or modules meaning all their parameters), or a predicate
            ``(name, param) -> bool``. For a plain function: the dict of its parameters.
    """
    if isinstance(model, nn.Module):
        check_deterministic(model)
        if isinstance(params, Mapping):
            raise InvalidArgumentError(
                "`params` as a dict of tensors is for a plain function model f(params, x); for "
                "an nn.Module pass parameter names or a predicate (name, param) -> bool"
            )
        named = dict(model.named_parameters())
        names = _select(named, params)
        if not names:
            if params is None:
                raise ModelStateError(
                    "`model` has no trainable parameters (none with requires_grad=True); the NTK "
                    "is a sum over parameters, so it would be zero. Pass `params=` to choose some."
                )
            raise InvalidArgumentError(
                f"`params`={params!r} selects none of the model's parameters "
                f"({', '.join(named) or 'none'})"
            )
        chosen = {n: _plain(named[n]) for n in names}
        frozen = {n: _plain(p) for n, p in named.items() if n not in chosen}
        return Functional(params=chosen, module=model, frozen=frozen)
    if not callable(model):
        raise InvalidArgumentError(
            f"`model` must be an nn.Module or a function f(params, x), got {type(model).__name__}"
        )
    if not isinstance(params, Mapping) or not params:
        raise InvalidArgumentError(
            "a plain function `model` f(params, x) needs `params` as a non-empty dict "
            "name -> tensor of the parameters to differentiate"
        )
    for n, p in params.items():
        if not isinstance(p, torch.Tensor) or not p.is_floating_point():
            raise InvalidArgumentError(f"`params`[{n!r}] must be a floating-point tensor")
    return Functional(params={n: _plain(p) for n, p in params.items()}, module=None, raw=model)


def _plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached (and copied if it is an inference-mode tensor, which autograd refuses)."""
    t = t.detach()
    return t.clone() if t.is_inference() else t
