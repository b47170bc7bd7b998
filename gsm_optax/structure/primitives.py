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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from gsm_optax.structure.graph import PROD, SUM, Graph, Step, Value

# f(0) == 0: a zero channel stays zero.
ZERO_PRESERVING = {
    "neg", "abs", "sign", "sin", "tan", "tanh", "sqrt", "cbrt", "erf", "erf_inv", "log1p",
    "expm1", "asin", "atan", "asinh", "atanh", "sinh", "floor", "ceil", "round",
    "convert_element_type", "copy", "copy_p", "reduce_precision", "square", "real", "imag",
    "conj", "device_put", "optimization_barrier", "sharding_constraint", "stop_gradient",
    "mesh_cast", "reshard", "not_"}
# f(0) != 0 or undefined: a zero channel becomes a constant.
NOT_ZERO_PRESERVING = {
    "exp", "exp2", "log", "logistic", "cos", "cosh", "rsqrt", "erfc", "lgamma", "digamma",
    "is_finite", "not", "acos", "acosh", "population_count", "clz"}
BINARY_ALL = {"add", "sub", "max", "min", "or", "xor", "add_any", "select_n", "clamp"}
BINARY_ANY = {"mul", "and"}
BINARY_FIRST = {"div", "rem"}
OTHER_ELEMENTWISE = {"pow", "atan2", "nextafter", "eq", "ne", "lt", "le", "gt", "ge",
                     "integer_pow", "shift_left", "shift_right_logical",
                     "shift_right_arithmetic", "igamma", "igammac", "polygamma", "zeta",
                     "bessel_i0e", "bessel_i1e", "random_gamma_grad", "regularized_incomplete_beta"}
REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and",
              "reduce_or", "reduce_xor"}
ARG_REDUCTIONS = {"argmax", "argmin"}
CUMULATIVE = {"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"}
WINDOWED = {"reduce_window_sum", "reduce_window_max", "reduce_window_min"}


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


def _why(step: Step) -> str:
  return f"{step.primitive.name} at {step.where}"


def _vals(g: Graph, step: Step) -> list[Value]:
  return [g.values[i] for i in step.ins]


# -- pass two, shared: which slices stay zero -------------------------------------------------


def _moved(data: slice = slice(None)) -> Callable[[Any, Step], None]:
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


def _pad_zeros(z: Any, step: Step) -> None:
  """A pad's new positions hold its padding value: zero only where that value is."""
  operand, value = step.ins
  fill = z.whole_zero(value)
  out = step.outs[0]
  per_set = {s: (z.get(operand, s) if s in z.classes(operand) else np.full(z.size(s), fill))
             for s in z.classes(out)}
  z.put(out, per_set, z.whole_zero(operand) and fill)


def _never_zero(z: Any, step: Step) -> None:
  """Indices, sorted values: nothing of the result is known to be zero."""
  for o in step.outs:
    z.put(o, {}, False)


