"""Study (e): generalization on scikit-learn's digits, networks against kernel predictions.

Digits (8x8 images, 64 features, 10 classes), inputs centred and scaled to ``||x||^2 = n0`` (so
that ``Sigma_0(x, x) = 1``), one-hot targets. ReLU networks of a few widths are trained by
full-batch gradient descent on ``C``; their held-out classification error over time is compared
with the kernel prediction of ``torchntk.dynamics.mse`` from ``Theta_inf`` (``f0`` = the network's
outputs at init, and ``f0 = 0``, the mean over initializations), and with kernel regression at
``t = infinity``: ``f(x) = Theta(x, X) Theta^{-1} y``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..layers import mlp
from . import _backend as B
from .figures import figure, save
from .training import train_full_batch

TITLE = "Generalization on digits"
EXPLANATION = (
    "Ten-class digits (scikit-learn), one-hot targets, trained with the MSE cost. Left: "
    "held-out classification error over training time of ReLU networks (dots) and of the "
    "closed-form kernel prediction from Theta_inf started from each network's own initial "
    "outputs (lines); the dashed line is infinite-time kernel regression with Theta_inf "
    "(f0 = 0). Right: held-out RMSE between each network's outputs and its Theta_inf "
    "prediction along training: wider networks follow the kernel more closely."
)


def load(cfg) -> dict[str, np.ndarray]:
    """Train/held-out split of digits, preprocessed (float64 inputs, one-hot targets)."""
    from sklearn.datasets import load_digits

    X, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng([cfg.seed, 4])
    perm = rng.permutation(len(X))
    tr, te = perm[: cfg.digits_train], perm[cfg.digits_train: cfg.digits_train + cfg.digits_test]
    X = X / 16.0
    X = X - X[tr].mean(0)
    X = X / np.linalg.norm(X, axis=1, keepdims=True) * np.sqrt(X.shape[1])
    Y = np.eye(10)[labels]
    return {"x_train": X[tr], "x_test": X[te], "y_train": Y[tr], "y_test": Y[te],
            "labels_train": labels[tr], "labels_test": labels[te]}


def _error(f: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Classification error of outputs ``(..., M, 10)`` against ``labels`` ``(M,)``."""
    return (f.argmax(-1) != labels).mean(-1)


def run(cfg, progress) -> tuple[dict, dict]:
    d = load(cfg)
    xtr, xte = torch.from_numpy(d["x_train"]), torch.from_numpy(d["x_test"])
    ytr = torch.from_numpy(d["y_train"])
    spec_inf = mlp(1, cfg.digits_depth, 10, b_std=cfg.b_std)
    K = B.infinite_ntk(spec_inf, xtr)
    Kt = B.infinite_ntk(spec_inf, xte, xtr)
    N = len(xtr)
    lr = cfg.digits_lr_scale * N / float(torch.linalg.eigvalsh(K)[-1])
    # log-spaced recordings (the figure's time axis is logarithmic), plus every record_every-th step
    record = np.union1d(np.unique(np.geomspace(1, cfg.digits_steps, 25).astype(int)),
                        np.arange(0, cfg.digits_steps + 1, cfg.digits_record_every))
    steps_t = torch.from_numpy(record.astype(np.float64))
    _, f_inf = B.mse_predictor(K, ytr, f0_train=None, learning_rate=None)(float("inf"), Kt)
    acc_inf = 1.0 - float(_error(f_inf.cpu().numpy(), d["labels_test"]))
    _, f_mean = B.mse_predictor(K, ytr, f0_train=None, learning_rate=lr)(steps_t, Kt)
    err_mean = _error(f_mean.cpu().numpy(), d["labels_test"])
    W = len(cfg.digits_widths)
    net_err = np.zeros((W, len(record)))
    pred_err = np.zeros((W, len(record)))
    rmse = np.zeros((W, len(record)))
    train_err = np.zeros((W, len(record)))
    bar = progress(total=W, desc="digits")
    for i, w in enumerate(cfg.digits_widths):
        spec = mlp(w, cfg.digits_depth, 10, b_std=cfg.b_std)
        seed = int(np.random.SeedSequence([cfg.seed, 5, w]).generate_state(1)[0])
        net = B.build_module(spec, xtr.shape[1], seed)
        traj = train_full_batch(net, xtr, ytr, learning_rate=lr, steps=cfg.digits_steps,
                                record_steps=record, x_test=xte)
        pred = B.mse_predictor(K, ytr, f0_train=torch.from_numpy(traj.f_train[0]), learning_rate=lr)
        _, f_pred = pred(steps_t, Kt, torch.from_numpy(traj.f_test[0]))
        f_pred = f_pred.cpu().numpy()
        net_err[i] = _error(traj.f_test, d["labels_test"])
        train_err[i] = _error(traj.f_train, d["labels_train"])
        pred_err[i] = _error(f_pred, d["labels_test"])
        rmse[i] = np.sqrt(np.mean((traj.f_test - f_pred) ** 2, axis=(-2, -1)))
        del net
        bar.update()
    bar.close()
    metrics = {
        "n_train": N, "n_test": len(xte),
        "kernel_regression_accuracy_t_inf": acc_inf,
        "network_test_accuracy_final": {str(w): 1 - float(net_err[i, -1]) for i, w in enumerate(cfg.digits_widths)},
        "kernel_prediction_accuracy_final": {str(w): 1 - float(pred_err[i, -1]) for i, w in enumerate(cfg.digits_widths)},
        "mean_prediction_accuracy_final": 1 - float(err_mean[-1]),
        "rmse_network_vs_kernel_final": {str(w): float(rmse[i, -1]) for i, w in enumerate(cfg.digits_widths)},
        "training_time": float(lr * cfg.digits_steps),
    }
    arrays = {"t": record * lr, "widths": np.asarray(cfg.digits_widths), "net_err": net_err,
              "pred_err": pred_err, "mean_err": err_mean, "rmse": rmse, "train_err": train_err,
              "acc_inf": np.asarray(acc_inf)}
    return metrics, arrays


def plot(arrays: dict, metrics: dict, fig_dir) -> list:
    fig, (ax1, ax2) = figure(2)
    t = arrays["t"]
    ts = np.maximum(t, t[1] / 2)  # log time axis: step 0 drawn at half the first recorded time
    for i, w in enumerate(arrays["widths"]):
        ax1.plot(ts, arrays["net_err"][i], "o", ms=3, color=f"C{i}", label=f"network n = {int(w)}")
        ax1.plot(ts, arrays["pred_err"][i], "-", color=f"C{i}", label=r"$\Theta_\infty$ prediction, its $f_0$")
        ax2.plot(ts[1:], arrays["rmse"][i][1:], "-", color=f"C{i}", label=f"n = {int(w)}")  # 0 at t = 0
    ax1.plot(ts, arrays["mean_err"], "k-", lw=1, alpha=0.6, label=r"$\Theta_\infty$ prediction, $f_0 = 0$")
    ax1.axhline(1 - float(arrays["acc_inf"]), color="k", ls="--", label=r"kernel regression, $t=\infty$")
    ax1.set_xscale("log")
    ax1.set_xlabel(r"training time $t = \eta k$ (log)")
    ax1.set_ylabel("held-out classification error")
    ax1.set_title("digits: test error over training")
    ax1.legend(fontsize=7)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel(r"training time $t = \eta k$ (log)")
    ax2.set_ylabel("held-out RMSE(network, prediction)")
    ax2.set_title(r"network vs its $\Theta_\infty$ prediction")
    ax2.legend(fontsize=7)
    return [save(fig, f"{fig_dir}/generalization.png")]
