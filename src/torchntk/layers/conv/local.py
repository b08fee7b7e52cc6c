"""``ConvLocal``: the locally connected layer (a convolution with unshared weights).

Each output position ``o`` has its own filter ``W_o`` and bias ``b_o``:
``y[o] = (W_std / sqrt(C_in k)) sum_d W_o[d] pad(x)[s o + d] + b_std b_o``. At one position the
kernel is Conv's, ``Sigma'(o, o) = W_std^2 A[Sigma](o, o) + b_std^2`` (``A`` the window mean of
:mod:`.conv`); two different positions have independent weights and biases, so every pair
``o != o'`` has ``Sigma' = Theta' = 0``. The per-pixel layout holds the whole kernel; when the
full layout is asked for, the diagonal is embedded in zeros.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...nn import _init
from .. import _spatial
from .._core.protocol import Shapes, single
from .convolution import _ConvBase, window_mean_kernel
from ..dense.fully_connected import affine
from .._core.kernel import Kernel
from .._core.supports import Supports

__all__ = ["ConvLocal"]


def _embed_diagonal(t: torch.Tensor | None, lead: int, nsp: int) -> torch.Tensor | None:
    """``(lead..., S0, S1) -> (lead..., S0, S0', S1, S1')`` with zeros off the pixel diagonal."""
    if t is None:
        return None
    sizes = t.shape[lead:]
    out = t.reshape(*t.shape[:lead], *[d for n in sizes for d in (n, 1)])
    for a, n in enumerate(sizes):
        eye = torch.eye(n, dtype=t.dtype, device=t.device)
        shape = [1] * out.ndim
        shape[lead + 2 * a], shape[lead + 2 * a + 1] = n, n
        out = out * eye.reshape(shape)
    return out


class _ConvLocalModule(nn.Module):
    def __init__(
        self, c_in: int, c_out: int, filt: tuple[int, ...], strides: tuple[int, ...], padding: str,
        out_sizes: tuple[int, ...], W_std: Any, b_std: Any, parameterization: str,
        generator: Any, dtype: Any, device: Any,
    ) -> None:
        super().__init__()
        has_bias = _init.check_stds(W_std, b_std, parameterization)
        self.filt, self.strides, self.padding, self.out_sizes = filt, strides, padding, out_sizes
        fan_in = c_in * math.prod(filt)
        kw = {"dtype": dtype, "device": device}
        self.weight = nn.Parameter(torch.empty(math.prod(out_sizes), c_out, fan_in, **kw))
        self.bias = nn.Parameter(torch.empty(c_out, *out_sizes, **kw)) if has_bias else None
        self.weight_scale, self.bias_scale = _init.scales(W_std, b_std, fan_in, parameterization)
        _init.reset(self.weight, self.bias, W_std, b_std, fan_in, parameterization, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _spatial.pad_input(x, self.filt, self.strides, self.padding)
        if len(self.filt) == 1:
            patches = x.unfold(2, self.filt[0], self.strides[0]).permute(0, 2, 1, 3).flatten(2)  # (N, P, C k)
        else:
            patches = F.unfold(x, self.filt, stride=self.strides).transpose(1, 2)  # (N, P, C kh kw)
        y = torch.einsum("npf,pof->nop", patches, self.weight * self.weight_scale)
        y = y.reshape(x.shape[0], -1, *self.out_sizes)
        return y if self.bias is None else y + self.bias * self.bias_scale


class ConvLocal(_ConvBase):
    """Locally connected layer: a convolution whose filters and biases differ at every output
    position (neural-tangents' ``ConvLocal``; same arguments as :class:`~torchntk.layers.Conv`).

    Example:
        >>> from torchntk import layers as L
        >>> spec = L.serial(L.ConvLocal(64, 3, padding="SAME"), L.Relu(), L.Flatten(), L.Dense(1))
        >>> spec.kernel(torch.randn(2, 1, 6)).ntk.shape
        torch.Size([2, 2])
    """

    supports = Supports(masks=False, features="conv_local")

    def kernel_rule(self, k: Kernel) -> Kernel:
        filt, strides, sizes = self._geometry(k.shape)
        full, nsp = k.full_spatial, k.spatial_ndim
        k = window_mean_kernel(_spatial.to_diagonal(k), filt, strides, self.padding, paired=True)
        k = affine(k, self.W_std, self.b_std, k.shape[0] * math.prod(filt), self.parameterization,
                   out_shape=(self.out_chan, *sizes))
        if not full:
            return k
        return k.replace(
            nngp=_embed_diagonal(k.nngp, 2, nsp), ntk=_embed_diagonal(k.ntk, 2, nsp),
            cov1=_embed_diagonal(k.cov1, 1, nsp), cov2=_embed_diagonal(k.cov2, 1, nsp), diagonal_spatial=False,
        )

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        shape = single(self, input_shape)
        filt, strides, sizes = self._geometry(shape)
        return _ConvLocalModule(
            shape[0], self.out_chan, filt, strides, self.padding, sizes, self.W_std, self.b_std,
            self.parameterization, generator, dtype, device,
        )
