"""Train a wide network by gradient descent and hold it against the closed-form prediction."""

import torch

import torchntk
from torchntk import layers as L
from torchntk.lab import train_full_batch

torch.manual_seed(0)
x, xt = torch.randn(16, 2, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
y = torch.sin(2 * x[:, :1])
spec = L.serial(L.Dense(512, b_std=0.1), L.Relu(), L.Dense(512, b_std=0.1), L.Relu(), L.Dense(1, b_std=0.1))
net = spec.module(2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

theta, theta_t = spec.kernel(x).ntk, spec.kernel(xt, x).ntk           # Theta_inf
with torch.no_grad():
    f0, f0t = net(x), net(xt)
lr = 0.5 * len(x) / float(torch.linalg.eigvalsh(theta)[-1])           # stable: eta < 2N / lambda_max
steps = [0, 10, 50, 100]
traj = train_full_batch(net, x, y, learning_rate=lr, steps=100, record_steps=steps, x_test=xt)

pred = torchntk.dynamics.mse(theta, y, f0_train=f0, learning_rate=lr)  # t counts steps
f_train, f_test = pred(torch.tensor(steps, dtype=torch.float64), theta_t, f0t)
for i, k in enumerate(steps):
    gap = (torch.from_numpy(traj.f_test[i]) - f_test[i]).abs().max()
    print(f"step {k:4d}: cost {traj.cost[k]:.5f}, max |network - prediction| on held-out points {gap:.4f}")
