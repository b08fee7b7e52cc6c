"""NTK-vector products of a model, without forming the Jacobian or the kernel (private).

For a network ``f(theta, x) (N, O)`` with Jacobian ``J (N*O, P)``::

    Theta V = J (J^T V)                        (mode "full", V (N*O, m))
    Theta_mean v = (1/O) sum_a J_a (J_a^T v)   (mode "mean", v (N, m); J_a: rows of output a)

``J^T V`` is a vector-Jacobian product (``torch.func.vjp``) accumulated over chunks of the
inputs; ``J u`` a Jacobian-vector product (``torch.func.jvp``) per chunk. Memory: the
parameters, one parameter-space vector per column, and one chunk of activations.

Private: the public entry point is :meth:`torchntk.scale.KernelOperator.from_model`. The model
is seen through :func:`torchntk.empirical._functional.make_functional`, so parameter selection,
output selection and the train-mode guard are those of ``empirical_ntk``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import jvp, vjp, vmap

from .._checks import check_choice
from ..empirical._functional import OutputSelector, ParamSelector, make_functional


class ModelNtvp:
    """``matmat(V) = Theta V`` for ``model`` on inputs ``x`` (see module doc)."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, *, mode: str = "full", chunk: int = 1024,
                 params: ParamSelector = None, output: OutputSelector = None) -> None:
        check_choice("mode", mode, ("full", "mean"))
        self.x, self.mode, self.chunk = x.detach(), mode, max(1, int(chunk))
        self.fm = make_functional(model, params, output)
        self.params = self.fm.params
        self.out_dim = self.fm.probe(self.x, "x")
        self.dtype = self.fm.dtype
        n = x.shape[0]
        self.size = n * self.out_dim if mode == "full" else n

    def _f2(self, params: dict, xb: torch.Tensor) -> torch.Tensor:
        return self.fm(params, xb)

    def _jt(self, cot: torch.Tensor) -> dict:
        """``J^T cot`` for a batch of cotangents ``cot (m, N, O)``: parameter-shaped ``(m, ...)``."""
        acc = None
        for s in range(0, self.x.shape[0], self.chunk):
            xb = self.x[s : s + self.chunk]
            _, pull = vjp(lambda p: self._f2(p, xb), self.params)
            (g,) = vmap(pull)(cot[:, s : s + self.chunk])
            acc = g if acc is None else {k: acc[k] + g[k] for k in acc}
        return acc

    def _j(self, tangents: dict) -> torch.Tensor:
        """``J t`` for a batch of parameter-space tangents ``(m, ...)``: ``(m, N, O)``."""
        parts = []
        for s in range(0, self.x.shape[0], self.chunk):
            xb = self.x[s : s + self.chunk]

            def push(t: dict, xb: torch.Tensor = xb) -> torch.Tensor:
                return jvp(lambda p: self._f2(p, xb), (self.params,), (t,))[1]

            parts.append(vmap(push)(tangents))
        return torch.cat(parts, 1)

    def matmat(self, V: np.ndarray) -> np.ndarray:
        """``Theta V``: V ``(size, m)`` float64 -> ``(size, m)`` float64."""
        n, o = self.x.shape[0], self.out_dim
        Vt = torch.as_tensor(np.ascontiguousarray(V.T), dtype=self.dtype, device=self.x.device)  # (m, size)
        m = Vt.shape[0]
        if self.mode == "full":
            out = self._j(self._jt(Vt.reshape(m, n, o))).reshape(m, n * o)
        else:
            out = torch.zeros(m, n, dtype=self.dtype, device=self.x.device)
            for a in range(o):
                cot = torch.zeros(m, n, o, dtype=self.dtype, device=self.x.device)
                cot[:, :, a] = Vt
                out += self._j(self._jt(cot))[:, :, a]
            out /= o
        return out.T.detach().cpu().double().numpy()
