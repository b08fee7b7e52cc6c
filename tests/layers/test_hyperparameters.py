"""Layer hyperparameters as 0-dim tensors: the kernel is differentiable in them (gradcheck)."""

from __future__ import annotations

import pytest
import torch

from torchntk import layers as L
from torchntk.errors import InvalidArgumentError

F64 = torch.float64


def _p(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=F64, requires_grad=True)


def _mlp(w, b, alpha):
    return L.serial(L.Dense(8, W_std=w, b_std=b), L.LeakyRelu(alpha), L.Dense(8, W_std=w, b_std=b),
                    L.Erf(b=alpha), L.Dense(1, W_std=w, b_std=b))


def _cnn(w, b, alpha):
    return L.serial(L.Conv(4, (2, 2), padding="SAME", W_std=w, b_std=b), L.ABRelu(alpha, 1.0),
                    L.AvgPool((2, 2)), L.Conv(4, (2, 2), W_std=w, b_std=b), L.Relu(), L.Flatten(),
                    L.Dense(1, W_std=w, b_std=b))


def _residual(w, b, alpha):
    block = L.serial(L.FanOut(2), L.parallel(L.Identity(), L.serial(L.LeakyRelu(alpha), L.Dense(8, W_std=w, b_std=b))),
                     L.FanInSum())
    return L.serial(L.Dense(8, W_std=w, b_std=b), block, L.Rbf(gamma=alpha), L.Dense(1, W_std=w, b_std=b))


@pytest.mark.parametrize(
    "make, shape",
    [(_mlp, (3, 4)), (_cnn, (2, 1, 4, 4)), (_residual, (3, 4))],
    ids=["mlp", "cnn-pool", "residual"],
)
def test_gradcheck_hyperparameters_and_inputs(make, shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=F64, requires_grad=True)

    def f(w, b, alpha, x):
        k = make(w, b, alpha).kernel(x)  # symmetric: the diagonal sits at correlation 1
        return k.nngp, k.ntk

    assert torch.autograd.gradcheck(f, (_p(1.3), _p(0.4), _p(0.3), x), atol=1e-7, rtol=1e-6)


def test_tensor_hyperparameters_give_the_float_kernel():
    x = torch.randn(5, 3, dtype=F64)
    for make in (_mlp, _residual):
        a = make(1.3, 0.4, 0.3).kernel(x)
        b = make(*(torch.tensor(v, dtype=F64) for v in (1.3, 0.4, 0.3))).kernel(x)
        torch.testing.assert_close(a.ntk, b.ntk, rtol=1e-14, atol=0)
        torch.testing.assert_close(a.nngp, b.nngp, rtol=1e-14, atol=0)


def test_gradients_finite_at_singular_points():
    # zero inputs without bias: every variance is 0 (the ReLU angle is then pi/2 by convention);
    # repeated inputs: correlation exactly 1, where sqrt(q11 q22 - q12^2) has an infinite slope.
    w, b = _p(1.2), _p(0.0)
    x = torch.zeros(3, 4, dtype=F64)
    x[1] = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=F64)
    x[2] = x[1]
    x.requires_grad_(True)
    spec = L.serial(L.Dense(4, W_std=w, b_std=b), L.Relu(), L.Dense(4, W_std=w, b_std=b), L.Abs(),
                    L.Dense(1, W_std=w, b_std=b))
    k = spec.kernel(x)
    grads = torch.autograd.grad(k.ntk.sum() + k.nngp.sum(), (w, b, x))
    assert all(bool(torch.isfinite(gr).all()) for gr in grads)
    # and the W_std derivative there equals a central difference of float-hyperparameter kernels
    eps = 1e-6
    plus = L.serial(L.Dense(4, W_std=1.2 + eps, b_std=0.0), L.Relu(), L.Dense(4, W_std=1.2 + eps, b_std=0.0),
                    L.Abs(), L.Dense(1, W_std=1.2 + eps, b_std=0.0)).kernel(x.detach())
    minus = L.serial(L.Dense(4, W_std=1.2 - eps, b_std=0.0), L.Relu(), L.Dense(4, W_std=1.2 - eps, b_std=0.0),
                     L.Abs(), L.Dense(1, W_std=1.2 - eps, b_std=0.0)).kernel(x.detach())
    fd = ((plus.ntk.sum() + plus.nngp.sum()) - (minus.ntk.sum() + minus.nngp.sum())) / (2 * eps)
    torch.testing.assert_close(grads[0], fd, rtol=1e-7, atol=1e-9)


def test_polynomial_layernorm_and_gaussian_parameters():
    x = torch.randn(3, 4, dtype=F64)
    coef = torch.tensor([0.1, 0.5, -0.2], dtype=F64, requires_grad=True)
    eps = _p(0.3)

    def f(coef, eps, a):
        spec = L.serial(L.Dense(4, b_std=0.2), L.Polynomial(coef), L.Dense(4), L.LayerNorm(eps=eps),
                        L.Gaussian(a=a, b=-0.5), L.Dense(1))
        k = spec.kernel(x)
        return k.nngp, k.ntk

    assert torch.autograd.gradcheck(f, (coef, eps, _p(1.5)))


@pytest.mark.parametrize("cls, values", [(L.Sin, (1.2, 0.7, 0.3)), (L.Cos, (1.2, 0.7, 0.3)), (L.Exp, (0.5, 0.3)),
                                         (L.Erf, (1.0, 0.5, 0.2)), (L.ABRelu, (-0.2, 1.1)), (L.Rbf, (0.4,))])
def test_gradcheck_every_activation_parameter(cls, values):
    x = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    params = tuple(_p(v) for v in values)
    assert torch.autograd.gradcheck(lambda *q: L.serial(L.Dense(1, b_std=0.2), cls(*q), L.Dense(1)).kernel(x).ntk, params)


def test_bad_tensor_hyperparameters_are_named():
    with pytest.raises(InvalidArgumentError, match="W_std"):
        L.Dense(3, W_std=torch.ones(2))
    with pytest.raises(InvalidArgumentError, match="b_std"):
        L.Dense(3, b_std=torch.tensor(-1.0))
    with pytest.raises(InvalidArgumentError, match="gamma"):
        L.Rbf(gamma=torch.tensor(0.0))
    with pytest.raises(InvalidArgumentError, match="alpha|a"):
        L.LeakyRelu(torch.tensor(float("nan")))


def test_module_takes_the_tensor_values():
    w = _p(1.5)
    net = L.serial(L.Dense(6, W_std=w, b_std=_p(0.1)), L.LeakyRelu(_p(0.2)), L.Dense(1, W_std=w)).module(3)
    assert net(torch.randn(2, 3)).shape == (2, 1)
