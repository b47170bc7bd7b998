"""The rules of the primitives that move or reduce axes: broadcasts, reshapes, transposes,
reductions, cumulative and windowed ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gsm_optax.structure.graph import PROD, Graph, Step, Value
from gsm_optax.structure.rule import Coupled, reason

REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and",
              "reduce_or", "reduce_xor"}
ARG_REDUCTIONS = {"argmax", "argmin"}
CUMULATIVE = {"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"}
WINDOWED = {"reduce_window_sum", "reduce_window_max", "reduce_window_min"}


def couple_broadcast(g: Graph, step: Step, index: int) -> Coupled:
  val, out = g.values[step.ins[0]], g.values[step.outs[0]]
  for j, d in enumerate(step.params["broadcast_dimensions"]):
    if val.shape[j] == out.shape[d]:
      g.same(val.nodes[j], out.nodes[d], reason(step))
  return Coupled(view_of=step.ins[0])


def couple_reshape(g: Graph, step: Step, index: int) -> Coupled:
  if step.params.get("dimensions") is not None:
    raise ValueError(f"couple: primitive 'reshape' with dimensions at {step.where} is not"
                     " supported.")
  val = g.values[step.ins[0]]
  g.set_nodes(step.outs[0], _reshape(g, val, g.values[step.outs[0]].shape, reason(step)))
  return Coupled(view_of=step.ins[0])


def _reshape(g: Graph, val: Value, shape: tuple[int, ...], why: str) -> list[int]:
  """The result's axis nodes: groups of input axes merged (a product) and split again."""
  n = g.nodes
  ins = [(d, s) for d, s in enumerate(val.shape) if s != 1]
  outs = [(d, s) for d, s in enumerate(shape) if s != 1]
  result: list[int | None] = [None] * len(shape)
  i = j = 0
  while i < len(ins) or j < len(outs):
    gi, gj = [ins[i]], [outs[j]]
    i, j = i + 1, j + 1
    pi, pj = gi[0][1], gj[0][1]
    while pi != pj:
      if pi < pj:
        gi.append(ins[i])
        pi *= ins[i][1]
        i += 1
      else:
        gj.append(outs[j])
        pj *= outs[j][1]
        j += 1
    in_nodes = [val.nodes[d] for d, _ in gi]
    merged = in_nodes[0] if len(in_nodes) == 1 else n.new(pi, (PROD, in_nodes))
    parts = n.split(merged, PROD, [s for _, s in gj])
    if parts is None:
      n.mark(merged, f"it is reshaped across its structure by {why}")
      parts = [n.new(s) for _, s in gj]
      for q in parts:
        n.mark(q, f"it is reshaped across its structure by {why}")
    for (d, _), q in zip(gj, parts):
      result[d] = q
  return [r if r is not None else n.new(1) for r in result]


def resize_reshape(g: Graph, step: Step, p: dict[str, Any], size: Callable[[int], int]) -> None:
  p["new_sizes"] = tuple(size(n) for n in g.values[step.outs[0]].nodes)
  if "sharding" in p:
    p["sharding"] = None


def couple_squeeze(g: Graph, step: Step, index: int) -> Coupled:
  val = g.values[step.ins[0]]
  dims = {d % len(val.shape) for d in step.params["dimensions"]}
  g.set_nodes(step.outs[0], [n for d, n in enumerate(val.nodes) if d not in dims])
  return Coupled(view_of=step.ins[0])


def couple_transpose(g: Graph, step: Step, index: int) -> Coupled:
  val = g.values[step.ins[0]]
  g.set_nodes(step.outs[0], [val.nodes[d] for d in step.params["permutation"]])
  return Coupled(view_of=step.ins[0])


def couple_rev(g: Graph, step: Step, index: int) -> Coupled:
  val = g.values[step.ins[0]]
  for d in step.params["dimensions"]:
    g.nodes.mark(val.nodes[d], f"reversed by {reason(step)}")
  g.set_nodes(step.outs[0], list(val.nodes))
  return Coupled()


def couple_reduction(g: Graph, step: Step, index: int) -> Coupled:
  val = g.values[step.ins[0]]
  axes = set(step.params["axes"])
  for d in axes:
    g.nodes.mark(val.nodes[d], f"it is reduced over by {reason(step)}")
    g.reduced.append((val.nodes[d], reason(step)))
  g.set_nodes(step.outs[0], [n for d, n in enumerate(val.nodes) if d not in axes])
  return Coupled()


def couple_cumulative(g: Graph, step: Step, index: int) -> Coupled:
  val = g.values[step.ins[0]]
  axis = val.nodes[step.params["axis"]]
  g.nodes.mark(axis, f"it is accumulated along by {reason(step)}")
  g.reduced.append((axis, reason(step)))
  g.set_nodes(step.outs[0], list(val.nodes))
  return Coupled()


def couple_windowed(g: Graph, step: Step, index: int) -> Coupled:
  p = step.params
  out = g.values[step.outs[0]]
  for d, n in enumerate(g.values[step.ins[0]].nodes):
    plain = (p["window_dimensions"][d] == 1 and p["window_strides"][d] == 1
             and tuple(p["padding"][d]) == (0, 0) and p["base_dilation"][d] == 1
             and p["window_dilation"][d] == 1)
    if plain:
      g.same(n, out.nodes[d], reason(step))
    else:
      g.nodes.mark(n, f"it is pooled over by {reason(step)}")
  return Coupled()
