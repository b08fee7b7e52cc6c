"""NTK-parameterized torch layers and the theory's fully connected network.

In NTK parameterization (the default) a layer stores standard-normal weights and scales them in
the forward pass::

    z = (W_std / sqrt(fan_in)) * W @ a + b_std * b,      W_ij ~ N(0, 1),  b_i ~ N(0, 1)

With ``parameterization="standard"`` the scale moves into the initialization instead
(``W ~ N(0, W_std^2 / fan_in)``, ``b ~ N(0, b_std^2)``, ``z = W a + b``): the same function at
initialization, a different NTK. ``b_std=None`` (or 0) means the layer has no bias parameter.

Each layer exposes ``weight_scale`` and ``bias_scale``, the factors applied in the forward pass,
so that ``z = weight_scale * W a + bias_scale * b`` holds in both parameterizations; the
structured empirical NTK relies on it.
"""

from .activations import Erf, get_activation
from .conv import Conv1d, Conv2d
from .linear import Linear
from .mlp import MLP

__all__ = ["Linear", "Conv1d", "Conv2d", "MLP", "Erf", "get_activation"]
