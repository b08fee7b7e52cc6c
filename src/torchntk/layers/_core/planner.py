"""Block planning of the kernel driver (private): how many rows and columns one block holds.

:meth:`~torchntk.layers.Layer.kernel` computes a kernel in ``(b x b)`` blocks of pairs of inputs;
:func:`_block_size` chooses ``b`` from the per-sample shape, the layout, the dtype, the device and
the memory budget and the cache size (:mod:`torchntk._memory`, ``TORCHNTK_CACHE_BYTES``), unless
the caller fixes it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ..._checks import check_int
from ..._memory import cache_entries

if TYPE_CHECKING:
    from .protocol import Shape


# Live kernel-sized tensors per block (nngp, ntk, the rule's temporaries, the padded copies...).
_WORK_FACTOR = 12
# Default block: about ``cache_entries()`` entries per kernel tensor (2^15 unless
# TORCHNTK_CACHE_BYTES says otherwise; a constant, not read from the processor, so the blocks
# are the same on every CPU), so that a block's working set stays
# in the processor's cache (each layer makes tens of elementwise passes over it) and each pass
# stays below torch's parallel grain (32768 elements): every op runs on one thread, and the
# blocks are spread over ``torch.get_num_threads()`` Python threads instead (torch releases the
# GIL in its kernels). On a loaded machine this avoids a scheduler wait per parallel op.
# Kernels in the full spatial layout, ``P^2`` entries per pair of inputs, get twice as
# many, so that fewer blocks pay the per-block costs (the ops' dispatch, and the per-input
# covariances every block recomputes for its rows and columns, 2/b of its work), which there
# outweigh the cache (a graph network's 16-node kernel: 16 x 16 pairs per block instead of 11 x 11,
# a quarter less time on 2 threads); a pass over 2^16 entries may run on two threads.
# Flat kernels: square blocks of isqrt(cache_entries()) rows and columns (181^2 < 2^15).



def _block_size(in_shape: Shape, full: bool, dtype: torch.dtype, block_size: int | None, memory: int,
                device: torch.device) -> int:
    if block_size is not None:
        return check_int("block_size", block_size, minimum=1, allow_none=True)
    pixels = math.prod(in_shape[1:]) if len(in_shape) > 1 else 1
    entries = pixels**2 if full else pixels
    per_pair = entries * torch.finfo(dtype).bits // 8 * _WORK_FACTOR
    by_memory = int(math.sqrt(memory / per_pair))
    if device.type != "cpu":  # an accelerator wants few large blocks: the memory budget alone
        return max(1, by_memory)
    if len(in_shape) == 1:  # flat kernels (the symmetric case skips the blocks below the diagonal)
        return max(1, min(by_memory, math.isqrt(cache_entries())))
    by_cache = int(math.sqrt((2 if full else 1) * cache_entries() / entries))
    return max(1, min(by_memory, max(by_cache, 4)))
