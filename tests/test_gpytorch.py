"""torchntk.gpytorch.NTKKernel: GPyTorch's own training reaches torchntk.gp.fit's optimum; BoTorch."""

from __future__ import annotations

import pytest
import torch

gpytorch = pytest.importorskip("gpytorch")

from torchntk import gp  # noqa: E402
from torchntk import layers as L  # noqa: E402
from torchntk.errors import InvalidArgumentError  # noqa: E402
from torchntk.gpytorch import NTKKernel  # noqa: E402

F64 = torch.float64


class _ExactGP(gpytorch.models.ExactGP):
    def __init__(self, x, y, likelihood, kernel):
        super().__init__(x, y, likelihood)
        self.mean, self.cov = gpytorch.means.ZeroMean(), kernel

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean(x), self.cov(x))


def _data(n=25):
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.rand(n, 2, generator=g, dtype=F64) - 1
    y = torch.sin(3 * x[:, 0]) + x[:, 1] ** 2 + 0.05 * torch.randn(n, generator=g, dtype=F64)
    return x, y


@pytest.mark.parametrize("kind", ["nngp", "ntk"])
def test_kernel_matrix_is_the_spec_kernel(kind):
    x, _ = _data(6)
    k = NTKKernel(3, kind=kind, hyperparameters={"W_std": 1.3, "b_std": 0.2})
    want = gp.spec_kernel(L.mlp(512, 3, W_std=1.3, b_std=0.2), x, kind=kind)
    torch.testing.assert_close(k(x).to_dense(), want, rtol=1e-12, atol=0)
    torch.testing.assert_close(k(x[:2], x).to_dense(), want[:2], rtol=1e-12, atol=0)
    torch.testing.assert_close(k(x, diag=True), want.diagonal(), rtol=1e-12, atol=0)
    batched = k(torch.stack([x, x.flip(0)])).to_dense()
    torch.testing.assert_close(batched[1], want.flip(0, 1), rtol=1e-12, atol=0)
    fixed = NTKKernel(L.serial(L.Dense(1), L.Erf(), L.Dense(1)), kind=kind)
    assert list(fixed.parameters()) == [] and fixed(x).shape == (6, 6)


def test_exact_gp_trained_by_gpytorch_reaches_the_fit_optimum():
    x, y = _data()
    lik = gpytorch.likelihoods.GaussianLikelihood(noise_constraint=gpytorch.constraints.GreaterThan(1e-9)).double()
    model = _ExactGP(x, y, lik, NTKKernel(3, kind="nngp")).double()
    model.train()
    lik.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, model)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=100, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -mll(model(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    with torch.no_grad():
        ours = float(mll(model(x), y)) * len(y)  # GPyTorch's value is divided by N
    res = gp.fit(lambda W_std, b_std: L.mlp(512, 3, W_std=W_std, b_std=b_std), x, y, {"W_std": 1.0, "b_std": 0.1},
                 kind="nngp", noise=0.01, restarts=0)
    assert abs(ours - res.log_marginal_likelihood) <= 1e-6 * abs(res.log_marginal_likelihood)


def test_botorch_single_task_gp_and_acquisition():
    pytest.importorskip("botorch")
    from botorch.acquisition import LogExpectedImprovement
    from botorch.models import SingleTaskGP
    from botorch.optim import optimize_acqf

    x, y = _data(8)
    model = SingleTaskGP(x, y[:, None], covar_module=NTKKernel(2, kind="ntk"))
    acq = LogExpectedImprovement(model, best_f=y.max())
    bounds = torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=F64)
    x_new, value = optimize_acqf(acq, bounds=bounds, q=1, num_restarts=2, raw_samples=8, options={"maxiter": 5})
    assert x_new.shape == (1, 2) and bool(torch.isfinite(value))
    assert bool(((x_new >= -1) & (x_new <= 1)).all())


def test_bad_arguments():
    with pytest.raises(InvalidArgumentError, match="kind"):
        NTKKernel(2, kind="rbf")
    with pytest.raises(InvalidArgumentError, match="spec_or_depth"):
        NTKKernel("deep")
    with pytest.raises(InvalidArgumentError, match="W_std"):
        NTKKernel(2, hyperparameters={"W_std": -1.0})


def test_kernels_pickle_with_their_hyperparameters():
    import pickle

    x, _ = _data(5)
    for k in (NTKKernel(3, hyperparameters={"W_std": 1.4, "b_std": 0.3}),
              NTKKernel(L.serial(L.Dense(1), L.Erf(), L.Dense(1)), kind="nngp")):
        back = pickle.loads(pickle.dumps(k))
        # the same object re-read: the same computation on the same values
        assert torch.equal(back(x).to_dense(), k(x).to_dense())
        assert {n: float(v) for n, v in back.hyperparameters().items()} == \
            {n: float(v) for n, v in k.hyperparameters().items()}
