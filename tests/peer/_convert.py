"""Layout conversion shared by the peer-agreement tests."""

from __future__ import annotations

import numpy as np
import torch


def to_peer(x: torch.Tensor) -> np.ndarray:
    """Channels-first torch batch ``(N, C, *spatial)`` -> channels-last numpy batch (flat as is)."""
    a = x.numpy()
    return a if a.ndim == 2 else np.moveaxis(a, 1, -1)
