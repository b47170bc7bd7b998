"""The rules of the primitives that cut, join or index arrays: concatenate, slice, split,
pad, iota, sort, gather and the dynamic slices."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gsm_optax.structure.graph import PROD, SUM, Graph, Step
from gsm_optax.structure.rule import Coupled, operand_values, reason


def pad_zeros(z: Any, step: Step) -> None:
  """A pad's new positions hold its padding value: zero only where that value is."""
  operand, value = step.ins
  fill = z.whole_zero(value)
  out = step.outs[0]
  per_set = {s: (z.get(operand, s) if s in z.classes(operand) else np.full(z.size(s), fill))
             for s in z.classes(out)}
  z.put(out, per_set, z.whole_zero(operand) and fill)


def couple_concatenate(g: Graph, step: Step, index: int) -> Coupled:
  dim = step.params["dimension"]
  out = g.values[step.outs[0]]
  why = reason(step)
  vals = operand_values(g, step)
  for val in vals:
    for d in range(len(out.shape)):
      if d != dim:
        g.same(val.nodes[d], out.nodes[d], why)
  parts = [val.nodes[dim] for val in vals if val.shape[dim]]
  roots = {g.nodes.find(q) for q in parts}
  if len(roots) == 1 and len(parts) > 1:  # k copies of the same channels (im2col patches)
    copies = g.nodes.new(len(parts))
    g.nodes.mark(copies, f"it counts copies of the same channels ({why})")
    node = g.nodes.new(out.shape[dim], (PROD, [copies, parts[0]]))
  else:
    node = g.nodes.new(out.shape[dim], (SUM, parts))
  g.same(node, out.nodes[dim], why)
  return Coupled()


def couple_slice(g: Graph, step: Step, index: int) -> Coupled:
  p = step.params
  val = g.values[step.ins[0]]
  out = g.values[step.outs[0]]
  why = reason(step)
  strides = p.get("strides") or (1,) * len(val.shape)
  ranges: list[int | None] = []
  for d, (a, b, s) in enumerate(zip(p["start_indices"], p["limit_indices"], strides)):
    size = val.shape[d]
    if a == 0 and b == size and s == 1:
      g.same(val.nodes[d], out.nodes[d], why)
      ranges.append(None)
      continue
    if s != 1:
      g.nodes.mark(val.nodes[d], f"it is sliced with a stride by {why}")
      ranges.append(None)
      continue
    parts = g.nodes.split(val.nodes[d], SUM, [x for x in (a, b - a, size - b) if x])
    if parts is None:
      g.nodes.mark(val.nodes[d], f"it is sliced across its structure by {why}")
      g.nodes.mark(out.nodes[d], f"it is sliced across its structure by {why}")
      ranges.append(None)
      continue
    g.same(parts[1] if a else parts[0], out.nodes[d], why)
    ranges.append(parts[0] if a else None)
  step.aux["before"] = ranges  # per axis: the node of what precedes the slice, or None
  return Coupled()


def resize_slice(g: Graph, step: Step, p: dict[str, Any], size: Callable[[int], int]) -> None:
  in_val, out_nodes = g.values[step.ins[0]], g.values[step.outs[0]].nodes
  starts, limits = list(p["start_indices"]), list(p["limit_indices"])
  for d, before in enumerate(step.aux["before"]):
    full = (p["start_indices"][d] == 0 and p["limit_indices"][d] == in_val.shape[d]
            and (p.get("strides") is None or p["strides"][d] == 1))
    if full:
      starts[d], limits[d] = 0, size(in_val.nodes[d])
    elif before is not None or p["start_indices"][d] == 0:
      a = size(before) if before is not None else 0
      starts[d], limits[d] = a, a + size(out_nodes[d])
  p["start_indices"], p["limit_indices"] = tuple(starts), tuple(limits)


def couple_split(g: Graph, step: Step, index: int) -> Coupled:
  axis = step.params["axis"]
  val = g.values[step.ins[0]]
  outs = [g.values[o] for o in step.outs]
  why = reason(step)
  for o in outs:
    for d in range(len(val.shape)):
      if d != axis:
        g.same(val.nodes[d], o.nodes[d], why)
  parts = g.nodes.split(val.nodes[axis], SUM, [s for s in step.params["sizes"] if s])
  if parts is None:
    g.nodes.mark(val.nodes[axis], f"it is split across its structure by {why}")
    for o in outs:
      g.nodes.mark(o.nodes[axis], f"it is split across its structure by {why}")
    return Coupled()
  it = iter(parts)
  for o, s in zip(outs, step.params["sizes"]):
    if s:
      g.same(next(it), o.nodes[axis], why)
  return Coupled()


def resize_split(g: Graph, step: Step, p: dict[str, Any], size: Callable[[int], int]) -> None:
  p["sizes"] = tuple(size(g.values[o].nodes[p["axis"]]) for o in step.outs)


