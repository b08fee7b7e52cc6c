"""Architecture specs with exact infinite-width NNGP and NTK kernels.

One description gives both the finite network and its infinite-width kernels::

    from torchntk import layers as L
    spec = L.serial(L.Dense(512, b_std=0.1), L.Relu(), L.Dense(1, b_std=0.1))
    k = spec.kernel(x1, x2)          # Kernel with .nngp and .ntk (float64)
    net = spec.module(x1.shape[1:])  # the finite nn.Module, NTK-parameterized

The layer names and arguments follow neural-tangents' ``stax`` (with PyTorch's channels-first
layout). See ``docs/infinite-width.md``.
"""

from ._base import Layer
from ._elementwise import ElementwiseLayer
from .attention import GlobalSelfAttention
from .conv import Conv
from .combinators import FanInConcat, FanInProd, FanInSum, FanOut, Identity, parallel, repeat, serial
from .conv_local import ConvLocal
from .conv_transpose import ConvTranspose
from .dense import Dense
from .kernel import Kernel
from .from_module import from_module
from .graph import Aggregate
from .linear_maps import DotGeneral, ImageResize, Index, Slice
from .mlp import mlp
from .normalization import Dropout, LayerNorm
from .pooling import AvgPool, Flatten, GlobalAvgPool, GlobalSumPool, SumPool
from .special_activations import ExpNormalized, Gabor, Hermite, RectifiedMonomial

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
]

# -- nonlinearities and Monte Carlo kernels --------------------------------------------------------
from . import activations as _activations
from .activations import (
    ABRelu,
    Abs,
    Cos,
    Elementwise,
    ElementwiseNumerical,
    Erf,
    Exp,
    Gaussian,
    Gelu,
    LeakyRelu,
    Monomial,
    Polynomial,
    Rbf,
    Relu,
    Sigmoid_like,
    Sign,
    Sin,
)

from .monte_carlo import MonteCarloKernel, monte_carlo_kernel, monte_carlo_kernels

__all__ += list(_activations.__all__) + ["MonteCarloKernel", "monte_carlo_kernel", "monte_carlo_kernels"]
