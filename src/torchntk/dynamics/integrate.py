"""Any differentiable loss: integrate the function-space dynamics with an adaptive ODE solver.

For a loss ``L(f, y)`` summed over the N training samples, the cost is ``C = (1/N) L`` and
gradient flow on the parameters moves a fixed-kernel network as

    df(X)/dt = -(1/N) Theta(X, X) grad_f L(f(X), y)
    df(x)/dt = -(1/N) Theta(x, X) grad_f L(f(X), y)        (test points ride along)

With squared loss ``L = (1/2) sum ||f - y||^2`` this is the closed form of
:func:`~torchntk.dynamics.mse`. Train and test outputs are integrated together by
``scipy.integrate.solve_ivp``, tight tolerances. ``method="auto"`` (the default) measures the
stiffness ``s = lam_max * t_end * c / N`` (``c`` the learning rate, 1 for gradient flow): the
number of time constants of the fastest mode. An explicit method needs on the order of ``s``
steps, so ``"auto"`` takes the explicit ``DOP853`` for ``s <= 1000`` and ``LSODA`` (which
switches to an implicit BDF method while the problem is stiff) beyond. A kernel with
eigenvalues 1e6 and 1e-3 integrated to ``t = 1e3`` then takes a fraction of a second where
``DOP853`` would take hours.

With a ``learning_rate`` at or above :func:`~torchntk.dynamics.max_learning_rate` (for
cross-entropy, whose softmax Hessian is at most ``max_i sum_a y_ia / 2``, twice that) the
gradient descent that the ODE stands for diverges: a
:class:`~torchntk.errors.StabilityWarning` says so (the ODE itself stays finite). A user loss
is checked against the squared-loss rate.

Momentum: a continuous-time version of heavy-ball momentum ``mu`` with learning rate ``eta``,
with ``t`` counting steps (``v`` the output velocity, ``v(0) = 0``):

    d^2 f/dt^2 + (1 - mu) df/dt = -(eta / N) Theta grad_f L

(it follows from ``f_{k+1} - f_k = mu (f_k - f_{k-1}) - (eta/N) Theta grad L`` for slowly
varying f). Without momentum a ``learning_rate`` only rescales time: ``t`` steps are gradient
flow time ``eta * t``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp

from .._checks import check_choice
from ..errors import InvalidArgumentError, SolverError
from . import _kernels as K
from .learning_rate import warn_if_unstable
from .closed_form import _check_rate

__all__ = ["ode", "ODEPredictor", "squared_loss", "cross_entropy_loss", "huber_loss"]

#: ``method="auto"``: the stiffness ``lam_max * t_end * c / N`` above which LSODA is used.
STIFFNESS = 1e3
METHODS = ("auto", "RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def squared_loss(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(1/2) sum ||f - y||^2`` (the cost of CONVENTIONS section 4 is this over N)."""
    return 0.5 * ((f - y) ** 2).sum()


