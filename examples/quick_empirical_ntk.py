"""The empirical NTK of a small network, in its three modes, and a check against autograd."""

import torch

import torchntk
from torchntk.nn import MLP

torch.manual_seed(0)
net = MLP(3, [256, 256], 2, activation="relu", beta=0.1).double()
x1 = torch.randn(6, 3, dtype=torch.float64)
x2 = torch.randn(4, 3, dtype=torch.float64)

full = torchntk.empirical_ntk(net, x1, x2)                  # (6, 4, 2, 2)
diag = torchntk.empirical_ntk(net, x1, x2, mode="diagonal")  # (6, 4, 2)
mean = torchntk.empirical_ntk(net, x1, x2, mode="mean")      # (6, 4)
print("shapes:", tuple(full.shape), tuple(diag.shape), tuple(mean.shape))

# one entry by hand: the dot product of two parameter gradients
g1 = torch.autograd.grad(net(x1[:1])[0, 0], list(net.parameters()))
g2 = torch.autograd.grad(net(x2[:1])[0, 1], list(net.parameters()))
by_hand = sum((a * b).sum() for a, b in zip(g1, g2))
print(f"Theta[0, 0, 0, 1] = {full[0, 0, 0, 1]:.10f}, by hand {by_hand:.10f}")
assert torch.allclose(full[0, 0, 0, 1], by_hand)
