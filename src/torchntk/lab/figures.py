"""Figure helpers of the lab (matplotlib with the Agg backend, imported lazily).

Every figure has labelled axes, a title and a legend; power laws are drawn on log-log axes with
the fitted slope and the theory's slope side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def plt():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as pyplot

    pyplot.rcParams.update({"figure.dpi": 100, "savefig.dpi": 110, "axes.grid": True, "grid.alpha": 0.3,
                            "font.size": 10, "axes.titlesize": 11})
    return pyplot


def figure(ncols: int = 1, *, width: float = 5.2, height: float = 3.8):
    """A new figure with ``ncols`` side-by-side axes; returns ``(fig, axes list)``."""
    fig, axes = plt().subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def save(fig, path: str | Path) -> Path:
    """Save ``fig`` as PNG at ``path`` and close it."""
    from matplotlib.ticker import NullFormatter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for ax in fig.axes:                      # log axes: label the decades only, never crowd them
        if ax.get_xscale() == "log":
            ax.xaxis.set_minor_formatter(NullFormatter())
        if ax.get_yscale() == "log":
            ax.yaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt().close(fig)
    return path


def fit_loglog(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of ``log y = slope * log x + intercept``; returns ``(slope, intercept)``."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(slope), float(intercept)


def power_law(ax, widths, values, *, label: str, color: str | None = None, spread=None,
              marker: str = "o", theory_slope: float | None = -0.5) -> tuple[float, float]:
    """Plot ``values`` vs ``widths`` on log-log axes with the fitted line (and the theory's slope).

    ``spread`` (optional, same shape as ``values``) draws error bars (e.g. the std over seeds).
    Returns the fitted ``(slope, intercept)``.
    """
    widths, values = np.asarray(widths, float), np.asarray(values, float)
    slope, icpt = fit_loglog(widths, values)
    line = ax.errorbar(widths, values, yerr=spread, fmt=marker, color=color, capsize=3,
                       label=f"{label} (fit slope {slope:+.2f})")
    c = line[0].get_color()
    grid = np.geomspace(widths.min(), widths.max(), 50)
    ax.plot(grid, np.exp(icpt) * grid**slope, "-", color=c, alpha=0.6)
    if theory_slope is not None:
        mid = np.exp(np.mean(np.log(widths)))
        anchor = np.exp(icpt) * mid**slope
        ax.plot(grid, anchor * (grid / mid) ** theory_slope, ":", color="gray", alpha=0.9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import NullFormatter

    ax.set_xticks(widths, [str(int(w)) for w in widths])
    ax.xaxis.set_minor_formatter(NullFormatter())
    return slope, icpt


def tracker_figure(history: dict, path: str | Path | None = None):
    """Drift and kernel-target alignment against the training step (a DriftTracker's history)."""
    fig, (ax1, ax2) = figure(2, width=4.6, height=3.4)
    steps = np.asarray(history["step"])
    ax1.plot(steps, history["drift"], "o-")
    ax1.set_xlabel("training step")
    ax1.set_ylabel(r"$\|\Theta_t-\Theta_0\|_F/\|\Theta_0\|_F$")
    ax1.set_title("kernel drift on the probe batch")
    ax2.plot(steps, history["alignment"], "o-", color="C1")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("kernel-target alignment")
    ax2.set_title("alignment with the probe targets")
    if path is not None:
        save(fig, path)
    return fig
