"""Track the kernel of your own model inside your own training loop (any optimizer, any loss)."""

import torch

from torchntk.lab import DriftTracker
from torchntk.nn import MLP

torch.manual_seed(0)
x = torch.randn(128, 4)
y = (x[:, :1] * x[:, 1:2]).tanh()
for width in (32, 256):
    net = MLP(4, [width, width], 1, activation="tanh")
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    with DriftTracker(net, x[:16], y[:16], every=10) as tracker:      # probe: 16 fixed examples
        for step in range(40):
            opt.zero_grad()
            loss = 0.5 * ((net(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            tracker.step()
    h = tracker.history
    print(f"width {width:5d}: drift {h['drift'][-1]:.3f}, alignment {h['alignment'][0]:.3f} -> "
          f"{h['alignment'][-1]:.3f}, {tracker.seconds:.2f} s in the tracker")
