"""Train wide networks by gradient descent and hold them against the closed-form prediction.

The prediction is the infinite-width one (``Theta_inf``, frozen): a finite network of width n
departs from it by O(n^-1/2), so the gap at width 1024 should be about half the gap at width
256 (averaged over 3 initializations: one network's gap is a random number). The held-out
outputs themselves are of size ~1 (the targets are sin(2 x_1)).
"""

import torch

import torchntk
from torchntk import layers as L
from torchntk.lab import train_full_batch

torch.manual_seed(0)
x, xt = torch.randn(16, 2, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
y = torch.sin(2 * x[:, :1])
steps = [0, 10, 50, 100]
final = {}
for width in (256, 1024):
    spec = L.serial(L.Dense(width, b_std=0.1), L.Relu(), L.Dense(width, b_std=0.1), L.Relu(), L.Dense(1, b_std=0.1))
    theta, theta_t = spec.kernel(x).ntk, spec.kernel(xt, x).ntk       # Theta_inf (the same at every width)
    lr = 0.5 * len(x) / float(torch.linalg.eigvalsh(theta)[-1])       # stable: eta < 2N / lambda_max
    gaps = []
    for seed in range(3):
        net = spec.module(2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        with torch.no_grad():
            f0, f0t = net(x), net(xt)
        traj = train_full_batch(net, x, y, learning_rate=lr, steps=100, record_steps=steps, x_test=xt)
        pred = torchntk.dynamics.mse(theta, y, f0_train=f0, learning_rate=lr)  # t counts steps
        f_train, f_test = pred(torch.tensor(steps, dtype=torch.float64), theta_t, f0t)
        gaps.append([float((torch.from_numpy(traj.f_test[i]) - f_test[i]).abs().max()) for i in range(len(steps))])
        if seed == 0:
            print(f"width {width}, seed 0: held-out outputs of size {float(f_test[-1].abs().max()):.3f}")
            for i, k in enumerate(steps):
                print(f"  step {k:4d}: cost {traj.cost[k]:.5f}, max |network - prediction| on held-out points "
                      f"{gaps[-1][i]:.4f}")
    final[width] = sum(g[-1] for g in gaps) / len(gaps)
    print(f"width {width}: gap at step 100, mean of 3 seeds {final[width]:.4f}")
print(f"gap ratio width 256 / width 1024: {final[256] / final[1024]:.2f} (O(n^-1/2) theory: {(1024 / 256) ** 0.5:.2f})")
