"""The version of torchntk (also in ``pyproject.toml``)."""

__version__ = "0.1.0"
