"""Kernel-drift tracker for your own training loop.

Every ``every`` steps, :class:`DriftTracker` computes the empirical NTK of the model on a fixed
probe batch (``mode="mean"``, an ``(P, P)`` float64 matrix ``Theta_t``) and records

- the relative drift from the first record: ``||Theta_t - Theta_0||_F / ||Theta_0||_F``;
- the kernel-target alignment ``<Theta_t, Y Y^T>_F / (||Theta_t||_F ||Y Y^T||_F)`` when probe
  targets ``Y`` ``(P, O)`` are given (1 means the kernel's top direction is the target);
- the kernel's Frobenius norm and trace.

In the lazy (wide) regime the drift stays small and falls as ``width^(-1/2)``; a drift of order
one means the network left the kernel regime. The tracker raises an alarm (a
:class:`~torchntk.errors.DriftWarning`, once, and :attr:`DriftTracker.alarm` with the step) the
first time the drift passes ``drift_limit``, or, when a ``prediction`` of the probe outputs is
given (e.g. from :func:`torchntk.dynamics.mse`), the first time the relative gap
``||f_t(probe) - prediction(t)||_F / max(||prediction(t)||_F, ||f_0(probe)||_F)`` passes
``gap_limit``. The model is put in ``eval()`` mode while its
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

import math
import time
import warnings
from typing import Any, Callable

import torch
from torch import nn

from .._checks import check_finite, check_nonempty_batch, check_tensor
from ..empirical import empirical_ntk
from ..empirical._functional import OutputSelector, check_output_selector, select_output
from ..errors import DriftWarning, InvalidArgumentError, ShapeError
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
        drift_limit: the relative drift above which the network is flagged as out of the
            kernel regime (default 0.1: the kernel moved by a tenth of its size, so predictions
            made with the initial kernel are off by terms of that relative size); ``None``: off.
        prediction: optional ``prediction(step) -> (P, O)`` tensor, the kernel prediction of the
            probe outputs at that step (for example ``lambda k: pred(float(k), ntk_probe_train,
            f0_probe)[1]`` with ``pred = torchntk.dynamics.mse(..., learning_rate=lr)``).
        gap_limit: the relative gap between the network's probe outputs and ``prediction`` above
            which it is flagged (default 0.1).

    Use it as a context manager (records at entry and, if the last step was not recorded, at
    exit) or call :meth:`record` yourself. :attr:`history` holds lists ``step``, ``drift``,
    ``alignment``, ``norm``, ``trace`` and ``gap`` (NaN without a ``prediction``);
    :attr:`seconds` the time spent computing kernels; :attr:`alarm` is None, or a dict
    ``{"step", "reason" ("drift" or "gap"), "value", "limit"}`` for the first record past a limit.
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
        drift_limit: float | None = 0.1,
        prediction: Callable[[int], torch.Tensor] | None = None,
        gap_limit: float = 0.1,
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
        for name, limit in (("drift_limit", drift_limit), ("gap_limit", gap_limit)):
            if limit is not None and not (isinstance(limit, (int, float)) and not isinstance(limit, bool)
                                          and math.isfinite(limit) and limit > 0):
                raise InvalidArgumentError(f"`{name}` must be a number > 0 (or None), got {limit!r}")
        if prediction is not None and not callable(prediction):
            raise InvalidArgumentError(f"`prediction` must be a callable step -> (P, O) tensor, got {prediction!r}")
        self.drift_limit, self.prediction, self.gap_limit = drift_limit, prediction, gap_limit
        self.alarm: dict[str, Any] | None = None
        self._f0: torch.Tensor | None = None
        self.model, self.probe_x, self.probe_y = model, probe_x.detach(), probe_y
        self.every, self.keep_kernels = every, keep_kernels
        self.output = check_output_selector(output)
        self.kernels: list[torch.Tensor] = []
        self.history: dict[str, list[float]] = {k: [] for k in ("step", "drift", "alignment", "norm", "trace", "gap")}
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
        step = self._count if step is None else int(step)
        try:
            theta = empirical_ntk(
                self.model, self.probe_x, mode="mean", params=self._params, output=self.output
            ).detach().double()
            gap = self._gap(step) if self.prediction is not None else float("nan")
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
            "step": step,
            "drift": drift,
            "alignment": alignment,
            "norm": norm,
            "trace": float(theta.trace()),
            "gap": gap,
        }
        for key, value in rec.items():
            self.history[key].append(value)
        self._check_limits(rec)
        if self.keep_kernels:
            self.kernels.append(theta.cpu())
        self.seconds += time.perf_counter() - start
        return rec

    def _gap(self, step: int) -> float:
        """Relative gap of the probe outputs to the prediction at ``step`` (model in eval mode)."""
        with torch.no_grad():
            out = self.model(self.probe_x)
        f = select_output(out, self.output).detach().double().reshape(self.probe_x.shape[0], -1)
        if self._f0 is None:
            self._f0 = f
        want = torch.as_tensor(self.prediction(step)).detach().double().to(f.device)
        if want.numel() != f.numel():
            raise ShapeError(f"`prediction({step})` has shape {tuple(want.shape)}; the probe outputs are {tuple(f.shape)}")
        scale = max(float(torch.linalg.vector_norm(want)), float(torch.linalg.vector_norm(self._f0)), 1e-300)
        return float(torch.linalg.vector_norm(f - want.reshape(f.shape))) / scale

    def _check_limits(self, rec: dict[str, float]) -> None:
        if self.alarm is not None:
            return
        for reason, limit in (("drift", self.drift_limit), ("gap", self.gap_limit if self.prediction else None)):
            if limit is not None and rec[reason] > limit:
                self.alarm = {"step": rec["step"], "reason": reason, "value": rec[reason], "limit": limit}
                what = "kernel drift" if reason == "drift" else "gap to the kernel prediction"
                warnings.warn(
                    f"the network left its kernel regime at step {rec['step']}: {what} {rec[reason]:.3g} > "
                    f"{reason}_limit={limit:g}; predictions from the initial kernel no longer describe it",
                    DriftWarning, stacklevel=3)
                return

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
