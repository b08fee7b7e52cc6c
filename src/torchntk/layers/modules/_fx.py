"""The traced forward of ``from_module`` (private): a ``torch.fx`` graph as a spec.

Each node becomes one step (a :class:`~torchntk.layers.Layer`, or a merge of several nodes),
interpreted on kernels and shapes in the graph's order. What the graph alone does not show is
tracked here:

- **in-place calls** (``F.relu(h, inplace=True)``, ``h.relu_()``, ``nn.ReLU(inplace=True)``)
  change the tensor ``h`` itself: later uses of ``h`` read the step's output;
- **which branches of a sum are correlated** (their origins, :mod:`._fx_rules`): a node added
  to itself (``h + h``) is a scaled node (``2 h``: ``Sigma' = 4 Sigma``); any other correlated
  sum (``h + relu(h)``) is refused, naming the node;
- **a nonlinearity of a non-Gaussian sum** (a post-activation residual block) is refused with
  the block rewritten in its pre-activation form.
"""

from __future__ import annotations

import itertools
import operator
import re
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ShapeError, SpecError
from .. import _spatial
from .._core.combinators import FanInConcat, FanInSum, Identity
from .._core.kernel import Kernel
from .._core.protocol import Layer, Shapes, any_full
from ..activations._elementwise import ElementwiseLayer
from ..pooling.pools import Flatten
from ._fx_rules import (
    ACTIVATIONS, INPLACE, INPUT, METHODS, Checked, Concat, Info, Scale, activation, channelwise, flow, name_of, named, unsupported,
)

_SUMS = {operator.add: 1.0, torch.add: 1.0, "add": 1.0, operator.sub: -1.0, torch.sub: -1.0, "sub": -1.0}
_PRODUCTS = {operator.mul: False, torch.mul: False, "mul": False, operator.truediv: True, torch.div: True, "div": True}


