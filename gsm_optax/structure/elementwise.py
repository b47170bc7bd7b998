"""The rules of the elementwise primitives: unary, binary and the others that act on
one position at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gsm_optax.structure.graph import Graph, Step
from gsm_optax.structure.rule import Coupled, operand_values, reason

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


def couple_elementwise(g: Graph, step: Step, index: int) -> Coupled:
  vals = operand_values(g, step)
  out = g.values[step.outs[0]]
  for val in vals:
    if len(val.shape) == len(out.shape):
      for ax, (s, t) in enumerate(zip(val.shape, out.shape)):
        if s == t:
          g.same(val.nodes[ax], out.nodes[ax], reason(step))
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


def elementwise_zeros(kind: str) -> Callable[[Any, Step], None]:
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
