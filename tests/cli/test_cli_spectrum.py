"""``torchntk spectrum`` refuses what is not a kernel and reports indefiniteness honestly."""

from __future__ import annotations

import json

import numpy as np

from torchntk.cli import main


def _orthogonal(n: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return q


def test_non_symmetric_kernel_is_refused(data, one_line_error):
    d = data
    k = np.array([[1.0, 3.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])  # its symmetric part has lambda_min -0.75
    np.savez(d / "k.npz", ntk=k)
    assert main(["spectrum", "--kernel", str(d / "k.npz"), "--out", str(d / "s.json")]) == 2
    assert "must be a symmetric kernel" in one_line_error()
    assert not (d / "s.json").exists()


def test_indefinite_kernel_is_reported_not_given_a_condition_number(data, capsys):
    d = data
    q = _orthogonal(5)
    lam = np.array([4.0, 2.0, 1.0, 0.5, -1.75])
    np.savez(d / "k.npz", ntk=(q * lam) @ q.T)
    assert main(["spectrum", "--kernel", str(d / "k.npz"), "--out", str(d / "s.json")]) == 0
    cap = capsys.readouterr()
    assert "INDEFINITE" in cap.out and "condition number =" not in cap.out
    assert "torchntk: warning:" in cap.err and "not positive semi-definite" in cap.err
    s = json.loads((d / "s.json").read_text())
    assert s["positive_semidefinite"] is False
    assert s["condition_number"] is None and s["max_stable_learning_rate"] is None
    # eigvalsh of a 5 x 5 matrix built from these eigenvalues: backward stable, error ~ 1e-15 * 4
    np.testing.assert_allclose(s["eigenvalues"], np.sort(lam)[::-1], atol=1e-13)


def test_round_off_negative_eigenvalue_is_psd(data, capsys):
    d = data
    q = _orthogonal(4, seed=1)
    lam = np.array([3.0, 2.0, 1.0, -1e-12])     # -3e-13 lambda_max: far inside the 1e-7 round-off band
    np.savez(d / "k.npz", ntk=(q * lam) @ q.T)
    assert main(["spectrum", "--kernel", str(d / "k.npz"), "--out", str(d / "s.json")]) == 0
    assert "warning" not in capsys.readouterr().err
    s = json.loads((d / "s.json").read_text())
    assert s["positive_semidefinite"] is True
    assert s["condition_number"] == "inf"                      # singular within round-off
    np.testing.assert_allclose(s["max_stable_learning_rate"], 2 * 4 / 3.0, rtol=1e-12)


def test_predict_refuses_non_symmetric_and_indefinite_kernels(data, one_line_error):
    d = data
    q = _orthogonal(12, seed=2)
    lam = np.linspace(1.0, 3.0, 12)
    good = (q * lam) @ q.T
    bad = {"asym": good + np.triu(np.ones((12, 12)), 1), "indefinite": good - 2.5 * np.eye(12)}
    for name, k in bad.items():
        np.savez(d / f"{name}.npz", ntk=k)
        assert main(["predict", "--kernel", str(d / f"{name}.npz"), "--data", str(d / "train.npz"),
                     "--out", str(d / "p.npz")]) == 2
        err = one_line_error()
        assert ("symmetric" if name == "asym" else "positive semi-definite") in err, err
    assert not (d / "p.npz").exists()
