"""``run_demo``: the five studies, their figures, JSON metrics and the HTML report.

Resumable: a study whose record (``studies/<name>.json``) is on disk with the current settings
is not recomputed, so an interrupted run is simply rerun. Deterministic under ``seed``: every
network is drawn from its own generator seeded from ``(seed, study, width, index)``.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import checks, sweep
from .config import LabConfig
from .report import write_report
from .results import ResultsDir, write_json
from .studies import REGISTRY


def _progress_factory(show: bool) -> Callable:
    from tqdm.auto import tqdm

    def make(total: int, desc: str):
        return tqdm(total=total, desc=f"  {desc}", disable=not show, leave=False, dynamic_ncols=True)

    return make


def run_demo(
    out: str | Path = "torchntk-results",
    config: LabConfig | None = None,
    *,
    progress: bool = True,
    force: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Run the studies of ``config`` into the folder ``out``; returns the combined metrics.

    Args:
        out: results folder (created; must be writable).
        config: the settings (``LabConfig.preset()`` for the full demo, ``preset(quick=True)``).
        progress: show tqdm progress bars (on stderr).
        force: recompute studies even when finished results are on disk.
        log: called with one line per study (``None`` for silence).

    Writes ``metrics.json``, ``studies/*.json``, ``data/*.npz``, ``figures/*.png`` and
    ``report.html``. The returned dict has ``metrics`` (per study), ``checks`` (the physics
    checks with ``passed`` flags), ``seconds`` and ``resumed`` (the studies read from disk).
    """
    cfg = config or LabConfig.preset()
    say = log or (lambda _msg: None)
    res = ResultsDir(out)
    bars = _progress_factory(progress)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    start = time.perf_counter()
    metrics, figures, seconds, resumed = {}, {}, {}, []
    sweep_arrays = None
    for name in cfg.studies:
        module = REGISTRY[name].module
        fp = cfg.fingerprint(name)
        record = None if force else res.finished(name, fp)
        if record is not None:
            arrays = res.load_arrays(name)
            paths = [res.figures / f for f in record["figures"]]
            if not all(p.exists() for p in paths):
                paths = module.plot(arrays, record["metrics"], res.figures)
            metrics[name], seconds[name] = record["metrics"], record["seconds"]
            figures[name] = [p.name for p in paths]
            resumed.append(name)
            say(f"[{name}] finished earlier: results read from {res.root / 'studies' / (name + '.json')}")
            continue
        t0 = time.perf_counter()
        if REGISTRY[name].from_sweep:
            if sweep_arrays is None:
                sweep_arrays = _sweep(res, cfg, bars, force)
            m, arrays = module.compute(sweep_arrays)
        else:
            m, arrays = module.run(cfg, bars)
        paths = module.plot(arrays, m, res.figures)
        seconds[name] = time.perf_counter() - t0
        res.save_arrays(name, arrays)
        res.save_record(name, {"study": name, "fingerprint": fp, "metrics": m,
                               "figures": [p.name for p in paths], "seconds": seconds[name]})
        metrics[name], figures[name] = m, [p.name for p in paths]
        say(f"[{name}] done in {seconds[name]:.1f} s")
    results = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
        "metrics": metrics,
        "checks": checks.evaluate(metrics),
        "seconds": seconds,
        "total_seconds": time.perf_counter() - start,
        "resumed": resumed,
        "figures": figures,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "numpy": np.__version__, "threads": torch.get_num_threads()},
    }
    write_json(res.root / "metrics.json", results)
    report = write_report(res.root, results)
    passed = sum(c["passed"] for c in results["checks"])
    say(f"{passed}/{len(results['checks'])} physics checks passed; report: {report}")
    return results


def _sweep(res: ResultsDir, cfg: LabConfig, bars, force: bool) -> dict:
    """The shared training sweep, read from disk when it was finished with the same settings."""
    fp = cfg.fingerprint("drift")
    if not force and res.finished("sweep", fp) is not None:
        return res.load_arrays("sweep")
    arrays = sweep.run(cfg, bars)
    res.save_arrays("sweep", arrays)
    res.save_record("sweep", {"study": "sweep", "fingerprint": fp, "metrics": {}, "figures": [], "seconds": 0})
    return arrays
