"""The trained networks shared by the drift, agreement and modes studies.

Data: ``n_train`` random angles on the unit circle, held-out points on an even grid of the
circle, targets ``y(gamma) = sin(2 gamma) + cos(gamma) / 2``. For each width and seed, the theory's
ReLU network (from a :mod:`torchntk.layers` spec) is trained by full-batch gradient descent on
``C = (1/(2N)) sum ||f - y||^2`` with ``eta = lr_scale * N / lambda_max(Theta_inf)``; recorded:
outputs over time, the cost at every step, the empirical NTK on the training points at
initialization and after training (and the held-out/train block at initialization), and a
:class:`~torchntk.lab.DriftTracker` history on the training points, with the step of its alarm
(the first record whose drift passed ``DRIFT_LIMIT``; -1 for none) in ``alarm_step``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..errors import DriftWarning
from ..layers import mlp
from . import _backend as B
from .tracker import DriftTracker
from .training import train_full_batch


#: The tracker's drift limit in the sweep (the default of DriftTracker).
DRIFT_LIMIT = 0.1


def target(gamma: np.ndarray) -> np.ndarray:
    """The regression target on the circle, ``sin(2 gamma) + cos(gamma) / 2``."""
    return np.sin(2 * gamma) + 0.5 * np.cos(gamma)


def data(cfg) -> dict[str, np.ndarray]:
    """Training and held-out points of the circle (float64)."""
    rng = np.random.default_rng([cfg.seed, 2])
    g_tr = np.sort(rng.uniform(-np.pi, np.pi, cfg.n_train))
    g_te = np.linspace(-np.pi, np.pi, cfg.n_test, endpoint=False)
    circle = lambda g: np.stack([np.cos(g), np.sin(g)], 1)  # noqa: E731
    return {"gamma_train": g_tr, "gamma_test": g_te, "x_train": circle(g_tr), "x_test": circle(g_te),
            "y_train": target(g_tr)[:, None], "y_test": target(g_te)[:, None]}


def run(cfg, progress) -> dict[str, np.ndarray]:
    """Train every network of the sweep; returns the arrays (see the module docstring)."""
    d = data(cfg)
    xtr, xte = torch.from_numpy(d["x_train"]), torch.from_numpy(d["x_test"])
    ytr = torch.from_numpy(d["y_train"])
    spec_inf = mlp(1, cfg.sweep_depth, 1, b_std=cfg.b_std)
    inf_tt = B.infinite_ntk(spec_inf, xtr)
    inf_st = B.infinite_ntk(spec_inf, xte, xtr)
    lam_max = float(torch.linalg.eigvalsh(inf_tt)[-1])
    lr = cfg.lr_scale * cfg.n_train / lam_max
    # every step at first (the fast modes decay within a few steps), then every record_every
    record = np.union1d(np.arange(0, min(20, cfg.steps + 1)), np.arange(0, cfg.steps + 1, cfg.record_every))
    W, S, T, N, M = len(cfg.sweep_widths), cfg.sweep_seeds, len(record), cfg.n_train, cfg.n_test
    out = {
        "f_train": np.zeros((W, S, T, N, 1)), "f_test": np.zeros((W, S, T, M, 1)),
        "cost": np.zeros((W, S, cfg.steps + 1)),
        "theta0": np.zeros((W, S, N, N)), "theta0_test": np.zeros((W, S, M, N)), "thetaT": np.zeros((W, S, N, N)),
        "alarm_step": np.full((W, S), -1),
    }
    track_steps, track_drift, track_align = None, [], []
    bar = progress(total=W * S, desc="training sweep")
    for i, w in enumerate(cfg.sweep_widths):
        spec = mlp(w, cfg.sweep_depth, 1, b_std=cfg.b_std)
        drifts, aligns = [], []
        for s in range(S):
            seed = int(np.random.SeedSequence([cfg.seed, 3, w, s]).generate_state(1)[0])
            net = B.build_module(spec, 2, seed)
            out["theta0"][i, s] = B.empirical_ntk(net, xtr).cpu().numpy()
            out["theta0_test"][i, s] = B.empirical_ntk(net, xte, xtr).cpu().numpy()
            tracker = DriftTracker(net, xtr, ytr, every=cfg.track_every, drift_limit=DRIFT_LIMIT)
            with tracker, warnings.catch_warnings():
                warnings.simplefilter("ignore", DriftWarning)  # the alarm is recorded, and reported by agreement
                traj = train_full_batch(net, xtr, ytr, learning_rate=lr, steps=cfg.steps,
                                        record_steps=record, x_test=xte, callback=lambda k: tracker.step())
            if tracker.alarm is not None:
                out["alarm_step"][i, s] = tracker.alarm["step"]
            out["thetaT"][i, s] = B.empirical_ntk(net, xtr).cpu().numpy()
            out["f_train"][i, s], out["f_test"][i, s], out["cost"][i, s] = traj.f_train, traj.f_test, traj.cost
            track_steps = np.asarray(tracker.history["step"])
            drifts.append(tracker.history["drift"])
            aligns.append(tracker.history["alignment"])
            del net
            bar.update()
        track_drift.append(np.mean(drifts, 0))
        track_align.append(np.mean(aligns, 0))
    bar.close()
    out.update(d)
    out.update({
        "widths": np.asarray(cfg.sweep_widths), "record_steps": record, "learning_rate": np.asarray(lr),
        "theta_inf": inf_tt.cpu().numpy(), "theta_inf_test": inf_st.cpu().numpy(),
        "track_steps": track_steps, "track_drift": np.asarray(track_drift), "track_alignment": np.asarray(track_align),
    })
    return out
