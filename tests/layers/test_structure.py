"""The shape of ``torchntk.layers``: family subpackages, their public names, module sizes."""

from __future__ import annotations

import importlib
import pkgutil
import types
from pathlib import Path

import torchntk
from torchntk import layers as L

FAMILIES = ("dense", "conv", "pooling", "linear_maps", "attention", "graph", "normalization", "activations", "modules")
CORE = ("Kernel", "Layer", "serial", "repeat", "parallel", "FanOut", "FanInSum", "FanInProd", "FanInConcat", "Identity")


def test_public_names_are_the_families_and_the_core():
    assert len(set(L.__all__)) == len(L.__all__)
    families = set()
    for family in FAMILIES:
        module = importlib.import_module(f"torchntk.layers.{family}")
        for name in module.__all__:
            assert getattr(L, name) is getattr(module, name), name
        families |= set(module.__all__)
    assert set(L.__all__) == families | set(CORE)


def test_no_module_is_shadowed_by_a_name_it_defines():
    # a module named like a function or class of its package is hidden behind it (``layers.mlp``
    # once was both); every submodule must stay reachable as an attribute of its package
    for info in pkgutil.walk_packages(L.__path__, "torchntk.layers."):
        importlib.import_module(info.name)
        parent, _, leaf = info.name.rpartition(".")
        assert isinstance(getattr(importlib.import_module(parent), leaf), types.ModuleType), info.name


def test_no_module_over_450_lines():
    root = Path(torchntk.__file__).parent
    long = {str(p.relative_to(root)): n for p in root.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long
