"""The core of :mod:`torchntk.layers` (private): the layer protocol and the kernel driver.

- :mod:`.kernel`: the :class:`Kernel` record passed from layer to layer;
- :mod:`.protocol`: :class:`Layer` (the protocol and the entry points ``spec.kernel`` and
  ``spec.module``) and composition in sequence (:class:`Serial`, :func:`serial`);
- :mod:`.gram`: the checks of the inputs and their kernel (the input Gram);
- :mod:`.planner`: the rows and columns of one block of pairs;
- :mod:`.threads`: the blocks on a thread pool, assembled and mirrored;
- :mod:`.combinators`: ``parallel``, ``repeat``, ``FanOut``, ``FanIn*``, ``Identity``.
"""
