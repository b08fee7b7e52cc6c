"""The registry of the demo's studies: their modules, the settings they depend on, their order.

Each study module has ``TITLE``, ``EXPLANATION`` and ``plot(arrays, metrics, folder)``, and
either ``run(config, progress)`` or, for the studies of the shared training sweep,
``compute(sweep_arrays)``; both return ``(metrics, arrays)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from . import agreement, convergence, drift, finite_width, generalization, modes


@dataclass(frozen=True)
class Study:
    """One study: its module, the :class:`~torchntk.lab.LabConfig` fields its results depend
    on (a finished study is reused only when they match), and whether it is computed from the
    shared training sweep."""

    module: ModuleType
    fields: tuple[str, ...]
    from_sweep: bool = False


#: The settings of the shared training sweep (``lab.sweep``).
SWEEP_FIELDS = ("seed", "sweep_depth", "b_std", "sweep_widths", "sweep_seeds", "n_train", "n_test", "steps",
                "record_every", "lr_scale", "track_every")

REGISTRY: dict[str, Study] = {
    "convergence": Study(convergence, ("seed", "depth", "b_std", "conv_widths", "conv_seeds", "conv_points",
                                       "fig1_widths", "fig1_seeds", "fig1_angles")),
    "drift": Study(drift, SWEEP_FIELDS, from_sweep=True),
    "agreement": Study(agreement, SWEEP_FIELDS, from_sweep=True),
    "modes": Study(modes, SWEEP_FIELDS, from_sweep=True),
    "generalization": Study(generalization, ("seed", "b_std", "digits_train", "digits_test", "digits_widths",
                                             "digits_depth", "digits_steps", "digits_lr_scale",
                                             "digits_record_every")),
    "finite": Study(finite_width, ("seed", "b_std", "finite_widths", "finite_depths", "finite_samples",
                                   "finite_budget", "finite_drift_widths", "finite_drift_train", "finite_drift_steps")),
}

#: The study names, in the order the demo runs them.
STUDIES = tuple(REGISTRY)
