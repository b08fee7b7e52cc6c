"""The lab's finite-width study on a tiny configuration: its figures and its check."""

from __future__ import annotations

import numpy as np
import pytest

from torchntk.lab import LabConfig, finite_width
from torchntk.lab.studies import REGISTRY

pytest.importorskip("matplotlib")


class _Bar:
    def update(self, *a):
        pass

    def close(self):
        pass


def test_finite_study_tiny(tmp_path):
    cfg = LabConfig.preset(quick=True, finite_widths=(32, 64), finite_depths=(2, 3), finite_samples=400,
                           finite_budget=3_000_000, finite_drift_widths=(32,), finite_drift_steps=10)
    assert REGISTRY["finite"].module is finite_width
    metrics, arrays = finite_width.run(cfg, lambda total, desc: _Bar())
    # the infinite-width value of both ratios is 0; Monte Carlo sees them (3 standard errors)
    assert np.all(arrays["rho_mc"] > 3 * arrays["rho_se"])
    assert metrics["cells_checked"] >= 2 and metrics["corrected_tracks_monte_carlo"], metrics
    # exact ReLU NNGP ratio: prod(1 + 5/n) - 1 over the hidden layers
    np.testing.assert_allclose(arrays["kurt_exact"][1, 0], (1 + 5 / 32) ** 2 - 1, rtol=1e-12)
    assert arrays["drift_measured"][0, 0] == 0 and arrays["drift_measured"][0, -1] > 0
    paths = finite_width.plot(arrays, metrics, tmp_path)
    assert paths[0].stat().st_size > 10_000
    fp = cfg.fingerprint("finite")
    assert fp["finite_widths"] == [32, 64] and "finite_drift_steps" in fp
