"""The one kernel validation (torchntk._kernel_checks): shapes, finiteness, symmetry and PSD within
the tolerances its module doc justifies, on kernels built to pass and to fail each check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchntk import layers as L
from torchntk._kernel_checks import (PSD_RTOL, SYM_RTOL, check_eigenvalues, check_kernel, eigh_psd,
                                     pinv_eigenvalues)
from torchntk.errors import InvalidArgumentError, NonFiniteError, ShapeError

DT = torch.float64


def _gram(n=6, d=3, seed=0):
    x = torch.randn(n, d, dtype=DT, generator=torch.Generator().manual_seed(seed))
    return x @ x.T


def test_symmetric_within_tolerance_is_accepted_and_symmetrized():
    k = _gram()
    bumped = k.clone()
    bumped[0, 1] += 0.5 * SYM_RTOL[DT] * float(k.abs().max())  # below the tolerance
    out = check_kernel("kernel", bumped)
    assert torch.equal(out, out.T) and out.dtype == DT
    torch.testing.assert_close(out, k, rtol=0, atol=SYM_RTOL[DT] * float(k.abs().max()))
    # numpy input and float32 input (tolerance of float32)
    k32 = k.float()
    k32[2, 3] += 5e-6 * float(k32.abs().max())
    assert check_kernel("kernel", k32.numpy()).dtype == DT


def test_each_check_names_the_argument():
    k = _gram()
    with pytest.raises(ShapeError, match="`ntk_train_train` must be a square"):
        check_kernel("ntk_train_train", k[:, :5])
    with pytest.raises(ShapeError, match="`k` is empty"):
        check_kernel("k", torch.zeros(0, 0, dtype=DT))
    nan = k.clone()
    nan[1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="`kernel`"):
        check_kernel("kernel", nan)
    skew = k.clone()
    skew[0, 1] += 1.0
    with pytest.raises(InvalidArgumentError, match="`kernel` must be a symmetric kernel"):
        check_kernel("kernel", skew)
    with pytest.raises(InvalidArgumentError, match=r"diagonal entry 3 is -1"):
        check_kernel("kernel", k - torch.diag(torch.diagonal(k)) - torch.eye(6, dtype=DT) * (torch.arange(6) == 3))
    two = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=DT)  # eigenvalues 3 and -1
    with pytest.raises(InvalidArgumentError, match=r"\|K\[0, 1\]\| = 2 exceeds .*Cauchy-Schwarz"):
        check_kernel("kernel", two)
    check_kernel("kernel", two, psd=False)  # the PSD conditions are optional


def test_indefinite_with_valid_minors_needs_the_eigenvalues():
    # equicorrelation -0.6 on 3 points: every 2 x 2 minor is 1 - 0.36 > 0, but 1 + 2 rho = -0.2
    k = torch.full((3, 3), -0.6, dtype=DT) + 1.6 * torch.eye(3, dtype=DT)
    check_kernel("kernel", k)
    with pytest.raises(InvalidArgumentError, match="smallest eigenvalue -0.2"):
        eigh_psd("kernel", k, DT)


def test_round_off_negatives_are_zero_and_real_kernels_of_duplicates_pass():
    # a rank-3 Gram: its zero eigenvalues come out of LAPACK as +-1e-16 lam_max; they are clamped
    lam, q = eigh_psd("kernel", check_kernel("kernel", _gram(8)), DT)
    assert float(lam.min()) == 0.0 and int((lam > 1e-12 * lam[-1]).sum()) == 3
    # the arc-cosine rules at correlation 1 (duplicate inputs) amplify a rounding to ~sqrt(eps):
    # still within PSD_RTOL
    x = torch.randn(20, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    x = torch.cat([x, x[:5], x[:5] * (1 + 1e-12)])
    k = L.mlp(64, 3, b_std=0.1).kernel(x)
    for kern in (k.nngp, k.ntk):
        eigh_psd("kernel", check_kernel("kernel", kern), DT)
    # just beyond the tolerance is refused
    top = torch.tensor([-1.01 * PSD_RTOL[DT], 0.5, 1.0], dtype=DT)
    with pytest.raises(InvalidArgumentError):
        check_eigenvalues("kernel", top, DT)
    inside = torch.tensor([-0.99 * PSD_RTOL[DT], 0.5, 1.0], dtype=DT)
    assert float(check_eigenvalues("kernel", inside, DT)[0]) == 0.0


def test_pseudo_inverse_cut_is_numpys():
    k = _gram(8).numpy()
    lam, q = eigh_psd("kernel", torch.from_numpy(k), DT)
    pinv = (q * pinv_eigenvalues(lam)) @ q.T
    # numpy's pinv keeps the same 3 modes: the two agree to the conditioning of those modes
    np.testing.assert_allclose(pinv.numpy(), np.linalg.pinv(k, hermitian=True), rtol=1e-9, atol=1e-9)


def test_spec_kernel_never_returns_a_non_finite_kernel_silently():
    # W_std = 1e120 twice: Sigma = W^2 (W^2 q / 2) overflows float64 (1e480) for finite inputs
    spec = L.serial(L.Dense(4, W_std=1e120), L.Relu(), L.Dense(1, W_std=1e120))
    x = torch.randn(5, 3, dtype=DT, generator=torch.Generator().manual_seed(0))
    # the first Dense gives 1e240 q, the ReLU halves it, the second Dense overflows: it is named
    named = r"layer 2 of the serial spec, Dense\(1, W_std=1e\+120.* non-finite .* in `nngp`"
    with pytest.raises(NonFiniteError, match=named):
        spec.kernel(x)
    with pytest.raises(NonFiniteError, match=named):
        spec.kernel(x, torch.randn(40, 3, dtype=DT), block_size=8)  # the blocked path too
    # a spec that is no serial: the entry and the spec are named
    lone = L.serial(L.Dense(4, W_std=1e120), L.Relu(), L.Dense(1, W_std=1e120)).layers[-1]
    with pytest.raises(NonFiniteError, match=r"25 non-finite .* in `nngp` .* pair of inputs \(0, 0\).*Dense\(1"):
        lone.kernel(x * 1e160)
    # the same spec at a representable scale is finite and equals its closed form's scaling
    # (Dense and ReLU are positively homogeneous: Sigma scales with W_std^4 exactly)
    small = L.serial(L.Dense(4, W_std=1e10), L.Relu(), L.Dense(1, W_std=1e10)).kernel(x)
    unit = L.serial(L.Dense(4), L.Relu(), L.Dense(1)).kernel(x)
    torch.testing.assert_close(small.nngp, 1e40 * unit.nngp, rtol=1e-13, atol=0)