def cross_entropy_loss(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``-sum_i sum_a y_ia log softmax(f_i)_a`` for ``(N, O)`` logits and target probabilities."""
    return -(y * torch.log_softmax(f, dim=-1)).sum()


def huber_loss(f: torch.Tensor, y: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """``sum h(f - y)``, ``h(r) = r^2/2`` for ``|r| <= delta``, else ``delta (|r| - delta/2)``."""
    return torch.nn.functional.huber_loss(f, y, reduction="sum", delta=delta)


_LOSSES: dict[str, LossFn] = {
    "mse": squared_loss,
    "squared": squared_loss,
    "cross_entropy": cross_entropy_loss,
    "huber": huber_loss,
}

# closed-form gradients d loss / d f of the named losses (no autograd in the ODE's inner loop)
_GRADS: dict[LossFn, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    squared_loss: lambda f, y: f - y,
    cross_entropy_loss: lambda f, y: torch.softmax(f, -1) * y.sum(-1, keepdim=True) - y,
    huber_loss: lambda f, y: (f - y).clamp(-1.0, 1.0),
}


def _autograd(loss: LossFn, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def grad(f: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            f = f.detach().requires_grad_(True)
            value = loss(f, y)
            if value.ndim != 0:
                raise InvalidArgumentError(
                    f"`loss` must return a scalar (summed over samples), got shape "
                    f"{tuple(value.shape)}"
                )
            (g,) = torch.autograd.grad(value, f, allow_unused=True)
        return torch.zeros_like(f) if g is None else g.detach()
    return grad


class ODEPredictor:
    """Predictions of fixed-kernel training under any loss; made by :func:`ode`.

    ``f_train, f_test = pred(t, ntk_test_train=None, f0_test=None)`` with the shapes of
    :class:`~torchntk.dynamics.MSEPredictor` (``t = inf`` is not supported here).
    """

    def __init__(self, kt, y, squeeze, f0, loss, learning_rate, momentum, method, rtol, atol, lam_max):
        self._kt, self.y, self._squeeze, self.f0 = kt, y, squeeze, f0
        self.n, self.o = kt.n, y.shape[1]
        self.loss = loss
        self.learning_rate, self.momentum = learning_rate, momentum
        self.method, self.rtol, self.atol = method, rtol, atol
        known = _GRADS.get(loss)
        self._grad = (lambda f: known(f, y)) if known is not None else _autograd(loss, y)
        self.lam_max = lam_max  # largest eigenvalue of the train kernel
        self.last_result = None  # scipy's OdeResult of the latest call
        self.last_method = None  # the solve_ivp method of the latest call

    def _apply(self, kernel: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """``kernel @ grad`` in the kernel's layout; returns (rows, O)."""
        if self._kt.full:
            return (kernel @ grad.reshape(-1)).reshape(-1, self.o)
        return kernel @ grad

    def __call__(self, t: Any, ntk_test_train: Any = None, f0_test: Any = None):
        ts, keep_t = K.times("t", t)
        if not bool(torch.isfinite(ts).all()):
            raise InvalidArgumentError("`t` must be finite for the ODE predictor (no t = inf)")
        kt = self._kt
        dev, dt = kt.matrix.device, kt.matrix.dtype
        kx = m = None
        f0x = None
        if ntk_test_train is not None:
            kx = K.cross_kernel("ntk_test_train", ntk_test_train, kt, self.o, dtype=dt, device=dev)
            m = kx.shape[0] // (self.o if kt.full else 1)
            f0x = (torch.zeros(m, self.o, dtype=dt, device=dev) if f0_test is None else
                   K.outputs_like("f0_test", f0_test, m, self.o, dtype=dt, device=dev))
        elif f0_test is not None:
            raise InvalidArgumentError("`f0_test` was given without `ntk_test_train`")

        n_tr = self.n * self.o
        n_te = 0 if m is None else m * self.o
        size = n_tr + n_te
        scale = 1.0 / self.n
        if self.learning_rate is not None:
            scale *= self.learning_rate
        mom = self.momentum

        def velocity(f_train: torch.Tensor) -> torch.Tensor:
            grad = self._grad(f_train)
            parts = [self._apply(kt.matrix, grad).reshape(-1)]
            if kx is not None:
                parts.append(self._apply(kx, grad).reshape(-1))
            return -scale * torch.cat(parts)

        def rhs(_s: float, state: np.ndarray) -> np.ndarray:
            z = torch.from_numpy(state).to(device=dev, dtype=dt)
            drive = velocity(z[:n_tr].reshape(self.n, self.o))
            if mom is None:
                return drive.cpu().numpy()
            v = z[size:]
            return torch.cat([v, drive - (1.0 - mom) * v]).cpu().numpy()

        z0 = [self.f0.reshape(-1)] + ([] if f0x is None else [f0x.reshape(-1)])
        state0 = torch.cat(z0)
        if mom is not None:
            state0 = torch.cat([state0, torch.zeros_like(state0)])
        order = torch.argsort(ts)
        t_sorted = ts[order].numpy()
        t_end = float(t_sorted[-1])
        if t_end == 0.0:
            ys = np.repeat(state0.cpu().numpy()[:, None], ts.shape[0], axis=1)
        else:
            method = self.method
            if method == "auto":
                method = "LSODA" if self.lam_max * t_end * scale > STIFFNESS else "DOP853"
            res = solve_ivp(rhs, (0.0, t_end), state0.cpu().numpy(), method=method,
                            t_eval=t_sorted, rtol=self.rtol, atol=self.atol)
            self.last_result, self.last_method = res, method
            if not res.success:
                raise SolverError(f"the ODE solver failed: {res.message}")
            ys = res.y
        sol = torch.empty(ts.shape[0], ys.shape[0], dtype=dt, device=dev)
        sol[order.to(dev)] = torch.from_numpy(np.ascontiguousarray(ys.T)).to(device=dev, dtype=dt)
        f_train = self._out(sol[:, :n_tr], self.n, keep_t)
        f_test = None if m is None else self._out(sol[:, n_tr:size], m, keep_t)
        return f_train, f_test

    def _out(self, z: torch.Tensor, rows: int, keep_t: bool) -> torch.Tensor:
        out = z.reshape(z.shape[0], rows, self.o)
        if self._squeeze:
            out = out[..., 0]
        return out if keep_t else out[0]


def ode(
    loss: str | LossFn,
    ntk_train_train: Any,
    y_train: Any,
    *,
    f0_train: Any = None,
    learning_rate: float | None = None,
    momentum: float | None = None,
    method: str = "auto",
    rtol: float = 1e-10,
    atol: float = 1e-12,
    dtype: torch.dtype = K.DEFAULT_DTYPE,
) -> ODEPredictor:
    """Predictor of fixed-kernel training under any differentiable loss, by an ODE solver.

    Args:
        loss: ``"mse"`` (``(1/2) sum ||f - y||^2``), ``"cross_entropy"`` (softmax over outputs,
            ``y`` as probabilities or one-hot), ``"huber"`` (delta 1), or a callable
            ``loss(f, y) -> scalar`` summed over samples (``f`` and ``y`` are ``(N, O)``);
            the cost is ``loss / N``.
        ntk_train_train: scalar ``(N, N)`` or full ``(N, N, O, O)`` kernel.
        y_train: ``(N, O)`` or ``(N,)`` targets.
        f0_train: initial outputs (zeros if None).
        learning_rate: with ``momentum``: heavy-ball step, ``t`` counts steps; alone: ``t``
            counts steps of gradient flow time ``eta`` each.
        momentum: ``mu`` in ``[0, 1)`` (continuous heavy-ball ODE, see the module docstring).
        method: ``"auto"`` (default: ``DOP853``, or ``LSODA`` for stiff problems, see the
            module docstring) or a ``scipy.integrate.solve_ivp`` method name.
        rtol, atol: passed to ``scipy.integrate.solve_ivp``.

    Returns:
        An :class:`ODEPredictor`; ``f_train, f_test = pred(t, ntk_test_train, f0_test)``.

    Example:
        >>> x = torch.randn(6, 2, dtype=torch.float64)
        >>> y = torch.nn.functional.one_hot(torch.arange(6) % 3).double()
        >>> pred = ode("cross_entropy", x @ x.T + 1, y)
        >>> pred(torch.tensor([0.0, 1.0, 10.0]))[0].shape
        torch.Size([3, 6, 3])
    """
    if isinstance(loss, str):
        check_choice("loss", loss, tuple(_LOSSES))
        loss_fn = _LOSSES[loss]
    elif callable(loss):
        loss_fn = loss
    else:
        raise InvalidArgumentError(f"`loss` must be a name or a callable, got {type(loss).__name__}")
    learning_rate, momentum = _check_rate(learning_rate, momentum)
    kt = K.train_kernel("ntk_train_train", ntk_train_train, dtype=dtype)
    dev = kt.matrix.device
    y, squeeze = K.targets("y_train", y_train, kt, dtype=dtype, device=dev)
    f0 = (torch.zeros_like(y) if f0_train is None else
          K.outputs_like("f0_train", f0_train, kt.n, y.shape[1], dtype=dtype, device=dev))
    if not (callable(loss_fn) and torch.isfinite(loss_fn(f0, y)).all()):
        raise InvalidArgumentError("`loss` is not finite at the initial outputs `f0_train`")
    if not isinstance(method, str) or method.lower() not in {m.lower() for m in METHODS}:
        check_choice("method", method, METHODS)
    method = next(m for m in METHODS if m.lower() == method.lower())
    lam_max = float(K.eigvalsh_psd("ntk_train_train", kt.matrix, kt.source_dtype)[-1])
    # the loss's curvature bounds the stable step: 1 for squared and Huber loss, at most
    # max_i sum_a y_ia / 2 for softmax cross-entropy
    curvature = 0.5 * float(y.sum(-1).abs().max()) if loss_fn is cross_entropy_loss else 1.0
    warn_if_unstable(learning_rate, momentum, lam_max * curvature, kt.n, "ode")
    return ODEPredictor(kt, y, squeeze, f0, loss_fn, learning_rate, momentum, method, rtol, atol, lam_max)
