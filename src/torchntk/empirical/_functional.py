"""A model seen as a function of (some of) its parameters: the one implementation (private).

:func:`make_functional` turns an ``nn.Module`` (or a plain function ``f(params, x)`` with a
``params`` dict) into a :class:`Functional`: the differentiated parameters as a name -> tensor
dict and a function ``fn(params, x) -> (N, O)``. Parameters that are not differentiated, and
all buffers, pass through untouched (``torch.func.functional_call``). Every part of torchntk
that differentiates a model with respect to its parameters builds on it: ``empirical_ntk``,
``linearize``, the NTK-vector-product operator of :mod:`torchntk.scale` and the lab.

Three rules are decided here, once:

* **which parameters**: ``params=None`` means every parameter with ``requires_grad``; a name
  (of a parameter or of a module), a list of names or a predicate selects a subset;
* **which output**: ``output=None`` takes the model's output when it is a tensor; a key or
  attribute name (``"logits"``), an index (``0``) or a function of the output
  (``lambda out: out.logits[:, -1]``) selects the tensor from a dict, tuple or output object;
* **determinism**: models whose output for one example depends on the other examples of the
  batch or on chance (train-mode BatchNorm or Dropout) are refused: the NTK is defined for a
  deterministic per-example function ``x -> f(theta, x)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

import torch
from torch import nn
from torch.func import functional_call

from ..errors import InvalidArgumentError, ModelStateError, ShapeError

ParamSelector = Union[None, str, Sequence[str], Callable[[str, torch.Tensor], bool], Mapping[str, torch.Tensor]]
OutputSelector = Union[None, str, int, Callable[[Any], torch.Tensor]]


def check_output_selector(output: object) -> OutputSelector:
    """Raise InvalidArgumentError unless ``output`` is None, a str, an int or a callable."""
    if output is None or callable(output) or isinstance(output, str):
        return output
    if isinstance(output, int) and not isinstance(output, bool):
        return output
    raise InvalidArgumentError(
        "`output` must be None, a key or attribute name (e.g. 'logits'), an int index, or a "
        f"function of the model's output (e.g. lambda out: out.logits[:, -1]), got {output!r}"
    )


def _describe(out: object) -> str:
    """A short description of a non-tensor model output, naming what it holds."""
    kind = type(out).__name__
    if isinstance(out, Mapping):
        keys = [k for k in out.keys()]
        return f"a {kind} with keys {', '.join(map(repr, keys)) or '(none)'}"
    if isinstance(out, (tuple, list)):
        inner = ", ".join(type(t).__name__ for t in out[:6])
        return f"a {kind} of {len(out)} items ({inner})"
    fields = [k for k, v in vars(out).items() if isinstance(v, torch.Tensor)] if hasattr(out, "__dict__") else []
    return f"a {kind}" + (f" with tensor attributes {', '.join(map(repr, fields))}" if fields else "")


def select_output(out: object, output: OutputSelector) -> torch.Tensor:
    """The tensor that ``output`` names in the model output ``out`` (see the module doc)."""
    if output is None:
        if isinstance(out, torch.Tensor):
            return out
        raise ShapeError(
            f"`model` returned {_describe(out)}, not a tensor; pass `output=` to choose the "
            "tensor to differentiate: a key or attribute name (output='logits'), an index "
            "(output=0), or a function (output=lambda out: out.logits[:, -1])"
        )
    if callable(output):
        res = output(out)
    elif isinstance(output, str):
        if isinstance(out, Mapping) and output in out:
            res = out[output]
        elif hasattr(out, output):
            res = getattr(out, output)
        else:
            raise ShapeError(f"`output`={output!r} names nothing in the model output, {_describe(out)}")
    else:
        try:
            res = out[output]
        except (TypeError, IndexError, KeyError):
            raise ShapeError(
                f"`output`={output!r} is not a valid index of the model output, {_describe(out)}"
            ) from None
    if not isinstance(res, torch.Tensor):
        raise ShapeError(f"`output`={output!r} selects {_describe(res)}, not a tensor")
    return res


@dataclass
class Functional:
    """A model as ``fn(params, x) -> (N, O)``.

    Attributes:
        params: the differentiated parameters, detached, in a stable order (name -> tensor).
        module: the ``nn.Module`` behind ``fn`` (``None`` for a plain function).
        frozen: tensors passed to ``functional_call`` unchanged (unselected parameters);
            parameters in neither dict are taken from the module as they are.
        raw: the user's function ``(params, x) -> (N, O) or (N,)`` (plain-function models).
        output: the output selector (see :func:`select_output`).
        slots: for a module, each parameter's name -> the names of the distinct attribute
            slots holding it (:func:`parameter_slots`; filled in from ``module``).
    """

    params: dict[str, torch.Tensor]
    module: nn.Module | None
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)
    raw: Callable | None = None
    output: OutputSelector = None
    slots: dict[str, tuple[str, ...]] = field(default_factory=dict)
    probed: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.module is not None and not self.slots:
            self.slots = parameter_slots(self.module)

    def raw_call(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The selected output tensor as the model returns it (no reshaping)."""
        if self.module is not None:
            values = {**self.frozen, **params}
            slots = self.slots
            values = {s: v for n, v in values.items() for s in slots.get(n, (n,))}
            out = functional_call(self.module, values, (x,), tie_weights=False)
        else:
            out = self.raw(dict(params), x)
        return select_output(out, self.output)

    def __call__(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``f(params, x)`` as a ``(N, O)`` tensor (a ``(N,)`` output becomes ``(N, 1)``)."""
        out = self.raw_call(params, x)
        return out.unsqueeze(-1) if out.ndim == 1 else out

    def single(self, params: Mapping[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        """``f(params, x_i)`` of one example ``xi`` (no batch axis) as a ``(O,)`` vector."""
        return self(params, xi.unsqueeze(0))[0]

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the differentiated parameters."""
        return next(iter(self.params.values())).dtype

    def probe(self, x: torch.Tensor, name: str = "x1") -> int:
        """Run the model on (at most two) examples of ``x``; check the output; return ``O``.

        A model that fails on the input raises a torchntk error naming ``name`` (the argument
        ``x`` came from) with the reason: wrong feature size, dtype or device, or a rank-1 batch.
        """
        n = min(2, x.shape[0])
        try:
            with torch.no_grad():
                out = self.raw_call(self.params, x[:n])
        except (ShapeError, InvalidArgumentError):
            raise
        except Exception as err:  # noqa: BLE001 - the model's own error, explained for this input
            raise _input_error(name, x, self, err) from err
        if out.ndim not in (1, 2) or out.shape[0] != n:
            raise ShapeError(
                f"`model` must map a batch (N, ...) to an output (N, O) or (N,); for an input "
                f"batch of {n} it returned shape {tuple(out.shape)} (flatten extra output axes, "
                "e.g. with nn.Flatten or output=lambda out: out.flatten(1), and keep the batch "
                "axis first)"
            )
        if not out.is_floating_point():
            raise ShapeError(f"`model` output must be floating point, got dtype {out.dtype}")
        self.probed = (x[:n], out.unsqueeze(-1) if out.ndim == 1 else out)
        return 1 if out.ndim == 1 else int(out.shape[1])

    def probed_output(self, x: torch.Tensor) -> torch.Tensor | None:
        """``f(params, x)`` as the last :meth:`probe` computed it, when ``x`` is the very batch it
        ran on (the same view of the same tensor), else None: the planning checks that follow a
        probe reuse it instead of running the model again."""
        if self.probed is None:
            return None
        seen, out = self.probed
        same = (
            seen.shape == x.shape and seen.dtype == x.dtype and seen.device == x.device
            and seen.stride() == x.stride() and seen.data_ptr() == x.data_ptr()
            and seen._version == x._version
        )
        return out if same else None


def _input_error(name: str, x: torch.Tensor, fm: Functional, err: Exception) -> Exception:
    """The torchntk error for a model that fails on the input ``x`` (argument ``name``)."""
    reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    dt = fm.dtype
    if x.is_floating_point() and x.dtype != dt:
        return InvalidArgumentError(
            f"`{name}` has dtype {x.dtype} but the model's parameters are {dt}; the model failed "
            f"on it ({reason}). Cast one to the other, e.g. {name}.to({dt})"
        )
    ids = ids_error({name: x}, fm, err)
    if ids is not None:
        return ids
    if not x.is_floating_point() and (_is_dtype_message(str(err)) or not embeddings(fm)):
        return InvalidArgumentError(
            f"`{name}` holds integers ({x.dtype}) but the model computes in {dt} and failed on "
            f"them ({reason}): a dtype problem, not a shape one. Integer inputs are for models "
            f"that look them up (token ids of an nn.Embedding); for numbers pass {name}.to({dt})"
        )
    dev = next(iter(fm.params.values())).device
    if x.device != dev:
        return InvalidArgumentError(
            f"`{name}` is on {x.device} but the model's parameters are on {dev} ({reason})"
        )
    if x.ndim == 1:
        return ShapeError(
            f"`{name}` has shape {tuple(x.shape)}: a batch of {x.shape[0]} scalars, and the model "
            f"failed on it ({reason}). Inputs are batches (N, ...): for N examples of one feature "
            f"pass {name}.unsqueeze(1)"
        )
    return ShapeError(
        f"the model failed on `{name}` of shape {tuple(x.shape)} (examples of shape "
        f"{tuple(x.shape[1:])}): {reason}. Check that the per-example shape is the one the model "
        "expects"
    )


def parameter_slots(module: nn.Module) -> dict[str, tuple[str, ...]]:
    """Each parameter of ``module`` (by its ``named_parameters()`` name) -> the names of the
    distinct ``(module, attribute)`` slots that hold it.

    A parameter shared by two modules (``m2.weight = m1.weight``) sits in two slots; a module
    registered under two names (``Sequential(lin, act, lin)``) gives its parameters two names
    but one slot each. ``functional_call`` must set every slot once: a slot set twice under two
    names is restored from the value of the first swap, and the model keeps a plain tensor in
    place of its parameter.
    """
    slots: dict[str, list[str]] = {}
    first: dict[int, str] = {}
    seen: set[tuple[int, str]] = set()
    for mname, m in module.named_modules(remove_duplicate=False):
        for attr, p in m._parameters.items():
            if p is None:
                continue
            name = f"{mname}.{attr}" if mname else attr
            canon = first.setdefault(id(p), name)
            if (id(m), attr) not in seen:
                seen.add((id(m), attr))
                slots.setdefault(canon, []).append(name)
    return {n: tuple(v) for n, v in slots.items()}


def _is_dtype_message(msg: str) -> bool:
    return any(k in msg for k in ("dtype", "scalar type", "Long", "Int", "not implemented for"))


def embeddings(fm: Functional) -> list[tuple[str, int]]:
    """``(name, num_embeddings)`` of every ``nn.Embedding`` of the model (none for a function)."""
    if fm.module is None:
        return []
    return [(n or type(m).__name__, m.num_embeddings) for n, m in fm.module.named_modules() if isinstance(m, nn.Embedding)]


def ids_error(inputs: Mapping[str, torch.Tensor | None], fm: Functional, err: BaseException) -> Exception | None:
    """The error for token ids out of range of the model's embedding (an ``IndexError`` of the
    lookup), naming the arguments whose ids fall outside; ``None`` if ``err`` is not that."""
    msg = str(err)
    ints = {n: x for n, x in inputs.items() if x is not None and not x.is_floating_point()}
    if not ints or not (isinstance(err, IndexError) or "index out of range" in msg or "out of bounds" in msg):
        return None
    embs = embeddings(fm)
    size = max((k for _, k in embs), default=None)
    ranges = {n: (int(x.min()), int(x.max())) for n, x in ints.items()}
    blamed = [n for n, (lo, hi) in ranges.items() if lo < 0 or (size is not None and hi >= size)] or list(ranges)
    held = "; ".join(f"`{n}` holds ids from {ranges[n][0]} to {ranges[n][1]}" for n in blamed)
    table = ", ".join(f"{n!r}: num_embeddings={k} (ids 0..{k - 1})" for n, k in embs) or "none found"
    first = msg.strip().splitlines()[0] if msg.strip() else ""
    return InvalidArgumentError(
        f"token ids out of range for the model's embedding: {held}; the model's nn.Embedding "
        f"layers: {table}. The lookup failed with {type(err).__name__}: {first}. Pass ids in "
        "range (or enlarge the embedding)"
    )


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


def select_names(
    named: Mapping[str, torch.Tensor], params: ParamSelector, aliases: Mapping[str, str] | None = None
) -> list[str]:
    """The names of ``named`` (in model order) that the selector ``params`` picks.

    ``aliases`` maps every other name of a shared parameter (``model.named_parameters(
    remove_duplicate=False)``) to its name in ``named``, so a list may use either.
    """
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
            every = {**{n: n for n in named}, **(aliases or {})}
            hits = [c for n, c in every.items() if n == key or n.startswith(key + ".")]
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


def make_functional(
    model: nn.Module | Callable, params: ParamSelector = None, output: OutputSelector = None
) -> Functional:
    """Build the :class:`Functional` of ``model`` differentiated w.r.t. the ``params`` subset.

    Args:
        model: an ``nn.Module`` mapping ``(N, ...)`` to ``(N, O)`` or ``(N,)``, or a function
            ``f(params_dict, x)`` doing the same; a function needs ``params`` as a dict.
        params: for a module, ``None`` (every parameter with ``requires_grad``), a name or list
            of names (parameters, or modules meaning all their parameters), or a predicate
            ``(name, param) -> bool``. For a plain function: the dict of its parameters.
        output: which tensor of the model's output to differentiate (:func:`select_output`).

    Raises:
        ModelStateError: train-mode BatchNorm/Dropout, or no trainable parameter.
        InvalidArgumentError: a bad ``model``, ``params`` or ``output``.
    """
    output = check_output_selector(output)
    if isinstance(model, nn.Module):
        check_deterministic(model)
        if isinstance(params, Mapping):
            raise InvalidArgumentError(
                "`params` as a dict of tensors is for a plain function model f(params, x); for "
                "an nn.Module pass parameter names or a predicate (name, param) -> bool"
            )
        named = dict(model.named_parameters())
        canon = {id(p): n for n, p in named.items()}
        aliases = {n: canon[id(p)] for n, p in model.named_parameters(remove_duplicate=False) if n not in named}
        names = select_names(named, params, aliases)
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
        for n in names:
            if named[n].device.type == "meta":
                raise ModelStateError(
                    f"`model` parameter {n!r} is a meta tensor (no data); materialize the model "
                    "(e.g. model.to_empty(device='cpu') and initialize it) before computing its NTK"
                )
            if not named[n].is_floating_point():
                raise InvalidArgumentError(f"`model` parameter {n!r} must be floating point, got {named[n].dtype}")
        chosen = {n: _plain(named[n]) for n in names}
        frozen = {n: _plain(p) for n, p in named.items() if n not in chosen}
        return Functional(params=chosen, module=model, frozen=frozen, output=output)
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
        if p.device.type == "meta":
            raise InvalidArgumentError(f"`params`[{n!r}] is a meta tensor (no data)")
    return Functional(params={n: _plain(p) for n, p in params.items()}, module=None, raw=model, output=output)


def _plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached (and copied if it is an inference-mode tensor, which autograd refuses)."""
    t = t.detach()
    return t.clone() if t.is_inference() else t


def plain_input(x: torch.Tensor) -> torch.Tensor:
    """An input batch detached (and copied out of inference mode if it was created there)."""
    return _plain(x)


class SelectOutput(nn.Module):
    """``model`` followed by :func:`select_output`: a module whose output is the chosen tensor
    (for code that takes a plain module, such as the CLI's model files)."""

    def __init__(self, model: nn.Module, output: OutputSelector) -> None:
        super().__init__()
        self.model, self.output = model, check_output_selector(output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return select_output(self.model(x), self.output)


def model_input(name: str, x: object, fm: "Functional") -> object:
    """An input as the model takes it: a numpy array as a tensor on the model's device (floating
    arrays in the model's dtype, integer arrays, token ids, as int64); a meta, complex or bool
    tensor refused; anything else unchanged (checked later, by ``check_batches``)."""
    if type(x).__module__ == "numpy" and hasattr(x, "dtype") and hasattr(x, "shape"):
        kind = x.dtype.kind
        dev = next(iter(fm.params.values())).device
        if kind == "f":
            return torch.as_tensor(x).to(device=dev, dtype=fm.dtype)
        if kind in "iu":
            return torch.as_tensor(x).to(device=dev, dtype=torch.int64)
        raise InvalidArgumentError(
            f"`{name}` is a numpy array of dtype {x.dtype}; pass real numbers (converted to the "
            f"model's {fm.dtype}) or integer token ids"
        )
    if isinstance(x, torch.Tensor):
        if x.device.type == "meta":
            raise InvalidArgumentError(
                f"`{name}` is a meta tensor (shape {tuple(x.shape)}, no data); pass a tensor with values"
            )
        if x.is_complex() or x.dtype == torch.bool:
            raise InvalidArgumentError(
                f"`{name}` must hold real numbers or integer ids (token ids), got dtype {x.dtype}"
            )
    return x
