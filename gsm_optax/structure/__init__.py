"""Structured pruning of any JAX model, in three rooms.

- :mod:`gsm_optax.structure.coupling`: :func:`couple` reads, from the model's
  jaxpr, which parameter axes share channels, and gives the groups that
  structured GSM ranks and their budget in MACs.
- :mod:`gsm_optax.structure.export`: :func:`narrow` removes the pruned channels
  exactly: narrower parameters and a function (or an nnx module) that runs them.
- :mod:`gsm_optax.structure.graph`: the union-find over the axes of the
  inlined jaxpr that both use.
- :mod:`gsm_optax.structure.primitives`: the primitives understood, one rule
  each (how it couples axes, how zeros pass through it, how it is resized) in
  one table, ``RULES``: the list of what is supported. The rules live by family
  in ``elementwise``, ``shapes``, ``contractions`` and ``indexing``, on the
  entry type of ``rule``.
"""

from gsm_optax.structure.coupling import ChannelSet, Coupling, couple
from gsm_optax.structure.export import Narrow, narrow

__all__ = ["ChannelSet", "Coupling", "Narrow", "couple", "narrow"]
