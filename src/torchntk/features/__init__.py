"""Random features and sketches of the infinite-width NNGP and NTK (kernels at a million points).

``FeatureMap(spec, m)`` maps inputs to ``(N, ~m)`` feature matrices whose inner products
approximate the spec's exact kernels; the solvers here then train and predict in ``m``
dimensions (cost ``N m^2``) without ever forming an ``N x N`` kernel. See ``docs/features.md``.
"""

from .map import FeatureMap, FeatureRows, Features
from .error import FeatureError, expected_error, measure_error, relative_error
from .solvers import FeatureGram, FeatureMSE, FeatureRidge, gram, mse, ridge_regression

__all__ = [
    "FeatureMap",
    "FeatureRows",
    "Features",
    "FeatureGram",
    "FeatureMSE",
    "FeatureRidge",
    "gram",
    "mse",
    "ridge_regression",
    "FeatureError",
    "measure_error",
    "expected_error",
    "relative_error",
]