class GraphSpec(Layer):
    """The spec of a traced forward: one step per node, interpreted on kernels and shapes.

    ``steps``: ``(node name, Layer or "input", input node names)``; FanInSum/FanInConcat steps
    take the list of their inputs.
    """

    def __init__(self, graph: Any, module: nn.Module, convert: Callable[[nn.Module, str], Layer], name: str) -> None:
        self.steps: list[tuple[str, Any, list[str]]] = []
        self.output = ""
        self._module, self._sums = module, {}
        self._title = f"{name!r} ({type(module).__name__})" if name else type(module).__name__
        alias: dict[str, Any] = {}  # tensors changed in place (by name): the node that now holds them
        info: dict[str, Info] = {}
        for node in graph.nodes:
            where = (f"{(name + '.') if name else ''}{node.target if node.op == 'call_module' else node.name}"
                     f" in {type(module).__name__}.forward")

            def arg(a: Any, where: str = where) -> str:
                if not isinstance(a, torch.fx.Node):
                    raise unsupported(where, f"a constant argument {a!r}")
                while a.name in alias:
                    a = alias[a.name]
                return a.name

            if node.op == "placeholder":
                if self.steps:
                    raise unsupported(where, "forward takes one tensor only")
                self.steps.append((node.name, "input", []))
                info[node.name] = (frozenset({INPUT}), False)
                continue
            if node.op == "output":
                out = node.args[0]
                if not isinstance(out, torch.fx.Node):
                    raise unsupported(
                        f"the output of {type(module).__name__}.forward",
                        f"it returns a {type(out).__name__} ({out!r}), not one tensor; wrap the model in a "
                        "module whose forward returns the one output whose kernel you want",
                    )
                self.output = arg(out)
                continue
            inplace = False
            if node.op == "call_module":
                if len(node.args) != 1 or node.kwargs:
                    raise unsupported(where, "a submodule called with more than one argument")
                sub = module.get_submodule(node.target)
                steps = [(node.name, convert(sub, f"{name}.{node.target}" if name else node.target), [arg(node.args[0])])]
                inplace = getattr(sub, "inplace", False) is True
            else:
                steps, inplace = self._function(node, where, arg, info)
            changed = steps[-1][2][0] if inplace else None  # the tensor an in-place call changes
            steps = self._distribute(steps)
            for step in steps:
                self.steps.append(step)
                layer, args = step[1], step[2]
                if isinstance(layer, (FanInSum, FanInConcat)):
                    ins = [info[a] for a in args]
                    info[step[0]] = (frozenset().union(*(i[0] for i in ins)), all(i[1] for i in ins))
                else:
                    info[step[0]] = flow(layer, info[args[0]])
            if changed is not None:
                alias[changed] = node

    def _distribute(self, steps: list) -> list:
        """A channelwise step of a concatenation, ``f(cat(a, b))``, as ``cat(f(a), f(b))``: the
        same function, and each branch keeps its own Gaussian law (the rule of ``f`` on the
        mixed kernel would be wrong when the branches' kernels differ)."""
        if len(steps) != 1:
            return steps
        node, layer, args = steps[0]
        source = next((s for s in reversed(self.steps) if s[0] == args[0]), None) if len(args) == 1 else None
        if source is None or not isinstance(source[1], Concat) or not channelwise(layer):
            return steps
        inner = layer.inner if isinstance(layer, Checked) else layer
        parts = [(f"{node}.{i}", inner, [a]) for i, a in enumerate(source[2])]
        check = layer.check if isinstance(layer, Checked) else None
        return parts + [(node, Concat(check), [p[0] for p in parts])]

    def _function(self, node: Any, where: str, arg: Callable[[Any], str], info: dict[str, Info]) -> tuple[list, bool]:
        target, args, kwargs = node.target, node.args, dict(node.kwargs)
        method = node.op == "call_method"
        if target in _SUMS and len(args) == 2 and set(kwargs) <= {"alpha"}:
            terms = [(arg(args[0]), 1.0), (arg(args[1]), _SUMS[target] * float(kwargs.get("alpha", 1.0)))]
            return self._sum(node.name, terms, info, where), False
        if target in (operator.neg, torch.neg, "neg") and len(args) == 1 and not kwargs:
            return [(node.name, Scale(-1.0), [arg(args[0])])], False
        if target in _PRODUCTS and len(args) == 2 and not kwargs:
            divide = _PRODUCTS[target]
            nodes = [isinstance(a, torch.fx.Node) for a in args]
            if nodes == [True, False] or (nodes == [False, True] and not divide):
                x, c = (args[0], args[1]) if nodes[0] else (args[1], args[0])
                if isinstance(c, (int, float)) and not isinstance(c, bool) and (c != 0 or not divide):
                    return [(node.name, Scale(1.0 / c if divide else c), [arg(x)])], False
            raise unsupported(f"{where}: the operation {name_of(target)}", "only a product with a constant number")
        if target is torch.cat and kwargs.get("dim", args[1] if len(args) > 1 else 0) == 1:
            return [(node.name, Concat(), [arg(a) for a in args[0]])], False
        if target in (torch.flatten, "flatten") and tuple(args[1:]) in ((1,), (1, -1)) and not kwargs:
            return [(node.name, Flatten(), [arg(args[0])])], False
        if target is F.dropout:
            bound = dict(zip(("p", "training", "inplace"), args[1:]), **kwargs)
            if bound.get("training", True) is False or bound.get("p", 0.5) == 0:
                return [(node.name, Identity(), [arg(args[0])])], False
            raise unsupported(f"{where}: F.dropout with training=True", "pass training=self.training and call model.eval()")
        if node.op == "get_attr":
            raise unsupported(where, f"the forward reads the tensor self.{target} directly (a parameter or buffer used "
                              "outside a submodule)")
        if method and isinstance(target, str):  # h.relu(), h.relu_()
            fn, in_place = METHODS.get(target.rstrip("_")), target.endswith("_")
        else:  # F.relu(h), torch.relu_(h)
            fn, in_place = INPLACE.get(target, target), target in INPLACE
        if fn in ACTIVATIONS and args:
            layer, inplace = activation(fn, tuple(args[1:]), kwargs, where)
            return [(node.name, layer, [arg(args[0])])], inplace or in_place
        raise unsupported(f"{where}: the operation '{name_of(target)}'")

    def _sum(self, node: str, terms: list[tuple[str, float]], info: dict[str, Info], where: str) -> list:
        """Steps of ``sum_t c_t h_t``: equal nodes merged into one scaled node; the others must
        be uncorrelated (the module docstring)."""
        coef: dict[str, float] = {}
        for h, c in terms:
            coef[h] = coef.get(h, 0.0) + c
        names = list(coef)
        if len(names) == 1:
            return [(node, Scale(coef[names[0]]), names)]
        for a, b in itertools.combinations(names, 2):
            (sa, za), (sb, zb) = info[a], info[b]
            shared = sa & sb
            if shared:
                origin = "the input" if INPUT in shared else "the same weight layer's output"
                raise unsupported(
                    f"{where}: the sum of '{a}' and '{b}'",
                    f"both are functions of {origin} with no weight layer of their own between, so they are "
                    "correlated and the sum of their kernels is not the kernel of their sum (a residual "
                    "x + f(x) converts when f ends with its own Linear/Conv layer)",
                )
            if not (za or zb):
                raise unsupported(
                    f"{where}: the sum of '{a}' and '{b}'",
                    "neither branch ends with its own Linear/Conv layer (both end with a nonlinearity), so their "
                    "means do not vanish and the sum of their kernels misses the product of the means",
                )
        self._sums[node] = names
        steps, ins = [], []
        for i, h in enumerate(names):
            if coef[h] == 1.0:
                ins.append(h)
            else:
                steps.append((f"{node}.scale{i}", Scale(coef[h]), [h]))
                ins.append(steps[-1][0])
        return steps + [(node, FanInSum(), ins)]

    def flow(self, start: Info) -> Info:
        """The origins and zero-mean flag of the output for those of the input ``start``."""
        info: dict[str, Info] = {}
        for node, layer, args in self.steps:
            if layer == "input":
                info[node] = start
            elif isinstance(layer, (FanInSum, FanInConcat)):
                ins = [info[a] for a in args]
                info[node] = (frozenset().union(*(i[0] for i in ins)), all(i[1] for i in ins))
            else:
                info[node] = flow(layer, info[args[0]])
        return info[self.output]

    def __repr__(self) -> str:
        body = ", ".join(f"{node}={layer!r}" for node, layer, _ in self.steps[1:])
        return f"graph[{self._title}]({body})"

    def _shapes(self, input_shape: Shapes) -> dict[str, Shapes]:
        shapes: dict[str, Shapes] = {}
        for node, layer, args in self.steps:
            if layer == "input":
                shapes[node] = input_shape
                continue
            try:
                shapes[node] = layer.output_shape(_inputs(shapes, layer, args))
            except (SpecError, ShapeError) as err:
                raise type(err)(named(f"node '{node}' of {self._title}", err)) from None
        return shapes

    def output_shape(self, input_shape: Shapes) -> Shapes:
        return self._shapes(input_shape)[self.output]

    def _needs(self, input_shape: Shapes, out_full: Any) -> tuple[dict[str, Shapes], dict[str, bool]]:
        """Shapes and whether each node's output must be in the full layout (a backward pass)."""
        shapes = self._shapes(input_shape)
        need = {node: False for node, _, _ in self.steps}
        need[self.output] = any_full(out_full)
        for node, layer, args in reversed(self.steps):
            if layer == "input":
                continue
            flags = layer.needs_full(_inputs(shapes, layer, args), need[node])
            for a, f in zip(args, flags if isinstance(flags, list) else [flags]):
                need[a] = need[a] or any_full(f)
        return shapes, need

    def needs_full(self, input_shape: Shapes, out_full: Any) -> Any:
        return self._needs(input_shape, out_full)[1][self.steps[0][0]]

    def _kernel(self, k: Any, out_full: Any) -> Any:
        shapes, need = self._needs(k.shape, out_full)
        env: dict[str, Kernel] = {}
        for node, layer, args in self.steps:
            if layer == "input":
                env[node] = k
                continue
            ins = [env[a] for a in args]
            if not any_full(layer.needs_full(_inputs(shapes, layer, args), need[node])):
                ins = [_spatial.to_diagonal(x) for x in ins]
            inner = layer.inner if isinstance(layer, Checked) else layer
            if isinstance(inner, ElementwiseLayer) and args[0] in self._sums and not ins[0].is_gaussian:
                raise SpecError(self._post_activation(node, args[0], env))
            try:
                env[node] = layer._kernel(ins if isinstance(layer, (FanInSum, FanInConcat)) else ins[0], need[node])
            except (SpecError, ShapeError) as err:
                raise type(err)(named(f"node '{node}' of {self._title}", err)) from None
        return env[self.output]

    def kernel_rule(self, k: Any) -> Any:
        return self._kernel(k, False)

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        shapes = self._shapes(input_shape)
        return GraphModule(
            [(node, layer if layer == "input" else layer.make_module(_inputs(shapes, layer, args), generator, dtype, device),
              args, isinstance(layer, (FanInSum, FanInConcat)))
             for node, layer, args in self.steps],
            self.output,
        )

    def _post_activation(self, act: str, total: str, env: dict[str, Kernel]) -> str:
        """The message for a nonlinearity of a non-Gaussian sum, with the pre-activation form."""
        bad = [h for h in self._sums[total] if not env[h].is_gaussian]
        text = (
            f"from_module: node '{act}' of {self._title} applies a nonlinearity to the sum '{total}', whose branch "
            f"'{bad[0]}' is not Gaussian (a nonlinearity's output or the network's input, with no Linear/Conv layer "
            "after it): a nonlinearity of such a sum (a post-activation residual block, relu(x + f(x))) has no "
            "closed-form infinite-width rule. "
        )
        rewrite = _preactivation(self._module, act, total, bad[0]) if self.steps[0][0] == bad[0] else None
        if rewrite is None or env[bad[0]].is_input:
            return text + (
                "Keep the residual stream Gaussian: sum a Linear/Conv output with a branch that ends with its own "
                "Linear/Conv layer, and apply the nonlinearity at the start of the next branch (pre-activation form "
                "x + f(relu(x))), or estimate this model's kernel with torchntk.layers.monte_carlo_kernel"
            )
        return text + (
            "Its pre-activation form (He et al. 2016) converts: the nonlinearity moves to the start of the branch and "
            "the skip carries the sum itself (apply the nonlinearity once after the last block):\n" + rewrite
        )


