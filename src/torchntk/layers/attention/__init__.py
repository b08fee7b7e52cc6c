"""Attention: :class:`GlobalSelfAttention` (the layer and its module); ``_math`` holds the rules
on position-flattened kernels."""

from .self_attention import GlobalSelfAttention

__all__ = ["GlobalSelfAttention"]
