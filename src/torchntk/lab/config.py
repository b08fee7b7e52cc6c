"""The demo's settings: one frozen record, with a full and a quick preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import InvalidArgumentError
from .studies import REGISTRY, STUDIES


@dataclass(frozen=True)
class LabConfig:
    """Settings of the five studies (widths, seeds, data sizes, training steps).

    ``LabConfig.preset(quick=True)`` is the one-minute variant that the tests run;
    ``LabConfig.preset()`` is the full demo (a few minutes on two CPU cores).
    The learning rate is ``eta = lr_scale * N / lambda_max(Theta_inf)`` (stable below 2 N / lambda_max).
    """

    seed: int = 0
    quick: bool = False
    depth: int = 4                      # affine layers of the Fig. 1 network (convergence)
    b_std: float = 0.1                  # beta
    # (a) kernel convergence
    conv_widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    conv_seeds: int = 6
    conv_points: int = 12
    fig1_widths: tuple[int, ...] = (500, 10000)
    fig1_seeds: int = 3
    fig1_angles: int = 61
    # (b, c, d) one sweep of trained networks on points of the unit circle
    sweep_widths: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
    sweep_depth: int = 3
    sweep_seeds: int = 3
    n_train: int = 16
    n_test: int = 48
    steps: int = 300
    record_every: int = 5
    lr_scale: float = 0.5
    track_every: int = 20
    # (e) digits
    digits_train: int = 500
    digits_test: int = 500
    digits_widths: tuple[int, ...] = (128, 512)
    digits_depth: int = 3
    digits_steps: int = 200
    digits_lr_scale: float = 1.0
    digits_record_every: int = 10
    # (f) finite width: Monte Carlo networks per cell (cap, and weight entries drawn per cell), drift runs
    finite_widths: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
    finite_depths: tuple[int, ...] = (2, 4, 8)
    finite_samples: int = 3000
    finite_budget: int = 150_000_000
    finite_drift_widths: tuple[int, ...] = (64, 256, 1024)
    finite_drift_train: int = 8
    finite_drift_steps: int = 100
    studies: tuple[str, ...] = field(default=STUDIES)

    @classmethod
    def preset(cls, quick: bool = False, **overrides) -> "LabConfig":
        """The full demo (``quick=False``) or its quick variant, with ``overrides`` applied."""
        base = dict(quick=quick)
        if quick:
            base.update(
                conv_widths=(64, 128, 256, 512, 1024), conv_seeds=4, conv_points=10,
                fig1_widths=(500, 2000), fig1_seeds=2, fig1_angles=61,
                sweep_widths=(32, 64, 128, 256, 512), sweep_seeds=3, steps=150, track_every=10,
                n_test=32,
                digits_train=200, digits_test=300, digits_widths=(256,), digits_steps=150,
                finite_widths=(32, 64, 128), finite_depths=(2, 4), finite_samples=1000,
                finite_budget=10_000_000, finite_drift_widths=(64, 256), finite_drift_steps=40,
            )
        base.update(overrides)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(base) - names)
        if unknown:
            raise InvalidArgumentError(f"unknown lab setting(s): {', '.join(unknown)}")
        for key, value in list(base.items()):
            if isinstance(value, list):
                base[key] = tuple(value)
        cfg = cls(**base)
        bad = sorted(set(cfg.studies) - set(STUDIES))
        if bad:
            raise InvalidArgumentError(f"unknown study name(s) {bad}; expected some of {list(STUDIES)}")
        return cfg

    def fingerprint(self, study: str) -> dict:
        """The settings ``study`` depends on (JSON-ready); equal fingerprints mean reusable results."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in
                ((k, getattr(self, k)) for k in REGISTRY[study].fields)}
