"""NTK-vector products of a model, without forming the Jacobian or the kernel (private).

For a network ``f(theta, x) (N, O)`` with Jacobian ``J (N*O, P)``::

    Theta V = J (J^T V)                        (mode "full", V (N*O, m))
    Theta_mean v = (1/O) sum_a J_a (J_a^T v)   (mode "mean", v (N, m); J_a: rows of output a)

``J^T V`` is a vector-Jacobian product accumulated over chunks of the inputs, ``J u`` a
Jacobian-vector product per chunk: :func:`torchntk.empirical.ntvp.ntk_products`, the engine of
``empirical_ntk(implementation="ntvp")``. Memory: the
parameters, one parameter-space vector per column, and one chunk of activations.

Private: the public entry point is :meth:`torchntk.scale.KernelOperator.from_model`. The model
is seen through :func:`torchntk.empirical._functional.make_functional`, so parameter selection,
output selection and the train-mode guard are those of ``empirical_ntk``.
"""

from __future__ import annotations

import numpy as np
import torch
from .._checks import check_choice
from ..empirical._functional import OutputSelector, ParamSelector, make_functional
from ..empirical.ntvp import ntk_products


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

    def _theta(self, cot: torch.Tensor) -> torch.Tensor:
        """``Theta cot = J (J^T cot)`` for cotangents ``cot (m, N, O)``: ``(m, N, O)``."""
        return ntk_products(self.fm, self.x, self.x, cot, rows=self.chunk)

    def matmat(self, V: np.ndarray) -> np.ndarray:
        """``Theta V``: V ``(size, m)`` float64 -> ``(size, m)`` float64."""
        n, o = self.x.shape[0], self.out_dim
        Vt = torch.as_tensor(np.ascontiguousarray(V.T), dtype=self.dtype, device=self.x.device)  # (m, size)
        m = Vt.shape[0]
        if self.mode == "full":
            out = self._theta(Vt.reshape(m, n, o)).reshape(m, n * o)
        else:
            out = torch.zeros(m, n, dtype=self.dtype, device=self.x.device)
            for a in range(o):
                cot = torch.zeros(m, n, o, dtype=self.dtype, device=self.x.device)
                cot[:, :, a] = Vt
                out += self._theta(cot)[:, :, a]
            out /= o
        return out.T.detach().cpu().double().numpy()
