"""Kernel-drift tracker for your own training loop.

Every ``every`` steps, :class:`DriftTracker` computes the empirical NTK of the model on a fixed
probe batch (``mode="mean"``, an ``(P, P)`` float64 matrix ``Theta_t``) and records

- the relative drift from the first record: ``||Theta_t - Theta_0||_F / ||Theta_0||_F``;
- the kernel-target alignment ``<Theta_t, Y Y^T>_F / (||Theta_t||_F ||Y Y^T||_F)`` when probe
  targets ``Y`` ``(P, O)`` are given (1 means the kernel's top direction is the target);
- the kernel's Frobenius norm and trace.

In the lazy (wide) regime the drift stays small and falls as ``width^(-1/2)``; a drift of order
one means the network left the kernel regime. The model is put in ``eval()`` mode while its
kernel is computed and restored afterwards; parameters are not changed. The kernel sums over
the parameters that required grad at the first record, every time: freezing a layer later
(``requires_grad_(False)``) stops it from moving but does not take it out of the kernel, so
an unchanged network has drift 0.

Example:
    >>> net = torchntk.nn.MLP(2, [256, 256], 1).double()
    >>> x, y = torch.randn(32, 2, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> with DriftTracker(net, x[:8], y[:8], every=10) as tracker:
    ...     for step in range(50):
    ...         opt.zero_grad(); ((net(x) - y) ** 2).mean().backward(); opt.step()
    ...         tracker.step()
    >>> tracker.history["drift"][-1] < 0.5
    True
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from .._checks import check_finite, check_nonempty_batch, check_tensor
from ..empirical import empirical_ntk
from ..empirical._functional import OutputSelector, check_output_selector
from ..errors import InvalidArgumentError, ShapeError
from .figures import tracker_figure

__all__ = ["DriftTracker"]


class DriftTracker:
    """Record the empirical NTK on a probe batch every ``every`` training steps.

    Args:
        model: the network being trained (any ``nn.Module`` that ``torchntk.empirical_ntk`` takes).
        probe_x: ``(P, ...)`` probe inputs, kept fixed for the whole run (``P`` of 8 to 64 is plenty).
        probe_y: optional ``(P,)`` or ``(P, O)`` targets for the kernel-target alignment.
        every: record every ``every`` calls of :meth:`step` (``>= 1``).
        keep_kernels: keep every recorded ``(P, P)`` kernel in :attr:`kernels` (memory ``P^2`` each).
        output: which tensor of the model's output the kernel is of (as in
            ``torchntk.empirical_ntk``: a key or attribute name, an index or a function).

    Use it as a context manager (records at entry and, if the last step was not recorded, at
    exit) or call :meth:`record` yourself. :attr:`history` holds lists ``step``, ``drift``,
    ``alignment``, ``norm``, ``trace``; :attr:`seconds` the time spent computing kernels.
    """

    def __init__(
        self,
        model: nn.Module,
        probe_x: torch.Tensor,
        probe_y: torch.Tensor | None = None,
        *,
        every: int = 10,
        keep_kernels: bool = False,
        output: OutputSelector = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidArgumentError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        check_nonempty_batch("probe_x", check_finite("probe_x", check_tensor("probe_x", probe_x)))
        if probe_y is not None:
            check_finite("probe_y", check_tensor("probe_y", probe_y))
            if probe_y.shape[0] != probe_x.shape[0]:
                raise ShapeError(
                    f"`probe_y` has {probe_y.shape[0]} rows but `probe_x` has {probe_x.shape[0]}"
                )
            probe_y = probe_y.reshape(probe_y.shape[0], -1).detach().double()
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise InvalidArgumentError(f"`every` must be an int >= 1, got {every!r}")
        self.model, self.probe_x, self.probe_y = model, probe_x.detach(), probe_y
        self.every, self.keep_kernels = every, keep_kernels
        self.output = check_output_selector(output)
        self.kernels: list[torch.Tensor] = []
        self.history: dict[str, list[float]] = {k: [] for k in ("step", "drift", "alignment", "norm", "trace")}
        self.seconds = 0.0
        self._count = 0
        self._theta0: torch.Tensor | None = None
        self._params: list[str] | None = None  # the kernel's parameters, fixed at the first record

    # -- the loop interface --
    def step(self) -> bool:
        """Count one training step; record if it is a multiple of ``every``. Returns whether it did."""
        self._count += 1
        if self._count % self.every == 0:
            self.record(self._count)
            return True
        return False

    def record(self, step: int | None = None) -> dict[str, float]:
        """Compute the probe kernel now and append its statistics; returns them."""
        start = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        if self._params is None:
            self._params = [n for n, p in self.model.named_parameters() if p.requires_grad]
        try:
            theta = empirical_ntk(
                self.model, self.probe_x, mode="mean", params=self._params, output=self.output
            ).detach().double()
        finally:
            self.model.train(was_training)
        if self._theta0 is None:
            self._theta0 = theta
        norm = float(torch.linalg.matrix_norm(theta))
        drift = float(torch.linalg.matrix_norm(theta - self._theta0) / torch.linalg.matrix_norm(self._theta0))
        alignment = float("nan")
        if self.probe_y is not None:
            yy = self.probe_y.to(theta.device) @ self.probe_y.to(theta.device).T
            denom = norm * float(torch.linalg.matrix_norm(yy))
            alignment = float((theta * yy).sum()) / denom if denom > 0 else float("nan")
        rec = {
            "step": self._count if step is None else int(step),
            "drift": drift,
            "alignment": alignment,
            "norm": norm,
            "trace": float(theta.trace()),
        }
        for key, value in rec.items():
            self.history[key].append(value)
        if self.keep_kernels:
            self.kernels.append(theta.cpu())
        self.seconds += time.perf_counter() - start
        return rec

    # -- context manager --
    def __enter__(self) -> "DriftTracker":
        if not self.history["step"]:
            self.record(self._count)
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None and self.history["step"] and self.history["step"][-1] != self._count:
            self.record(self._count)

    @property
    def drift(self) -> float:
        """The last recorded relative drift ``||Theta_t - Theta_0||_F / ||Theta_0||_F``."""
        return self.history["drift"][-1] if self.history["drift"] else float("nan")

    def plot(self, path: str | None = None):
        """A two-panel matplotlib figure (drift and alignment vs step); saved to ``path`` if given."""
        return tracker_figure(self.history, path)

    def __repr__(self) -> str:
        return f"DriftTracker(every={self.every}, records={len(self.history['step'])}, drift={self.drift:.3g})"