def _contraction_zeros(batch: Callable[[Graph, Step], list[int]],
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


# -- elementwise ----------------------------------------------------------------------------


def _couple_elementwise(g: Graph, step: Step, index: int) -> Coupled:
  vals = _vals(g, step)
  out = g.values[step.outs[0]]
  for val in vals:
    if len(val.shape) == len(out.shape):
      for ax, (s, t) in enumerate(zip(val.shape, out.shape)):
        if s == t:
          g.same(val.nodes[ax], out.nodes[ax], _why(step))
  arrays = [v for v, val in zip(step.ins, vals) if val.shape and v not in g.consts]
  view = step.primitive.name in ZERO_PRESERVING | {"mul", "div"} and len(arrays) == 1
  return Coupled(view_of=arrays[0] if view else None)


def _bound_keeps_zero(g: Graph, v: int, name: str) -> bool:
  """relu, relu6: max(0, c) = 0 for c <= 0, min(0, c) = 0 for c >= 0."""
  c = g.consts.get(v)
  if c is None:
    return False
  return bool(np.all(c <= 0)) if name == "max" else bool(np.all(c >= 0))


def _clamp_keeps_zero(g: Graph, ins: tuple[int, ...]) -> bool:
  lo, hi = g.consts.get(ins[0]), g.consts.get(ins[2])
  return lo is not None and hi is not None and bool(np.all(lo <= 0) and np.all(hi >= 0))


def _elementwise_zeros(kind: str) -> Callable[[Any, Step], None]:
  """``kind``: "all" (zero where every operand is: f(0, 0) = 0), "any" (where one is: a
  product), "first" (where the first is: a quotient) or "none" (f(0) != 0)."""

  def zeros(z: Any, step: Step) -> None:
    name, ins, out = step.primitive.name, step.ins, step.outs[0]
    operands = ins[1:2] if name == "clamp" else ins[1:] if name == "select_n" else ins
    how = "first" if name == "integer_pow" and step.params["y"] > 0 else kind
    per_set = {}
    for s in z.classes(out):
      parts = [z.get(v, s) for v in operands]
      if name in ("max", "min"):
        parts = [p | _bound_keeps_zero(z.g, v, name) for p, v in zip(parts, operands)]
      if how == "all":
        acc = np.logical_and.reduce(parts)
        if name == "clamp":
          acc = acc & _clamp_keeps_zero(z.g, ins)
      elif how == "any":
        acc = np.logical_or.reduce(parts)
      elif how == "first":
        acc = parts[0].copy()
      else:
        acc = np.zeros(z.size(s), bool)
      carrying = [z.get(v, s) for v in operands if s in z.classes(v)]
      was = np.logical_or.reduce(carrying) if carrying else np.zeros_like(acc)
      for k in np.flatnonzero(was & ~acc):
        z.lost[s, int(k)] = (name, step.where)  # the last loss is the one that stays
      per_set[s] = acc
    wholes = [z.whole_zero(v) for v in operands]
    whole = {"all": all(wholes), "any": any(wholes), "first": wholes[0]}.get(how, False)
    z.put(out, per_set, whole)

  return zeros


# -- shapes -----------------------------------------------------------------------------------


def _couple_broadcast(g: Graph, step: Step, index: int) -> Coupled:
  val, out = g.values[step.ins[0]], g.values[step.outs[0]]
  for j, d in enumerate(step.params["broadcast_dimensions"]):
    if val.shape[j] == out.shape[d]:
      g.same(val.nodes[j], out.nodes[d], _why(step))
  return Coupled(view_of=step.ins[0])


def _resize_shape(g: Graph, step: Step, p: dict[str, Any], size: Callable[[int], int]) -> None:
  p["shape"] = tuple(size(n) for n in g.values[step.outs[0]].nodes)
  if "sharding" in p:
    p["sharding"] = None


def _couple_reshape(g: Graph, step: Step, index: int) -> Coupled:
  if step.params.get("dimensions") is not None:
    raise ValueError(f"couple: primitive 'reshape' with dimensions at {step.where} is not"
                     " supported.")
  val = g.values[step.ins[0]]
  g.set_nodes(step.outs[0], _reshape(g, val, g.values[step.outs[0]].shape, _why(step)))
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


def _resize_reshape(g: Graph, step: Step, p: dict[str, Any], size: Callable[[int], int]) -> None:
  p["new_sizes"] = tuple(size(n) for n in g.values[step.outs[0]].nodes)
  if "sharding" in p:
    p["sharding"] = None


def _couple_squeeze(g: Graph, step: Step, index: int) -> Coupled:
  val = g.values[step.ins[0]]
  dims = {d % len(val.shape) for d in step.params["dimensions"]}
  g.set_nodes(step.outs[0], [n for d, n in enumerate(val.nodes) if d not in dims])
  return Coupled(view_of=step.ins[0])


def _couple_transpose(g: Graph, step: Step, index: int) -> Coupled:
  val = g.values[step.ins[0]]
  g.set_nodes(step.outs[0], [val.nodes[d] for d in step.params["permutation"]])
  return Coupled(view_of=step.ins[0])


def _couple_rev(g: Graph, step: Step, index: int) -> Coupled:
  val = g.values[step.ins[0]]
  for d in step.params["dimensions"]:
    g.nodes.mark(val.nodes[d], f"reversed by {_why(step)}")
  g.set_nodes(step.outs[0], list(val.nodes))
  return Coupled()


# -- reductions -------------------------------------------------------------------------------


def _couple_reduction(g: Graph, step: Step, index: int) -> Coupled:
  val = g.values[step.ins[0]]
  axes = set(step.params["axes"])
  for d in axes:
    g.nodes.mark(val.nodes[d], f"it is reduced over by {_why(step)}")
    g.reduced.append((val.nodes[d], _why(step)))
  g.set_nodes(step.outs[0], [n for d, n in enumerate(val.nodes) if d not in axes])
  return Coupled()


def _couple_cumulative(g: Graph, step: Step, index: int) -> Coupled:
  val = g.values[step.ins[0]]
  axis = val.nodes[step.params["axis"]]
  g.nodes.mark(axis, f"it is accumulated along by {_why(step)}")
  g.reduced.append((axis, _why(step)))
  g.set_nodes(step.outs[0], list(val.nodes))
  return Coupled()


def _couple_windowed(g: Graph, step: Step, index: int) -> Coupled:
  p = step.params
  out = g.values[step.outs[0]]
  for d, n in enumerate(g.values[step.ins[0]].nodes):
    plain = (p["window_dimensions"][d] == 1 and p["window_strides"][d] == 1
             and tuple(p["padding"][d]) == (0, 0) and p["base_dilation"][d] == 1
             and p["window_dilation"][d] == 1)
    if plain:
      g.same(n, out.nodes[d], _why(step))
    else:
      g.nodes.mark(n, f"it is pooled over by {_why(step)}")
  return Coupled()


# -- contractions -----------------------------------------------------------------------------


def _couple_dot(g: Graph, step: Step, index: int) -> Coupled:
  (lc, rc), (lb, rb) = step.params["dimension_numbers"]
  lhs, rhs = _vals(g, step)
  why = _why(step)
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


def _dot_axes(g: Graph, step: Step) -> tuple[list[int], list[int], list[int]]:
  """A dot_general's batch axes, and the free axes of its two operands."""
  (lc, rc), (lb, rb) = step.params["dimension_numbers"]
  lhs, rhs = g.values[step.ins[0]].nodes, g.values[step.ins[1]].nodes
  return ([lhs[d] for d in lb], [n for d, n in enumerate(lhs) if d not in lc + lb],
          [n for d, n in enumerate(rhs) if d not in rc + rb])


def _dot_mac_dims(g: Graph, step: Step) -> list[int]:
  (lc, _), _ = step.params["dimension_numbers"]
  lhs = g.values[step.ins[0]]
  return list(g.values[step.outs[0]].nodes) + [lhs.nodes[a] for a in lc]


def _couple_conv(g: Graph, step: Step, index: int) -> Coupled:
  p = step.params
  dn = p["dimension_numbers"]
  lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
  lhs, rhs = _vals(g, step)
  out = g.values[step.outs[0]]
  why = _why(step)
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


def _resize_conv(g: Graph, step: Step, p: dict[str, Any], size: Callable[[int], int]) -> None:
  if step.aux.get("group") is not None:
    p["feature_group_count"] = size(step.aux["group"])


def _conv_mac_dims(g: Graph, step: Step) -> list[int]:
  rhs_spec = step.params["dimension_numbers"].rhs_spec
  rhs = g.values[step.ins[1]]
  return (list(g.values[step.outs[0]].nodes) + [step.aux["in_per_group"]]
          + [rhs.nodes[d] for d in rhs_spec[2:]])


def _conv_batch(g: Graph, step: Step) -> list[int]:
  group = step.aux.get("group")
  return [group] if group is not None else []


def _conv_out(g: Graph, step: Step) -> list[int]:
  return [g.values[step.ins[1]].nodes[step.params["dimension_numbers"].rhs_spec[0]]]


# -- pieces -----------------------------------------------------------------------------------


def _couple_concatenate(g: Graph, step: Step, index: int) -> Coupled:
  dim = step.params["dimension"]
  out = g.values[step.outs[0]]
  why = _why(step)
  vals = _vals(g, step)
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


def _couple_slice(g: Graph, step: Step, index: int) -> Coupled:
  p = step.params
  val = g.values[step.ins[0]]
  out = g.values[step.outs[0]]
  why = _why(step)
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


def _resize_slice(g: Graph, step: Step, p: dict[str, Any], size: Callable[[int], int]) -> None:
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


def _couple_split(g: Graph, step: Step, index: int) -> Coupled:
  axis = step.params["axis"]
  val = g.values[step.ins[0]]
  outs = [g.values[o] for o in step.outs]
  why = _why(step)
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


def _resize_split(g: Graph, step: Step, p: dict[str, Any], size: Callable[[int], int]) -> None:
  p["sizes"] = tuple(size(g.values[o].nodes[p["axis"]]) for o in step.outs)


def _couple_pad(g: Graph, step: Step, index: int) -> Coupled:
  val = g.values[step.ins[0]]
  out = g.values[step.outs[0]]
  why = _why(step)
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


def _resize_pad(g: Graph, step: Step, p: dict[str, Any], size: Callable[[int], int]) -> None:
  config = []
  for d, (lo, hi, interior) in enumerate(p["padding_config"]):
    pads = step.aux["pads"][d]
    if pads is not None:
      lo = size(pads[0]) if pads[0] is not None else 0
      hi = size(pads[1]) if pads[1] is not None else 0
    config.append((lo, hi, interior))
  p["padding_config"] = tuple(config)


# -- indices ----------------------------------------------------------------------------------


def _couple_iota(g: Graph, step: Step, index: int) -> Coupled:
  g.mark_value(step.outs[0], f"its values are indices ({_why(step)})")
  return Coupled()


def _couple_sort(g: Graph, step: Step, index: int) -> Coupled:
  g.mark_value(step.ins[0], f"it is sorted by {_why(step)}")
  for o in step.outs:
    g.mark_value(o, f"it is sorted by {_why(step)}")
  return Coupled()


def _couple_gather(g: Graph, step: Step, index: int) -> Coupled:
  p = step.params
  dn = p["dimension_numbers"]
  op, idx = _vals(g, step)
  out = g.values[step.outs[0]]
  why = _why(step)
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


def _resize_gather(g: Graph, step: Step, p: dict[str, Any], size: Callable[[int], int]) -> None:
  sizes = list(p["slice_sizes"])
  for d in step.aux["full"]:
    sizes[d] = size(g.values[step.ins[0]].nodes[d])
  p["slice_sizes"] = tuple(sizes)


def _couple_dynamic_slice(g: Graph, step: Step, index: int) -> Coupled:
  val = g.values[step.ins[0]]
  out = g.values[step.outs[0]]
  for d, (n, s) in enumerate(zip(val.nodes, step.params["slice_sizes"])):
    if s == val.shape[d]:
      g.same(n, out.nodes[d], _why(step))
    else:
      g.nodes.mark(n, f"it is sliced at a traced index by {_why(step)}")
  for v in step.ins[1:]:
    g.mark_value(v, f"an index of {_why(step)}")
  return Coupled()


def _resize_dynamic_slice(g: Graph, step: Step, p: dict[str, Any],
                          size: Callable[[int], int]) -> None:
  val = g.values[step.ins[0]]
  p["slice_sizes"] = tuple(size(val.nodes[d]) if s == val.shape[d] else s
                           for d, s in enumerate(p["slice_sizes"]))


def _couple_dynamic_update_slice(g: Graph, step: Step, index: int) -> Coupled:
  op, upd = g.values[step.ins[0]], g.values[step.ins[1]]
  out = g.values[step.outs[0]]
  why = _why(step)
  for d in range(len(op.shape)):
    g.same(op.nodes[d], out.nodes[d], why)
    if upd.shape[d] == op.shape[d]:
      g.same(upd.nodes[d], op.nodes[d], why)
    else:
      g.nodes.mark(op.nodes[d], f"it is updated at a traced index by {why}")
      g.nodes.mark(upd.nodes[d], f"it is updated at a traced index by {why}")
  return Coupled()


# -- the table --------------------------------------------------------------------------------


def _table() -> dict[str, Rule]:
  rules: dict[str, Rule] = {}
  for names, kind in ((ZERO_PRESERVING | BINARY_ALL, "all"), (BINARY_ANY, "any"),
                      (BINARY_FIRST, "first"), (NOT_ZERO_PRESERVING | OTHER_ELEMENTWISE, "none")):
    for name in names:
      rules[name] = Rule(_couple_elementwise, _elementwise_zeros(kind))
  moved = _moved()
  first_only = _moved(slice(0, 1))
  rules.update({
      "broadcast_in_dim": Rule(_couple_broadcast, moved, _resize_shape),
      "reshape": Rule(_couple_reshape, moved, _resize_reshape),
      "squeeze": Rule(_couple_squeeze, moved),
      "transpose": Rule(_couple_transpose, moved),
      "rev": Rule(_couple_rev, moved),
      **{name: Rule(_couple_reduction, moved) for name in REDUCTIONS},
      **{name: Rule(_couple_reduction, _never_zero) for name in ARG_REDUCTIONS},
      **{name: Rule(_couple_cumulative, moved) for name in CUMULATIVE},
      **{name: Rule(_couple_windowed, moved) for name in WINDOWED},
      "dot_general": Rule(_couple_dot, _contraction_zeros(
          lambda g, s: _dot_axes(g, s)[0], lambda g, s: _dot_axes(g, s)[1],
          lambda g, s: _dot_axes(g, s)[2]), mac_dims=_dot_mac_dims),
      "conv_general_dilated": Rule(_couple_conv, _contraction_zeros(
          _conv_batch, lambda g, s: [], _conv_out), _resize_conv, _conv_mac_dims),
      "concatenate": Rule(_couple_concatenate, moved),
      "slice": Rule(_couple_slice, moved, _resize_slice),
      "split": Rule(_couple_split, moved, _resize_split),
      "pad": Rule(_couple_pad, _pad_zeros, _resize_pad),
      "iota": Rule(_couple_iota, _never_zero, _resize_shape),
      "sort": Rule(_couple_sort, _never_zero),
      "top_k": Rule(_couple_sort, _never_zero),
      "gather": Rule(_couple_gather, first_only, _resize_gather),
      "dynamic_slice": Rule(_couple_dynamic_slice, first_only, _resize_dynamic_slice),
      "dynamic_update_slice": Rule(_couple_dynamic_update_slice, _moved(slice(0, 2))),
  })
  return rules


RULES: dict[str, Rule] = _table()
"""Every primitive :func:`gsm_optax.couple` and :func:`gsm_optax.narrow` support, by name."""
