"""The rules of the contractions: ``dot_general`` and ``conv_general_dilated``, with the
axes their MACs count."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gsm_optax.structure.graph import PROD, Graph, Step
from gsm_optax.structure.rule import Coupled, operand_values, reason


def contraction_zeros(batch: Callable[[Graph, Step], list[int]],
                       lhs_free: Callable[[Graph, Step], list[int]],
                       rhs_free: Callable[[Graph, Step], list[int]]) -> Callable[[Any, Step], None]:
  """A contraction's result channel is zero where its operand's (a free axis) or either
  operand's (a batch axis) is; all of it where either operand is zero."""

  def zeros(z: Any, step: Step) -> None:
    g = z.g
    lhs, rhs = step.ins[0], step.ins[1]
    out = step.outs[0]
    both = z.whole_zero(lhs) or z.whole_zero(rhs)
    owners: dict[int, str] = {}
    for who, axes in (("both", batch(g, step)), ("lhs", lhs_free(g, step)),
                      ("rhs", rhs_free(g, step))):
      for n in axes:
        for s in g.nodes.leaves(n):
          owners.setdefault(g.nodes.find(s), who)
    per_set = {}
    for s in z.classes(out):
      owner = owners.get(s)
      if owner == "both":
        acc = z.get(lhs, s) | z.get(rhs, s)
      elif owner in ("lhs", "rhs"):
        acc = z.get(lhs if owner == "lhs" else rhs, s).copy()
      else:
        acc = np.zeros(z.size(s), bool)
      per_set[s] = acc | both
    z.put(out, per_set, both)

  return zeros


def couple_dot(g: Graph, step: Step, index: int) -> Coupled:
  (lc, rc), (lb, rb) = step.params["dimension_numbers"]
  lhs, rhs = operand_values(g, step)
  why = reason(step)
  for a, b in zip(lc, rc):
    g.same(lhs.nodes[a], rhs.nodes[b], why)
  for a, b in zip(lb, rb):
    g.same(lhs.nodes[a], rhs.nodes[b], why)
  lfree = [n for d, n in enumerate(lhs.nodes) if d not in lc and d not in lb]
  rfree = [n for d, n in enumerate(rhs.nodes) if d not in rc and d not in rb]
  out = g.values[step.outs[0]]
  for n, m in zip([lhs.nodes[d] for d in lb] + lfree + rfree, out.nodes):
    g.same(n, m, why)
  summed = [lhs.nodes[a] for a in lc]
  step.aux["contracted"] = summed
  g.contractions.append((index, summed))
  return Coupled(contracted=frozenset(leaf for n in summed for leaf in g.nodes.leaves(n)))


def dot_axes(g: Graph, step: Step) -> tuple[list[int], list[int], list[int]]:
  """A dot_general's batch axes, and the free axes of its two operands."""
  (lc, rc), (lb, rb) = step.params["dimension_numbers"]
  lhs, rhs = g.values[step.ins[0]].nodes, g.values[step.ins[1]].nodes
  return ([lhs[d] for d in lb], [n for d, n in enumerate(lhs) if d not in lc + lb],
          [n for d, n in enumerate(rhs) if d not in rc + rb])


def dot_mac_dims(g: Graph, step: Step) -> list[int]:
  (lc, _), _ = step.params["dimension_numbers"]
  lhs = g.values[step.ins[0]]
  return list(g.values[step.outs[0]].nodes) + [lhs.nodes[a] for a in lc]


def couple_conv(g: Graph, step: Step, index: int) -> Coupled:
  p = step.params
  dn = p["dimension_numbers"]
  lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
  lhs, rhs = operand_values(g, step)
  out = g.values[step.outs[0]]
  why = reason(step)
  if p["batch_group_count"] != 1:
    raise ValueError(f"couple: conv_general_dilated with batch_group_count"
                     f"={p['batch_group_count']} at {step.where} is not supported.")
  count = p["feature_group_count"]
  n = g.nodes
  g.same(lhs.nodes[lhs_spec[0]], out.nodes[out_spec[0]], why)  # batch
  c_in, c_out = lhs.nodes[lhs_spec[1]], rhs.nodes[rhs_spec[0]]
  k_in = rhs.nodes[rhs_spec[1]]
  g.same(c_out, out.nodes[out_spec[1]], why)
  if count == 1:
    g.same(c_in, k_in, why)
    step.aux.update(in_per_group=k_in, group=None)
  else:
    groups = n.new(count)
    lhs_parts = n.split(c_in, PROD, [count, rhs.shape[rhs_spec[1]]])
    out_parts = n.split(c_out, PROD, [count, rhs.shape[rhs_spec[0]] // count])
    if lhs_parts is None or out_parts is None:
      for q in (c_in, c_out, k_in):
        n.mark(q, f"grouped convolution {why}")
      step.aux.update(in_per_group=k_in, group=None)
    else:
      g.same(lhs_parts[0], groups, why)
      g.same(out_parts[0], groups, why)
      g.same(lhs_parts[1], k_in, why)
      step.aux.update(in_per_group=k_in, group=groups)
  for d in lhs_spec[2:]:
    n.mark(lhs.nodes[d], f"it is a spatial axis of {why}")
  for d in rhs_spec[2:]:
    n.mark(rhs.nodes[d], f"it is a window axis of {why}")
  g.contractions.append((index, [k_in]))
  return Coupled(contracted=frozenset(n.leaves(step.aux["in_per_group"])))


def resize_conv(g: Graph, step: Step, p: dict[str, Any], size: Callable[[int], int]) -> None:
  if step.aux.get("group") is not None:
    p["feature_group_count"] = size(step.aux["group"])


def conv_mac_dims(g: Graph, step: Step) -> list[int]:
  rhs_spec = step.params["dimension_numbers"].rhs_spec
  rhs = g.values[step.ins[1]]
  return (list(g.values[step.outs[0]].nodes) + [step.aux["in_per_group"]]
          + [rhs.nodes[d] for d in rhs_spec[2:]])


def conv_batch(g: Graph, step: Step) -> list[int]:
  group = step.aux.get("group")
  return [group] if group is not None else []


def conv_out(g: Graph, step: Step) -> list[int]:
  return [g.values[step.ins[1]].nodes[step.params["dimension_numbers"].rhs_spec[0]]]


dot_zeros = contraction_zeros(lambda g, s: dot_axes(g, s)[0], lambda g, s: dot_axes(g, s)[1],
                              lambda g, s: dot_axes(g, s)[2])
"""Zeros through a ``dot_general``: its batch, lhs-free and rhs-free axes."""

conv_zeros = contraction_zeros(conv_batch, lambda g, s: [], conv_out)
"""Zeros through a ``conv_general_dilated``: the batch axis, and the output features."""
