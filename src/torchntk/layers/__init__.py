"""Architecture specs with exact infinite-width NNGP and NTK kernels.

One description gives both the finite network and its infinite-width kernels::

    from torchntk import layers as L
    spec = L.serial(L.Dense(512, b_std=0.1), L.Relu(), L.Dense(1, b_std=0.1))
    k = spec.kernel(x1, x2)          # Kernel with .nngp and .ntk (float64)
    net = spec.module(x1.shape[1:])  # the finite nn.Module, NTK-parameterized

The layer names and arguments follow neural-tangents' ``stax`` (with PyTorch's channels-first
layout). See ``docs/infinite-width.md``.

The layers live in family subpackages (``dense``, ``conv``, ``pooling``, ``linear_maps``,
``attention``, ``graph``, ``normalization``, ``activations``, ``modules``) over a private core
(``_core``: the protocol, the kernel driver, the combinators, the :class:`Kernel` record) and
private layout modules (``_spatial``, ``_side``, ``_masking``); every public name is re-exported
here.
"""

from ._core.combinators import FanInConcat, FanInProd, FanInSum, FanOut, Identity, parallel, repeat, serial
from ._core.kernel import Kernel
from ._core.protocol import Layer
from .activations import (
    ABRelu,
    Abs,
    Cos,
    Elementwise,
    ElementwiseLayer,
    ElementwiseNumerical,
    Erf,
    Exp,
    ExpNormalized,
    Gabor,
    Gaussian,
    Gelu,
    Hermite,
    LeakyRelu,
    Monomial,
    Polynomial,
    Rbf,
    RectifiedMonomial,
    Relu,
    Sigmoid_like,
    Sign,
    Sin,
)
from .attention import GlobalSelfAttention
from .conv import Conv, ConvLocal, ConvTranspose
from .dense import Dense, mlp
from .graph import Aggregate
from .linear_maps import DotGeneral, ImageResize, Index, Slice
from .modules import MonteCarloKernel, from_module, monte_carlo_kernel, monte_carlo_kernels
from .normalization import Dropout, LayerNorm
from .pooling import AvgPool, Flatten, GlobalAvgPool, GlobalSumPool, SumPool

__all__ = [
    "Kernel",
    "Layer",
    "ElementwiseLayer",
    "serial",
    "repeat",
    "parallel",
    "FanOut",
    "FanInSum",
    "FanInProd",
    "FanInConcat",
    "Identity",
    "Dense",
    "mlp",
    "Conv",
    "ConvTranspose",
    "ConvLocal",
    "AvgPool",
    "SumPool",
    "GlobalAvgPool",
    "GlobalSumPool",
    "Aggregate",
    "Index",
    "Slice",
    "ImageResize",
    "DotGeneral",
    "Hermite",
    "RectifiedMonomial",
    "ExpNormalized",
    "Gabor",
    "Flatten",
    "LayerNorm",
    "Dropout",
    "GlobalSelfAttention",
    "from_module",
    "ABRelu",
    "Relu",
    "LeakyRelu",
    "Abs",
    "Sign",
    "Erf",
    "Sigmoid_like",
    "Gelu",
    "Sin",
    "Cos",
    "Rbf",
    "Exp",
    "Gaussian",
    "Monomial",
    "Polynomial",
    "Elementwise",
    "ElementwiseNumerical",
    "MonteCarloKernel",
    "monte_carlo_kernel",
    "monte_carlo_kernels",
]
