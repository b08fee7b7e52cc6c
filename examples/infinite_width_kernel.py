"""The infinite-width NTK of an architecture spec, and a finite network of the same spec."""

import torch

import torchntk
from torchntk import layers as L

spec = L.serial(L.Dense(2048, W_std=1.0, b_std=0.1), L.Relu(),
                L.Dense(2048, W_std=1.0, b_std=0.1), L.Relu(),
                L.Dense(1, W_std=1.0, b_std=0.1))
torch.manual_seed(0)
x = torch.randn(8, 5, dtype=torch.float64)
k = spec.kernel(x)                                    # Kernel with .nngp and .ntk, (8, 8) float64
net = spec.module(5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
emp = torchntk.empirical_ntk(net, x, mode="mean")     # the finite network's kernel at init
rel = float(torch.linalg.norm(emp - k.ntk) / torch.linalg.norm(k.ntk))
print(f"Theta_inf diagonal: {k.ntk.diagonal()[:3].tolist()}")
print(f"width 2048: ||Theta_emp - Theta_inf|| / ||Theta_inf|| = {rel:.3f}  (falls as width^-1/2)")
assert rel < 0.2