def _preactivation(module: nn.Module, act: str, total: str, skip: str) -> str | None:
    """The code of ``module.forward`` rewritten from ``act(skip + f(skip))`` to
    ``skip + f(act(skip))``, or None if it cannot be traced again."""
    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception:  # noqa: BLE001 - the message then shows no code
        return None
    nodes = {n.name: n for n in gm.graph.nodes}
    if not {act, total, skip} <= set(nodes):
        return None
    x, a, s = nodes[skip], nodes[act], nodes[total]
    with gm.graph.inserting_after(x):
        pre = gm.graph.node_copy(a, lambda n: x)
    note = ""
    if "inplace" in pre.kwargs:  # at the start of the block an in-place call would change x itself
        pre.kwargs = {**pre.kwargs, "inplace": False}
    elif pre.op == "call_method" and str(pre.target).endswith("_"):
        pre.target = str(pre.target).rstrip("_")
    elif pre.op == "call_module" and getattr(gm.get_submodule(pre.target), "inplace", False) is True:
        note = (f"\n(self.{pre.target} is in place: at the start of the block it would change x; give that call "
                "a module with inplace=False)")
    for user in list(x.users):
        if user is not pre and user is not s:
            user.replace_input_with(x, pre)
    a.replace_all_uses_with(s)
    gm.graph.erase_node(a)
    gm.recompile()
    lines = (re.sub(r";\s+[\w ,=]+= None$", "", line) for line in gm.code.strip().splitlines())
    return "\n".join(line for line in lines if line.strip()) + note


def _inputs(shapes: dict[str, Shapes], layer: Layer, args: list[str]) -> Shapes:
    return [shapes[a] for a in args] if isinstance(layer, (FanInSum, FanInConcat)) else shapes[args[0]]


class GraphModule(nn.Module):
    """Runs the traced steps on the finite modules (``merge``: the step takes a list of inputs)."""

    def __init__(self, steps: list[tuple[str, Any, list[str], bool]], output: str) -> None:
        super().__init__()
        self.steps_ = [(node, args, merge) for node, _, args, merge in steps]
        self.inputs = {node for node, mod, _, _ in steps if mod == "input"}
        self.mods = nn.ModuleDict({node.replace(".", "_part"): mod for node, mod, _, _ in steps if mod != "input"})
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, Any] = {}
        for node, args, merge in self.steps_:
            if node in self.inputs:
                env[node] = x
                continue
            ins = [env[a] for a in args]
            env[node] = self.mods[node.replace(".", "_part")](ins if merge else ins[0])
        return env[self.output]

