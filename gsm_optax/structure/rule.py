"""The entry of :data:`gsm_optax.structure.primitives.RULES`, and the zero rules that
primitives of several families share.

A :class:`Rule` says what one primitive does in each of the three passes (see
:mod:`gsm_optax.structure.primitives`); :class:`Coupled` is what its ``couple``
returns besides the unions it makes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from gsm_optax.structure.graph import Graph, Step, Value


class Coupled(NamedTuple):
  """What pass one learns from a step besides the unions it makes."""

  contracted: frozenset[int] = frozenset()  # leaf sets summed over
  view_of: int | None = None  # the operand whose (reshaped, cast) view the result is


class Rule(NamedTuple):
  """How one primitive acts on channels in each pass (see the module docstring)."""

  couple: Callable[[Graph, Step, int], Coupled]
  zeros: Callable[[Any, Step], None]
  resize: Callable[[Graph, Step, dict[str, Any], Callable[[int], int]], None] | None = None
  mac_dims: Callable[[Graph, Step], list[int]] | None = None


def reason(step: Step) -> str:
  """Where a union comes from, for the messages that explain a coupling."""
  return f"{step.primitive.name} at {step.where}"


def operand_values(g: Graph, step: Step) -> list[Value]:
  """The values a step reads, in order."""
  return [g.values[i] for i in step.ins]


def moved(data: slice = slice(None)) -> Callable[[Any, Step], None]:
  """Zeros of data movement: a slice of a result is zero when its sources among the operands
  ``data`` are (every operand holding the set must be zero there)."""

  def zeros(z: Any, step: Step) -> None:
    sources = step.ins[data]
    whole = all(z.whole_zero(v) for v in sources)
    for o in step.outs:
      per_set = {}
      for s in z.classes(o):
        having = [v for v in sources if s in z.classes(v)]
        if having:
          per_set[s] = np.logical_and.reduce([z.get(v, s) for v in having])
        else:
          per_set[s] = np.full(z.size(s), whole)
      z.put(o, per_set, whole)

  return zeros


def never_zero(z: Any, step: Step) -> None:
  """Indices, sorted values: nothing of the result is known to be zero."""
  for o in step.outs:
    z.put(o, {}, False)


def resize_shape(g: Graph, step: Step, p: dict[str, Any], size: Callable[[int], int]) -> None:
  """A primitive whose ``shape`` parameter is its result's (``broadcast_in_dim``, ``iota``)."""
  p["shape"] = tuple(size(n) for n in g.values[step.outs[0]].nodes)
  if "sharding" in p:
    p["sharding"] = None
