"""What one ``empirical_ntk`` call chose and used: the report of ``return_report=True``.

The report names the implementation that ran and why (the cost model's estimates of every
implementation considered, and the reasons others were left out or failed), the tiling (block
size, number of tiles) and the memory: the budget, where it came from, and the planner's
estimate of the peak (``fixed + 2 b * per_example + b^2 * per_pair`` bytes, see
:mod:`._blocks`). ``str(report)`` is a short readable summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .._memory import MAX_DEFAULT, MIN_DEFAULT, format_memory as _bytes


@dataclass
class Estimate:
    """The cost model's figures for one implementation: flops of the whole kernel and the
    least memory it needs (blocks of one example), in bytes."""

    name: str
    flops: float
    min_bytes: float


@dataclass
class EmpiricalNTKReport:
    """What an :func:`~torchntk.empirical_ntk` call did.

    Attributes:
        implementation: the implementation that computed the kernel (``"structured"``,
            ``"jacobian"``, ``"ntvp"``, ``"autograd"`` or ``"structured+autograd"``).
        requested: the ``implementation`` argument.
        estimates: the cost model's :class:`Estimate` of every implementation planned, in the
            order ``"auto"`` tries them (cheapest first among those that fit the budget, then
            the fallbacks that need less of the model); one for an explicit implementation.
        left_out: implementations ``"auto"`` did not try, with the reason.
        failed: implementations that failed at run time in this call, with the operation.
        n1, n2, out_dim: the kernel's examples and outputs.
        block: examples per block; tiles: the number of tiles computed (a symmetric kernel
            computes the upper ones only).
        budget: the memory budget in bytes; budget_source: ``"memory"`` (given), ``"default"``
            (:func:`torchntk._memory.default_memory`) or ``"block_size"`` (given; the budget
            then only ranks the implementations).
        peak_bytes: the planner's estimate of the peak memory of the tiling.
        seconds: wall time of the call.
    """

    implementation: str
    requested: str
    estimates: list[Estimate]
    left_out: dict[str, str]
    failed: dict[str, str]
    n1: int
    n2: int
    out_dim: int
    block: int
    tiles: int
    budget: int
    budget_source: str
    peak_bytes: float
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        source = {
            "memory": "given as `memory`",
            "default": (f"default: a quarter of the available memory, within "
                        f"[{_bytes(MIN_DEFAULT)}, {_bytes(MAX_DEFAULT)}]"),
            "block_size": "blocks set by `block_size`",
        }[self.budget_source]
        lines = [
            f"empirical_ntk: {self.n1} x {self.n2} examples, {self.out_dim} output(s): "
            f"implementation {self.implementation!r} (requested {self.requested!r}), "
            f"{self.seconds:.3g} s",
        ]
        ran = [e.name for e in self.estimates].index(self.implementation)
        for k, e in enumerate(self.estimates):
            mark = "ran" if k == ran else ("failed" if e.name in self.failed else "not needed")
            lines.append(f"  {e.name:<20} {e.flops:.3g} flops, needs >= {_bytes(e.min_bytes)}: {mark}")
        for name, why in self.left_out.items():
            lines.append(f"  {name:<20} left out: {why}")
        for name, why in self.failed.items():
            lines.append(f"  {name:<20} failed at {why}")
        lines.append(
            f"  blocks of {self.block} example(s), {self.tiles} tile(s); estimated peak "
            f"{_bytes(self.peak_bytes)} of a {_bytes(self.budget)} budget ({source})"
        )
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)
