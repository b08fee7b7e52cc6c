"""torchntk.dynamics against neural-tangents' predict module (time unit t_nt = O * t)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

nt = pytest.importorskip("neural_tangents")
jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

from torchntk.dynamics import ensemble, mse  # noqa: E402

pytestmark = pytest.mark.peer
D = torch.float64


def _kernels(n, m, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n + m, n + m, dtype=D, generator=g)
    k = a @ a.T / (n + m) + 0.1 * torch.eye(n + m, dtype=D)
    return k[:n, :n], k[n:, :n], k[n:, n:]


@pytest.mark.parametrize("o", [1, 3])
def test_mse_matches_gradient_descent_mse_with_time_unit(o):
    n, m = 10, 4
    ktt, kxt, _ = _kernels(n, m, 0)
    g = torch.Generator().manual_seed(1)
    y, f0, f0x = (torch.randn(n, o, dtype=D, generator=g), torch.randn(n, o, dtype=D, generator=g),
                  torch.randn(m, o, dtype=D, generator=g))
    ts = torch.tensor([0.0, 1.0, 5.0, 40.0, float("inf")], dtype=D)
    fn = nt.predict.gradient_descent_mse(jnp.asarray(ktt.numpy()), jnp.asarray(y.numpy()))
    ours = mse(ktt, y, f0_train=f0)(ts, kxt, f0x)
    for i, t in enumerate(ts.tolist()):
        # the peer's loss is a mean over N*O entries: its time is t_nt = O * t
        theirs = fn(t=o * t, fx_train_0=jnp.asarray(f0.numpy()),
                    fx_test_0=jnp.asarray(f0x.numpy()), k_test_train=jnp.asarray(kxt.numpy()))
        np.testing.assert_allclose(ours[0][i].numpy(), np.asarray(theirs[0]), atol=1e-9)
        np.testing.assert_allclose(ours[1][i].numpy(), np.asarray(theirs[1]), atol=1e-9)
    if o > 1:  # without the conversion the two disagree
        theirs = fn(t=5.0, fx_train_0=jnp.asarray(f0.numpy()))
        assert np.abs(ours[0][2].numpy() - np.asarray(theirs)).max() > 1e-3


def test_ensemble_matches_gradient_descent_mse_ensemble():
    n, m, o = 8, 3, 2
    k_tt, k_xt, k_xx = _kernels(n, m, 3)
    th_tt, th_xt, th_xx = _kernels(n, m, 4)
    y = torch.randn(n, o, dtype=D, generator=torch.Generator().manual_seed(5))
    x_train = jnp.arange(n, dtype=jnp.float64)[:, None]
    x_test = jnp.arange(n, n + m, dtype=jnp.float64)[:, None]
    kall = {"nngp": torch.cat([torch.cat([k_tt, k_xt.T], 1), torch.cat([k_xt, k_xx], 1)]),
            "ntk": torch.cat([torch.cat([th_tt, th_xt.T], 1), torch.cat([th_xt, th_xx], 1)])}

    def kernel_fn(x1, x2, get, **kw):
        i = np.asarray(x1[:, 0]).astype(int)
        j = np.asarray(x2[:, 0]).astype(int) if x2 is not None else i
        out = {g: jnp.asarray(kall[g].numpy()[np.ix_(i, j)]) for g in ("nngp", "ntk")}
        if isinstance(get, str):
            return out[get]
        return collections.namedtuple("Kernels", get)(*(out[g] for g in get))

    fn = nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, jnp.asarray(y.numpy()))
    t = 2.0
    theirs = fn(x_test=x_test, get="ntk", compute_cov=True, t=o * t)
    ours = ensemble(k_tt, th_tt, y)(t, nngp_test_train=k_xt, ntk_test_train=th_xt,
                                    nngp_test_test=k_xx)
    np.testing.assert_allclose(ours.mean.numpy(), np.asarray(theirs.mean), atol=1e-9)
    np.testing.assert_allclose(ours.covariance.numpy(), np.asarray(theirs.covariance), atol=1e-9)
