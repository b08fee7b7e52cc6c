"""The demo: `torchntk demo --quick` end to end (physics checks), resuming, and the report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from torchntk.lab import LabConfig, run_demo


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """Run `torchntk demo --quick` once in a subprocess; returns (folder, seconds, stdout)."""
    out = tmp_path_factory.mktemp("demo") / "results"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torchntk.cli", "demo", "--quick", "--out", str(out),
                           "--no-progress", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, seconds, proc.stdout


def test_quick_demo_physics(quick_demo):
    out, seconds, stdout = quick_demo
    print(f"demo --quick took {seconds:.1f} s")   # the budget is 60 s on two idle cores
    res = json.loads((out / "metrics.json").read_text())
    m = res["metrics"]
    assert m["convergence"]["fig1_max_abs_error_vs_reference"] <= 1e-8
    assert -0.7 <= m["convergence"]["slope"] <= -0.35
    assert m["drift"]["slope"] <= -0.4
    assert m["agreement"]["improving_with_width"]
    assert m["agreement"]["cost_non_increasing"]
    assert m["modes"]["learned_in_eigenvalue_order"]
    assert m["modes"]["rates_within_allowance"]
    assert m["generalization"]["kernel_regression_accuracy_t_inf"] >= 0.85
    assert min(m["generalization"]["network_test_accuracy_final"].values()) >= 0.85
    assert m["finite"]["corrected_tracks_monte_carlo"], m["finite"]
    assert all(c["passed"] for c in res["checks"]), res["checks"]
    assert "PASS" in stdout and "report.html" in stdout
    # every check's value is printed whole (rounded numbers, no cut): the decay rates' dict closes
    line = next(ln for ln in stdout.splitlines() if "decay rates" in ln)
    assert line.rstrip().endswith("]}") and "allowed" in line


def test_report_is_self_contained(quick_demo):
    out, _, _ = quick_demo
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6
    assert "src=\"http" not in html and "<script" not in html
    for name in ("convergence", "drift", "agreement", "modes", "generalization"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000
        assert f"id='{name}'" in html
    assert (out / "figures" / "finite_width.png").stat().st_size > 10_000 and "id='finite'" in html


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_headless_chromium(quick_demo, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    out, _, _ = quick_demo
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,2400", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists(), "chromium wrote no screenshot"
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(shot)[..., :3]
    assert img.shape[0] >= 2000 and img.shape[1] >= 1100
    # figures are drawn: many distinct colours (plot lines) beyond the page's greys
    rgb = (img * 255).astype(int)
    colourful = np.abs(rgb[..., 0] - rgb[..., 2]) > 60
    assert colourful.mean() > 0.002


def _tiny(**kw) -> LabConfig:
    return LabConfig.preset(
        quick=True, conv_widths=(16, 32, 64), conv_seeds=2, conv_points=6, fig1_widths=(64,), fig1_seeds=1,
        fig1_angles=9, sweep_widths=(16, 32), sweep_seeds=1, steps=20, track_every=10, n_test=8,
        digits_train=60, digits_test=60, digits_widths=(32,), digits_steps=10, **kw)


def test_interrupted_demo_resumes(tmp_path, monkeypatch):
    from torchntk.lab import sweep

    real = sweep.run
    cfg = _tiny(studies=("convergence", "drift", "modes"))

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_demo(tmp_path, cfg, progress=False, log=None)
    assert (tmp_path / "studies" / "convergence.json").exists()      # finished before the interrupt
    monkeypatch.setattr(sweep, "run", real)
    res = run_demo(tmp_path, cfg, progress=False, log=None)
    assert res["resumed"] == ["convergence"]
    assert set(res["metrics"]) == {"convergence", "drift", "modes"}
    os.remove(tmp_path / "figures" / "modes.png")                    # missing figures are redrawn
    monkeypatch.setattr(sweep, "run", interrupt)                     # nothing is recomputed now
    res = run_demo(tmp_path, cfg, progress=False, log=None)
    assert len(res["resumed"]) == 3 and (tmp_path / "figures" / "modes.png").exists()
    assert "read from disk" in (tmp_path / "report.html").read_text()


def test_determinism_under_seed():
    import numpy as np

    from torchntk.lab import convergence, sweep

    bars = lambda total, desc: __import__("tqdm").tqdm(total=total, disable=True)  # noqa: E731
    cfg = _tiny()
    a, b = convergence.run(cfg, bars)[1], convergence.run(cfg, bars)[1]
    np.testing.assert_array_equal(a["errors"], b["errors"])
    c = convergence.run(_tiny(seed=3), bars)[1]
    assert not np.array_equal(a["errors"], c["errors"])
    s1, s2 = sweep.run(cfg, bars), sweep.run(cfg, bars)
    np.testing.assert_array_equal(s1["f_train"], s2["f_train"])
    np.testing.assert_array_equal(s1["thetaT"], s2["thetaT"])
