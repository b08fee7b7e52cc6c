"""The pseudo-NTK (Mohamadi et al. 2023): the NTK of the sum of the outputs, divided by ``O``.

    pNTK(x, x') = (1/O) <d(sum_a f_a(x))/dtheta, d(sum_b f_b(x'))/dtheta>
                = (1/O) sum_a sum_b Theta[x, x', a, b]
                = mean_a Theta[x, x', a, a]  +  (1/O) sum_{a != b} Theta[x, x', a, b]

It costs one scalar output's kernel instead of ``O`` outputs'. The first term is
``empirical_ntk(..., mode="mean")``; the second, the off-diagonal output blocks, is zero in
expectation over initializations and vanishes at infinite width (for independent readout
weights it is ``O(n^-1/2)`` relative to the first at width ``n``), so the pseudo-NTK tends to the
same scalar kernel. At finite width, and after training has correlated the readout rows, it can
differ from the mean kernel by that term: compare them on a few examples before relying on it.
"""

from __future__ import annotations

import math

import torch

from ._functional import OutputSelector, select_output


class SummedOutput:
    """An output selector: the user's selected output ``(N, O)`` summed over ``O``, over ``sqrt(O)``
    (``(N,)``), so that its kernel is the pseudo-NTK. A class, so that it pickles."""

    def __init__(self, output: OutputSelector = None) -> None:
        self.output = output

    def __call__(self, out: object) -> torch.Tensor:
        f = select_output(out, self.output)
        f = f.reshape(f.shape[0], -1)
        return f.sum(-1) / math.sqrt(f.shape[-1])