def couple_pad(g: Graph, step: Step, index: int) -> Coupled:
  val = g.values[step.ins[0]]
  out = g.values[step.outs[0]]
  why = reason(step)
  pads: list[tuple[int | None, int | None] | None] = []
  for d, (lo, hi, interior) in enumerate(step.params["padding_config"]):
    if (lo, hi, interior) == (0, 0, 0):
      g.same(val.nodes[d], out.nodes[d], why)
      pads.append(None)
    elif lo >= 0 and hi >= 0 and interior == 0:
      lo_n = g.nodes.new(lo) if lo else None
      hi_n = g.nodes.new(hi) if hi else None
      parts = [q for q in (lo_n, val.nodes[d], hi_n) if q is not None]
      g.same(g.nodes.new(out.shape[d], (SUM, parts)), out.nodes[d], why)
      pads.append((lo_n, hi_n))
    else:
      g.nodes.mark(val.nodes[d], f"it is padded by {why}")
      g.nodes.mark(out.nodes[d], f"it is padded by {why}")
      pads.append(None)
  step.aux["pads"] = pads
  return Coupled()


def resize_pad(g: Graph, step: Step, p: dict[str, Any], size: Callable[[int], int]) -> None:
  config = []
  for d, (lo, hi, interior) in enumerate(p["padding_config"]):
    pads = step.aux["pads"][d]
    if pads is not None:
      lo = size(pads[0]) if pads[0] is not None else 0
      hi = size(pads[1]) if pads[1] is not None else 0
    config.append((lo, hi, interior))
  p["padding_config"] = tuple(config)


def couple_iota(g: Graph, step: Step, index: int) -> Coupled:
  g.mark_value(step.outs[0], f"its values are indices ({reason(step)})")
  return Coupled()


def couple_sort(g: Graph, step: Step, index: int) -> Coupled:
  g.mark_value(step.ins[0], f"it is sorted by {reason(step)}")
  for o in step.outs:
    g.mark_value(o, f"it is sorted by {reason(step)}")
  return Coupled()


def couple_gather(g: Graph, step: Step, index: int) -> Coupled:
  p = step.params
  dn = p["dimension_numbers"]
  op, idx = operand_values(g, step)
  out = g.values[step.outs[0]]
  why = reason(step)
  collapsed = set(dn.collapsed_slice_dims) | set(getattr(dn, "operand_batching_dims", ()))
  offset_operand = [d for d in range(len(op.shape)) if d not in collapsed]
  full = []
  for d, od in zip(offset_operand, dn.offset_dims):
    if p["slice_sizes"][d] == op.shape[d]:
      g.same(op.nodes[d], out.nodes[od], why)
      full.append(d)
    else:
      g.nodes.mark(op.nodes[d], f"it is gathered from by {why}")
      g.nodes.mark(out.nodes[od], f"it is gathered from by {why}")
  for d in collapsed:
    g.nodes.mark(op.nodes[d], f"it is indexed by {why}")
  batch_out = [d for d in range(len(out.shape)) if d not in dn.offset_dims]
  for a, d in zip(range(len(idx.shape) - 1), batch_out):  # the last index axis: coordinates
    if idx.shape[a] == out.shape[d]:
      g.same(idx.nodes[a], out.nodes[d], why)
  g.mark_value(step.ins[1], f"an index of {why}")
  step.aux["full"] = full
  return Coupled()


def resize_gather(g: Graph, step: Step, p: dict[str, Any], size: Callable[[int], int]) -> None:
  sizes = list(p["slice_sizes"])
  for d in step.aux["full"]:
    sizes[d] = size(g.values[step.ins[0]].nodes[d])
  p["slice_sizes"] = tuple(sizes)


def couple_dynamic_slice(g: Graph, step: Step, index: int) -> Coupled:
  val = g.values[step.ins[0]]
  out = g.values[step.outs[0]]
  for d, (n, s) in enumerate(zip(val.nodes, step.params["slice_sizes"])):
    if s == val.shape[d]:
      g.same(n, out.nodes[d], reason(step))
    else:
      g.nodes.mark(n, f"it is sliced at a traced index by {reason(step)}")
  for v in step.ins[1:]:
    g.mark_value(v, f"an index of {reason(step)}")
  return Coupled()


def resize_dynamic_slice(g: Graph, step: Step, p: dict[str, Any],
                          size: Callable[[int], int]) -> None:
  val = g.values[step.ins[0]]
  p["slice_sizes"] = tuple(size(val.nodes[d]) if s == val.shape[d] else s
                           for d, s in enumerate(p["slice_sizes"]))


def couple_dynamic_update_slice(g: Graph, step: Step, index: int) -> Coupled:
  op, upd = g.values[step.ins[0]], g.values[step.ins[1]]
  out = g.values[step.outs[0]]
  why = reason(step)
  for d in range(len(op.shape)):
    g.same(op.nodes[d], out.nodes[d], why)
    if upd.shape[d] == op.shape[d]:
      g.same(upd.nodes[d], op.nodes[d], why)
    else:
      g.nodes.mark(op.nodes[d], f"it is updated at a traced index by {why}")
      g.nodes.mark(upd.nodes[d], f"it is updated at a traced index by {why}")
  return Coupled()
