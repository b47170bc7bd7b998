"""The primitives :mod:`gsm_optax.structure` understands: one rule each, in one table.

A model's jaxpr is read in three passes, and :data:`RULES` says for every
supported primitive what it does in each:

- ``couple(g, step, index)`` (pass one, :class:`graph.Graph`): which axes of
  its operands and results hold the same channels. It returns a
  :class:`Coupled`: the leaf sets it contracts over (a parameter axis read
  there is consumed), and the operand its result is a view of (a reshape, a
  transpose, a cast: a parameter seen through it is still that parameter).
- ``zeros(z, step)`` (pass two, :func:`gsm_optax.narrow`): which channel
  slices of its results are exactly zero, for any input, given those of its
  operands (``z.get(value, set)``); ``z.put(value, per_set, whole)`` records
  them.
- ``resize(g, step, params, size)`` (pass three, the narrow model): its
  parameters once every axis has its narrow size (``size(node)``), for the
  primitives whose parameters name a shape.

Contractions (``dot_general``, ``conv_general_dilated``) also give
``mac_dims(g, step)``: the axes whose sizes multiply to their MACs.

Adding a primitive is adding one entry here; a primitive not in the table makes
:func:`gsm_optax.couple` raise a ``ValueError`` naming it and its source line.

The rules themselves live by family: :mod:`~gsm_optax.structure.elementwise`,
:mod:`~gsm_optax.structure.shapes` (broadcasts, reshapes, reductions),
:mod:`~gsm_optax.structure.contractions` (dot, convolution) and
:mod:`~gsm_optax.structure.indexing` (slices, pads, gathers), on the entry type
and shared zero rules of :mod:`~gsm_optax.structure.rule`. This table is the one
list of what is supported.
"""


from __future__ import annotations

from gsm_optax.structure import contractions, elementwise, indexing, shapes
from gsm_optax.structure.rule import Coupled, Rule, moved, never_zero, resize_shape

__all__ = ["RULES", "Coupled", "Rule"]


def _table() -> dict[str, Rule]:
  rules: dict[str, Rule] = {}
  for names, kind in ((elementwise.ZERO_PRESERVING | elementwise.BINARY_ALL, "all"),
                      (elementwise.BINARY_ANY, "any"),
                      (elementwise.BINARY_FIRST, "first"),
                      (elementwise.NOT_ZERO_PRESERVING | elementwise.OTHER_ELEMENTWISE, "none")):
    for name in names:
      rules[name] = Rule(elementwise.couple_elementwise, elementwise.elementwise_zeros(kind))
  data = moved()
  first_only = moved(slice(0, 1))
  rules.update({
      "broadcast_in_dim": Rule(shapes.couple_broadcast, data, resize_shape),
      "reshape": Rule(shapes.couple_reshape, data, shapes.resize_reshape),
      "squeeze": Rule(shapes.couple_squeeze, data),
      "transpose": Rule(shapes.couple_transpose, data),
      "rev": Rule(shapes.couple_rev, data),
      **{name: Rule(shapes.couple_reduction, data) for name in shapes.REDUCTIONS},
      **{name: Rule(shapes.couple_reduction, never_zero) for name in shapes.ARG_REDUCTIONS},
      **{name: Rule(shapes.couple_cumulative, data) for name in shapes.CUMULATIVE},
      **{name: Rule(shapes.couple_windowed, data) for name in shapes.WINDOWED},
      "dot_general": Rule(contractions.couple_dot, contractions.dot_zeros,
                          mac_dims=contractions.dot_mac_dims),
      "conv_general_dilated": Rule(contractions.couple_conv, contractions.conv_zeros,
                                   contractions.resize_conv, contractions.conv_mac_dims),
      "concatenate": Rule(indexing.couple_concatenate, data),
      "slice": Rule(indexing.couple_slice, data, indexing.resize_slice),
      "split": Rule(indexing.couple_split, data, indexing.resize_split),
      "pad": Rule(indexing.couple_pad, indexing.pad_zeros, indexing.resize_pad),
      "iota": Rule(indexing.couple_iota, never_zero, resize_shape),
      "sort": Rule(indexing.couple_sort, never_zero),
      "top_k": Rule(indexing.couple_sort, never_zero),
      "gather": Rule(indexing.couple_gather, first_only, indexing.resize_gather),
      "dynamic_slice": Rule(indexing.couple_dynamic_slice, first_only,
                            indexing.resize_dynamic_slice),
      "dynamic_update_slice": Rule(indexing.couple_dynamic_update_slice, moved(slice(0, 2))),
  })
  return rules


RULES: dict[str, Rule] = _table()
"""Every primitive :func:`gsm_optax.couple` and :func:`gsm_optax.narrow` support, by name."""
