"""Default NTKRegressor / NTKClassifier against tuned RBF-kernel baselines (5-fold CV).

Data (scikit-learn's loaders), standardized inside each training fold (``StandardScaler`` in a
pipeline):

- ``diabetes`` (442 x 10, regression, R^2): ``NTKRegressor()`` against ``KernelRidge(rbf)``
  (grid over ``alpha`` x ``gamma``, inner 5-fold CV) and ``GaussianProcessRegressor``
  (``C * RBF(ARD length scales) + White`` with ``normalize_y``; its kernel hyperparameters are
  fitted by its own marginal-likelihood optimizer with 3 restarts);
- ``breast_cancer`` (569 x 30) and ``wine`` (178 x 13), classification accuracy:
  ``NTKClassifier()`` against ``SVC(rbf)`` (grid over ``C`` x ``gamma``) and
  ``KernelRidge(rbf)`` on one-hot targets (arg-max; grid over ``alpha`` x ``gamma``).

The NTK estimators run with their defaults (every hyperparameter fitted by marginal
likelihood inside ``fit``). Outer folds: ``KFold``/``StratifiedKFold(5, shuffle=True,
random_state=0)``. Reported: mean (std) score over the folds and the mean ``fit`` time per fold,
wall clock and process CPU time (for the baselines, the whole grid search).

Run (from the repository root)::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/estimators.py --threads 1
    PYTHONPATH=src .venv/bin/python benchmarks/estimators.py --quick       # 2 folds, wine only
    PYTHONPATH=src .venv/bin/python benchmarks/estimators.py --threads 1   # torch threads
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

GAMMAS = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
ALPHAS = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
CS = [0.1, 1.0, 10.0, 100.0, 1000.0]


def _one_hot_ridge():
    """KernelRidge(rbf) on one-hot targets, predicting the arg-max (a classifier for the table)."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class OneHotRidge(ClassifierMixin, BaseEstimator):
        def __init__(self, alpha: float = 1.0, gamma: float = 0.1) -> None:
            self.alpha, self.gamma = alpha, gamma

        def fit(self, X, y):
            from sklearn.kernel_ridge import KernelRidge

            self.classes_ = np.unique(y)
            Y = (y[:, None] == self.classes_[None]).astype(float)
            self.model_ = KernelRidge(kernel="rbf", alpha=self.alpha, gamma=self.gamma).fit(X, Y)
            return self

        def predict(self, X):
            return self.classes_[np.argmax(self.model_.predict(X), axis=1)]

    return OneHotRidge()


def _contenders(task: str) -> dict:
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from torchntk.sklearn import NTKClassifier, NTKRegressor

    def grid(est, params):
        return GridSearchCV(est, params, cv=5, n_jobs=1)

    if task == "regression":
        gpr = GaussianProcessRegressor(ConstantKernel() * RBF(np.ones(10)) + WhiteKernel(), normalize_y=True,
                                       n_restarts_optimizer=3, random_state=0)
        return {
            "NTKRegressor()": make_pipeline(StandardScaler(), NTKRegressor()),
            "KernelRidge(rbf), grid": make_pipeline(
                StandardScaler(), grid(KernelRidge(kernel="rbf"), {"alpha": ALPHAS, "gamma": GAMMAS})),
            "GaussianProcessRegressor(ARD RBF)": make_pipeline(StandardScaler(), gpr),
        }
    return {
        "NTKClassifier()": make_pipeline(StandardScaler(), NTKClassifier()),
        "SVC(rbf), grid": make_pipeline(StandardScaler(), grid(SVC(kernel="rbf"), {"C": CS, "gamma": GAMMAS})),
        "KernelRidge(rbf) one-hot, grid": make_pipeline(
            StandardScaler(), grid(_one_hot_ridge(), {"alpha": ALPHAS, "gamma": GAMMAS})),
    }


def _data(name: str):
    from sklearn import datasets

    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return X.astype(np.float64), y, ("regression" if name == "diabetes" else "classification")


def run(names: list[str], folds: int) -> list[dict]:
    from sklearn.model_selection import KFold, StratifiedKFold

    rows = []
    for name in names:
        X, y, task = _data(name)
        split = (KFold if task == "regression" else StratifiedKFold)(folds, shuffle=True, random_state=0)
        for label, model in _contenders(task).items():
            scores, times, cpu = [], [], []
            for tr, te in split.split(X, y):
                t0, c0 = time.perf_counter(), time.process_time()
                model.fit(X[tr], y[tr])
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                scores.append(model.score(X[te], y[te]))
            rows.append({"data": name, "model": label, "score": float(np.mean(scores)),
                         "std": float(np.std(scores)), "fit_s": float(np.mean(times)), "max_fit_s": float(np.max(times)),
                         "cpu_s": float(np.mean(cpu))})
            print(f"  {name:14s} {label:34s} {rows[-1]['score']:.4f} ({rows[-1]['std']:.3f})  "
                  f"fit {rows[-1]['fit_s']:.2f} s (max {rows[-1]['max_fit_s']:.2f}, cpu {rows[-1]['cpu_s']:.2f} s)",
                  flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| data (metric) | model | 5-fold score (std) | mean fit (wall) | mean fit (CPU) | gap to best baseline |",
             "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["data"] for r in rows):
        mine = [r for r in rows if r["data"] == name and r["model"].startswith("NTK")]
        base = [r for r in rows if r["data"] == name and not r["model"].startswith("NTK")]
        best = max(r["score"] for r in base)
        metric = "R^2" if name == "diabetes" else "accuracy"
        for r in mine + base:
            gap = f"{r['score'] - best:+.4f}" if r in mine else ""
            lines.append(f"| {name} ({metric}) | {r['model']} | {r['score']:.4f} ({r['std']:.3f}) | "
                         f"{r['fit_s']:.2f} s | {r['cpu_s']:.2f} s | {gap} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 folds, wine only (a smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--data", default="diabetes,breast_cancer,wine", help="comma-separated data sets")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["wine"] if args.quick else [n.strip() for n in args.data.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    rows = run(names, 2 if args.quick else 5)
    print()
    print(table(rows))
    print(f"\nload average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
