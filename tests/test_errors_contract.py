"""Every error torchntk raises on purpose is a TorchNTKError, with the built-in base it had before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchntk import errors
from torchntk import layers as L
from torchntk.cli import CLIError
from torchntk.dynamics import ode
from torchntk.lab import relu_kernels


def test_cli_error_is_a_torchntk_error():
    assert issubclass(CLIError, errors.TorchNTKError)


def test_lab_reference_rejects_depth_zero():
    with pytest.raises(errors.InvalidArgumentError, match="depth"):
        relu_kernels(np.ones((2, 2)), depth=0)


def test_a_layer_without_a_rule_raises_unsupported_layer_error():
    class NoRule(L.Layer):
        def output_shape(self, input_shape):
            return input_shape

    x = torch.randn(3, 2, dtype=torch.float64)
    with pytest.raises(errors.UnsupportedLayerError, match="NoRule.*monte_carlo_kernel"):
        NoRule().kernel(x)
    with pytest.raises(NotImplementedError):  # still the built-in base
        L.serial(L.Dense(4), NoRule()).kernel(x)
    with pytest.raises(errors.UnsupportedLayerError, match="make_module"):
        NoRule().module(2)

    class NoActivation(L.ElementwiseLayer):
        pass

    with pytest.raises(errors.UnsupportedLayerError, match="NoActivation"):
        L.serial(L.Dense(4), NoActivation()).kernel(x)


def test_ode_failure_is_a_solver_error():
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    k = x @ x.T + 1.0
    # loss -f^3/3: df/dt = K f^2 / N blows up in finite time, the solver's step underflows
    pred = ode(lambda f, y: -(f**3).sum() / 3, k, torch.zeros(4), f0_train=torch.ones(4))
    with pytest.raises(errors.SolverError, match="ODE solver failed") as info:
        pred(torch.tensor([100.0]))
    assert isinstance(info.value, RuntimeError)
