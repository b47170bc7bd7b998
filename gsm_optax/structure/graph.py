"""The channel identity of every array axis of a traced computation.

A jaxpr is inlined into one flat list of steps (the sub-jaxprs of ``jit``,
``custom_jvp``, ``custom_vjp``, ``remat`` and ``closed_call`` expanded), and
every axis of every value gets a node of a union-find. A node stands for one
set of channels: each primitive unifies the nodes of the axes it matches (the
two sides of an add, a contraction's two axes, a convolution's input features
and its kernel's) and builds new nodes from old ones where an axis is a
product (a reshape's merge or split: heads x head_dim, an NHWC map flattened)
or a sum (a concatenation, a slice, a pad) of others. The leaves of the
structure are the channel sets; a set is unprunable when removing some of its
channels would change what the computation does to the others (a reduction
over it, an index-dependent op, a model input or output).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from jax.extend import core as jex_core

PROD, SUM = "prod", "sum"


class Nodes:
  """A union-find over axis nodes, each of a fixed size, with product/sum structure."""

  def __init__(self) -> None:
    self.parent: list[int] = []
    self.size: list[int] = []
    self.struct: list[tuple[str, list[int]] | None] = []
    self.reason: dict[int, str] = {}  # root -> why it is unprunable

  def new(self, size: int, struct: tuple[str, list[int]] | None = None) -> int:
    self.parent.append(len(self.parent))
    self.size.append(int(size))
    self.struct.append(struct)
    return len(self.parent) - 1

  def find(self, i: int) -> int:
    root = i
    while self.parent[root] != root:
      root = self.parent[root]
    while self.parent[i] != root:
      self.parent[i], i = root, self.parent[i]
    return root

  def leaves(self, i: int) -> list[int]:
    r = self.find(i)
    s = self.struct[r]
    if s is None:
      return [r]
    return [leaf for c in s[1] for leaf in self.leaves(c)]

  def mark(self, i: int, reason: str) -> None:
    for leaf in self.leaves(i):
      self.reason.setdefault(self.find(leaf), reason)

  def _link(self, child: int, root: int) -> None:
    self.parent[child] = root
    if child in self.reason:
      self.reason.setdefault(root, self.reason.pop(child))

  def unify(self, a: int, b: int, why: str) -> None:
    ra, rb = self.find(a), self.find(b)
    if ra == rb:
      return
    if self.size[ra] != self.size[rb]:
      raise AssertionError(f"unify sizes {self.size[ra]} != {self.size[rb]} ({why})")
    sa, sb = self.struct[ra], self.struct[rb]
    if sa is None:
      self._link(ra, rb)
      return
    if sb is None:
      self._link(rb, ra)
      return
    if sa[0] == sb[0]:
      pa = self._refine_pair(ra, rb, sa[0])
      if pa is not None:
        self._link(ra, rb)
        for x, y in zip(*pa):
          self.unify(x, y, why)
        return
    # Two incompatible structures of the same axis: the channels cannot be told apart.
    self.mark(ra, f"its axis is split in two incompatible ways ({why})")
    self.mark(rb, f"its axis is split in two incompatible ways ({why})")
    self._link(ra, rb)

  def atoms(self, i: int, kind: str) -> list[int]:
    """The node flattened through nested structure of ``kind``: roots that are leaves or of
    the other kind."""
    r = self.find(i)
    s = self.struct[r]
    if s is None or s[0] != kind:
      return [r]
    return [a for c in s[1] for a in self.atoms(c, kind)]

  def _cuts(self, atoms: list[int], kind: str) -> list[int]:
    """Boundaries of ``atoms``: inner products from the minor end (prod) or offsets (sum)."""
    cuts, acc = [], 1 if kind == PROD else 0
    seq = reversed(atoms) if kind == PROD else atoms
    for a in seq:
      acc = acc * self.size[a] if kind == PROD else acc + self.size[a]
      cuts.append(acc)
    return cuts

  def refine(self, i: int, kind: str, cuts: set[int]) -> list[int] | None:
    """Splits the atoms of ``i`` so that its boundaries include ``cuts``; its new atoms, or
    None when that cannot be done (a split inside an atom of the other kind, or sizes that
    do not divide)."""
    atoms = self.atoms(i, kind)
    if kind == PROD:
      out_rev, inner = [], 1
      for a in reversed(atoms):
        outer = inner * self.size[a]
        inside = sorted(c for c in cuts if inner < c < outer)
        if inside:
          if self.struct[a] is not None:
            return None
          bounds = [inner] + inside + [outer]
          if any(y % x for x, y in zip(bounds, bounds[1:])):
            return None
          sizes = [y // x for x, y in zip(bounds, bounds[1:])]  # minor first
          parts = [self.new(s) for s in reversed(sizes)]
          self.struct[a] = (PROD, parts)
          out_rev.extend(reversed(parts))
        else:
          out_rev.append(a)
        inner = outer
      return list(reversed(out_rev))
    out, start = [], 0
    for a in atoms:
      end = start + self.size[a]
      inside = sorted(c for c in cuts if start < c < end)
      if inside:
        if self.struct[a] is not None:
          return None
        bounds = [start] + inside + [end]
        parts = [self.new(y - x) for x, y in zip(bounds, bounds[1:])]
        self.struct[a] = (SUM, parts)
        out.extend(parts)
      else:
        out.append(a)
      start = end
    return out

  def _refine_pair(self, a: int, b: int, kind: str) -> tuple[list[int], list[int]] | None:
    cuts = set(self._cuts(self.atoms(a, kind), kind)) | set(self._cuts(self.atoms(b, kind), kind))
    if kind == PROD:
      ordered = sorted(cuts)
      if any(y % x for x, y in zip(ordered, ordered[1:])):
        return None
    xa = self.refine(a, kind, cuts)
    xb = self.refine(b, kind, cuts)
    if xa is None or xb is None or [self.size[x] for x in xa] != [self.size[x] for x in xb]:
      return None
    return xa, xb

  def split(self, i: int, kind: str, sizes: list[int]) -> list[int] | None:
    """Nodes for consecutive pieces of ``i`` of the given sizes (major first), refining its
    structure; None when it cannot be split so."""
    if len(sizes) == 1:
      return [i]
    if kind == PROD:
      cuts, acc = set(), 1
      for s in reversed(sizes):
        acc *= s
        cuts.add(acc)
    else:
      cuts = set(np.cumsum(sizes).tolist())
    atoms = self.refine(i, kind, cuts)
    if atoms is None:
      return None
    out, k = [], 0
    for s in sizes:
      group, acc = [], 1 if kind == PROD else 0
      while (acc < s if kind == SUM else acc < s) and k < len(atoms):
        group.append(atoms[k])
        acc = acc * self.size[atoms[k]] if kind == PROD else acc + self.size[atoms[k]]
        k += 1
      if kind == PROD and s == 1:
        out.append(self.new(1))
        continue
      out.append(group[0] if len(group) == 1 else self.new(s, (kind, group)))
    return out

  def labels(self, i: int) -> dict[int, np.ndarray]:
    """Per leaf set of the axis node ``i``: the channel of each position (-1 where absent)."""
    r = self.find(i)
    s = self.struct[r]
    n = self.size[r]
    if s is None:
      return {r: np.arange(n)}
    if s[0] == SUM:
      out: dict[int, np.ndarray] = {}
      start = 0
      for c in s[1]:
        m = self.size[self.find(c)]
        for leaf, lab in self.labels(c).items():
          full = out.setdefault(leaf, np.full(n, -1))
          full[start:start + m] = np.where(lab >= 0, lab, full[start:start + m])
        start += m
      return out
    sizes = [self.size[self.find(c)] for c in s[1]]
    out = {}
    for j, c in enumerate(s[1]):
      shape = [1] * len(sizes)
      shape[j] = sizes[j]
      for leaf, lab in self.labels(c).items():
        full = np.broadcast_to(lab.reshape(shape), sizes).reshape(-1)
        if leaf in out:  # the same set twice in one axis: positions where either is absent
          out[leaf] = np.where(full < 0, full, out[leaf])
        else:
          out[leaf] = full
    return out


class Step(NamedTuple):
  """One primitive of the flattened computation."""

  primitive: Any
  params: dict[str, Any]
  ins: tuple[int, ...]
  outs: tuple[int, ...]
  where: str
  aux: dict[str, Any]


class Value(NamedTuple):
  shape: tuple[int, ...]
  dtype: Any
  nodes: tuple[int, ...]


SUB_JAXPRS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr",
              "core_call": "call_jaxpr", "custom_jvp_call": "call_jaxpr",
              "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr",
              "remat": "jaxpr", "checkpoint": "jaxpr", "remat2": "jaxpr"}

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
    "is_finite", "not", "acos", "acosh", "tan", "population_count", "clz"}
BINARY_ALL = {"add", "sub", "max", "min", "or", "xor", "add_any", "select_n", "clamp"}
BINARY_ANY = {"mul", "and"}
BINARY_FIRST = {"div", "rem"}
OTHER_ELEMENTWISE = {"pow", "atan2", "nextafter", "eq", "ne", "lt", "le", "gt", "ge",
                     "integer_pow", "shift_left", "shift_right_logical",
                     "shift_right_arithmetic", "igamma", "igammac", "polygamma", "zeta",
                     "bessel_i0e", "bessel_i1e", "random_gamma_grad", "regularized_incomplete_beta"}
ELEMENTWISE = (ZERO_PRESERVING | NOT_ZERO_PRESERVING | BINARY_ALL | BINARY_ANY | BINARY_FIRST
               | OTHER_ELEMENTWISE)
REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and",
              "reduce_or", "reduce_xor", "argmax", "argmin"}
CUMULATIVE = {"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"}
WINDOWED = {"reduce_window_sum", "reduce_window_max", "reduce_window_min"}


def where(eqn: Any) -> str | None:
  """The user's source line of a jaxpr equation (the first frame outside jax and flax), or
  None when the equation has none."""
  from jax._src import source_info_util  # the only way to read an equation's source line

  try:
    frames = list(source_info_util.user_frames(eqn.source_info.traceback))
  except Exception:  # noqa: BLE001 -- a missing traceback only loses the line
    frames = []
  fmt = lambda f: f"{f.file_name}:{f.start_line} ({f.function_name})"
  library = ("/flax/", "/optax/", "/gsm_optax/structure/")
  user = [f for f in frames if not any(x in f.file_name.replace("\\", "/") for x in library)]
  if user and frames[0] is not user[0]:
    return f"{fmt(user[0])}, in {fmt(frames[0])}"
  if frames:
    return fmt(frames[0])
  return None


class Graph:
  """The flattened computation with a node for every axis of every value (pass one)."""

  def __init__(self) -> None:
    self.nodes = Nodes()
    self.values: list[Value] = []
    self.consts: dict[int, np.ndarray] = {}
    self.steps: list[Step] = []
    self.origin: dict[int, int] = {}  # value -> the parameter it is a reshaped/cast view of
    self.consumed: set[tuple[int, int]] = set()  # (param value, leaf set) contracted
    self.produced: set[tuple[int, int]] = set()  # (param value, leaf set) used otherwise
    self.contractions: list[tuple[int, list[int]]] = []  # (step, contracted leaf sets)
    self.first_use: dict[int, int] = {}  # param value -> the first step that reads it
    self.reduced: list[tuple[int, str]] = []  # (node, where): axes whose size a result bakes in

  def new_value(self, shape: tuple[int, ...], dtype: Any, nodes: list[int] | None = None) -> int:
    if nodes is None:
      nodes = [self.nodes.new(s) for s in shape]
    self.values.append(Value(tuple(int(s) for s in shape), dtype, tuple(nodes)))
    return len(self.values) - 1

  def node(self, v: int, axis: int) -> int:
    return self.values[v].nodes[axis]

  # -- inlining -------------------------------------------------------------------------

  def inline(self, jaxpr: Any, consts: list[Any], args: list[int],
             outer: str | None = None) -> list[int]:
    env: dict[Any, int] = {}
    for var, c in zip(jaxpr.constvars, consts):
      env[var] = self.constant(c)
    for var, a in zip(jaxpr.invars, args):
      env[var] = a

    def read(x):
      if isinstance(x, jex_core.Literal):
        return self.constant(x.val)
      return env[x]

    for eqn in jaxpr.eqns:
      ins = [read(x) for x in eqn.invars]
      name = eqn.primitive.name
      here = where(eqn) or outer or "an unknown line"
      if name in SUB_JAXPRS:
        sub = eqn.params.get(SUB_JAXPRS[name])
        if sub is None:
          sub = eqn.params.get("call_jaxpr") or eqn.params.get("fun_jaxpr")
        inner, inner_consts = (sub.jaxpr, sub.consts) if hasattr(sub, "consts") else (sub, [])
        outs = self.inline(inner, list(inner_consts), ins, here)
      elif name in ("cond", "while", "scan", "switch"):
        raise ValueError(
            f"couple: primitive '{name}' at {here} is not supported: control flow"
            " (lax.cond, lax.while_loop, lax.scan, nn.scan) cannot be narrowed channel by channel"
            " yet. Unroll it, or write the gsm_optax.Groups by hand.")
      else:
        outs = [self.new_value(v.aval.shape, v.aval.dtype) if hasattr(v.aval, "shape")
                else self.new_value((), None) for v in eqn.outvars]
        step = Step(eqn.primitive, dict(eqn.params), tuple(ins), tuple(outs), here, {})
        self.steps.append(step)
        self.rule(step, len(self.steps) - 1)
      for var, o in zip(eqn.outvars, outs):
        env[var] = o
    return [read(x) for x in jaxpr.outvars]

  def constant(self, value: Any) -> int:
    arr = np.asarray(value)
    v = self.new_value(arr.shape, arr.dtype)
    self.consts[v] = arr
    return v

  # -- the rules --------------------------------------------------------------------------

  def _same(self, a: int, b: int, why: str) -> None:
    self.nodes.unify(a, b, why)

  def _mark_value(self, v: int, reason: str) -> None:
    for n in self.values[v].nodes:
      self.nodes.mark(n, reason)

  def _set_nodes(self, out: int, nodes: list[int]) -> None:
    val = self.values[out]
    self.values[out] = Value(val.shape, val.dtype, tuple(nodes))

  def _use(self, v: int, contracted: set[int]) -> None:
    """Records how a parameter (or a view of one) is used: its leaf sets in ``contracted``
    are consumed, the others produced."""
    p = self.origin.get(v)
    if p is None:
      return
    self.first_use.setdefault(p, len(self.steps) - 1)
    for n in self.values[v].nodes:
      for leaf in self.nodes.leaves(n):
        (self.consumed if leaf in contracted else self.produced).add((p, leaf))

  def rule(self, step: Step, index: int) -> None:
    name = step.primitive.name
    p = step.params
    ins, outs = step.ins, step.outs
    vals = [self.values[i] for i in ins]
    why = f"{name} at {step.where}"
    contracted: set[int] = set()
    view_of_param = None
    if name in ELEMENTWISE:
      out = self.values[outs[0]]
      for val in vals:
        if len(val.shape) == len(out.shape):
          for ax, (s, t) in enumerate(zip(val.shape, out.shape)):
            if s == t:
              self._same(val.nodes[ax], out.nodes[ax], why)
      arrays = [v for v, val in zip(ins, vals) if val.shape and v not in self.consts]
      if len(arrays) == 1 and name in ZERO_PRESERVING | {"mul", "div"}:
        view_of_param = arrays[0]
    elif name == "broadcast_in_dim":
      out = self.values[outs[0]]
      for j, d in enumerate(p["broadcast_dimensions"]):
        if vals[0].shape[j] == out.shape[d]:
          self._same(vals[0].nodes[j], out.nodes[d], why)
      view_of_param = ins[0]
    elif name == "reshape":
      if p.get("dimensions") is not None:
        raise ValueError(f"couple: primitive 'reshape' with dimensions at {step.where} is not"
                         " supported.")
      self._set_nodes(outs[0], self._reshape(vals[0], self.values[outs[0]].shape, why))
      view_of_param = ins[0]
    elif name == "squeeze":
      dims = {d % len(vals[0].shape) for d in p["dimensions"]}
      self._set_nodes(outs[0], [n for d, n in enumerate(vals[0].nodes) if d not in dims])
      view_of_param = ins[0]
    elif name == "expand_dims":
      raise ValueError(f"couple: primitive 'expand_dims' at {step.where} is not supported.")
    elif name == "transpose":
      self._set_nodes(outs[0], [vals[0].nodes[d] for d in p["permutation"]])
      view_of_param = ins[0]
    elif name == "rev":
      for d in p["dimensions"]:
        self.nodes.mark(vals[0].nodes[d], f"reversed by {why}")
      self._set_nodes(outs[0], list(vals[0].nodes))
    elif name in REDUCTIONS:
      axes = set(p["axes"])
      for d in axes:
        self.nodes.mark(vals[0].nodes[d], f"it is reduced over by {why}")
        self.reduced.append((vals[0].nodes[d], why))
      self._set_nodes(outs[0], [n for d, n in enumerate(vals[0].nodes) if d not in axes])
    elif name in CUMULATIVE:
      self.nodes.mark(vals[0].nodes[p["axis"]], f"it is accumulated along by {why}")
      self.reduced.append((vals[0].nodes[p["axis"]], why))
      self._set_nodes(outs[0], list(vals[0].nodes))
    elif name in WINDOWED:
      out = self.values[outs[0]]
      for d, n in enumerate(vals[0].nodes):
        plain = (p["window_dimensions"][d] == 1 and p["window_strides"][d] == 1
                 and tuple(p["padding"][d]) == (0, 0) and p["base_dilation"][d] == 1
                 and p["window_dilation"][d] == 1)
        if plain:
          self._same(n, out.nodes[d], why)
        else:
          self.nodes.mark(n, f"it is pooled over by {why}")
    elif name == "dot_general":
      (lc, rc), (lb, rb) = p["dimension_numbers"]
      lhs, rhs = vals
      for a, b in zip(lc, rc):
        self._same(lhs.nodes[a], rhs.nodes[b], why)
      for a, b in zip(lb, rb):
        self._same(lhs.nodes[a], rhs.nodes[b], why)
      lfree = [n for d, n in enumerate(lhs.nodes) if d not in lc and d not in lb]
      rfree = [n for d, n in enumerate(rhs.nodes) if d not in rc and d not in rb]
      out = self.values[outs[0]]
      for n, m in zip([lhs.nodes[d] for d in lb] + lfree + rfree, out.nodes):
        self._same(n, m, why)
      contracted = {leaf for a in lc for leaf in self.nodes.leaves(lhs.nodes[a])}
      step.aux["contracted"] = [lhs.nodes[a] for a in lc]
      self.contractions.append((index, [lhs.nodes[a] for a in lc]))
    elif name == "conv_general_dilated":
      self._conv(step, index, vals, why)
      contracted = {leaf for leaf in self.nodes.leaves(step.aux["in_per_group"])}
    elif name == "concatenate":
      self._concatenate(step, vals, why)
    elif name == "slice":
      self._slice(step, vals, why)
    elif name == "split":
      self._split(step, vals, why)
    elif name == "pad":
      self._pad(step, vals, why)
    elif name == "select_and_gather_add":
      raise ValueError(f"couple: primitive '{name}' at {step.where} is not supported.")
    elif name in ("iota",):
      self._mark_value(outs[0], f"its values are indices ({why})")
    elif name in ("sort", "top_k"):
      self._mark_value(ins[0], f"it is sorted by {why}")
      for o in outs:
        self._mark_value(o, f"it is sorted by {why}")
    elif name == "gather":
      self._gather(step, vals, why)
    elif name == "dynamic_slice":
      out = self.values[outs[0]]
      for d, (n, s) in enumerate(zip(vals[0].nodes, p["slice_sizes"])):
        if s == vals[0].shape[d]:
          self._same(n, out.nodes[d], why)
        else:
          self.nodes.mark(n, f"it is sliced at a traced index by {why}")
      for v in ins[1:]:
        self._mark_value(v, f"an index of {why}")
    elif name == "dynamic_update_slice":
      op, upd = vals[0], vals[1]
      out = self.values[outs[0]]
      for d in range(len(op.shape)):
        self._same(op.nodes[d], out.nodes[d], why)
        if upd.shape[d] == op.shape[d]:
          self._same(upd.nodes[d], op.nodes[d], why)
        else:
          self.nodes.mark(op.nodes[d], f"it is updated at a traced index by {why}")
          self.nodes.mark(upd.nodes[d], f"it is updated at a traced index by {why}")
    else:
      raise ValueError(
          f"couple: primitive '{name}' at {step.where} is not supported: its effect on channels"
          " is unknown, so no coupling is given rather than a wrong one. Please report it, or"
          " write the gsm_optax.Groups by hand.")
    for v in ins:
      if view_of_param is not None and v == view_of_param and v in self.origin:
        continue
      self._use(v, contracted)
    if view_of_param is not None and view_of_param in self.origin and len(outs) == 1:
      self.origin[outs[0]] = self.origin[view_of_param]

  def _reshape(self, val: Value, shape: tuple[int, ...], why: str) -> list[int]:
    n = self.nodes
    ins = [(d, s) for d, s in enumerate(val.shape) if s != 1]
    outs = [(d, s) for d, s in enumerate(shape) if s != 1]
    result = [None] * len(shape)
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

  def _conv(self, step: Step, index: int, vals: list[Value], why: str) -> None:
    p = step.params
    dn = p["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    lhs, rhs = vals
    out = self.values[step.outs[0]]
    if p["batch_group_count"] != 1:
      raise ValueError(f"couple: conv_general_dilated with batch_group_count"
                       f"={p['batch_group_count']} at {step.where} is not supported.")
    g = p["feature_group_count"]
    n = self.nodes
    self._same(lhs.nodes[lhs_spec[0]], out.nodes[out_spec[0]], why)  # batch
    c_in, c_out = lhs.nodes[lhs_spec[1]], rhs.nodes[rhs_spec[0]]
    k_in = rhs.nodes[rhs_spec[1]]
    self._same(c_out, out.nodes[out_spec[1]], why)
    if g == 1:
      self._same(c_in, k_in, why)
      step.aux.update(in_per_group=k_in, group=None)
    else:
      groups = n.new(g)
      lhs_parts = n.split(c_in, PROD, [g, rhs.shape[rhs_spec[1]]])
      out_parts = n.split(c_out, PROD, [g, rhs.shape[rhs_spec[0]] // g])
      if lhs_parts is None or out_parts is None:
        for q in (c_in, c_out, k_in):
          n.mark(q, f"grouped convolution {why}")
        step.aux.update(in_per_group=k_in, group=None)
      else:
        self._same(lhs_parts[0], groups, why)
        self._same(out_parts[0], groups, why)
        self._same(lhs_parts[1], k_in, why)
        step.aux.update(in_per_group=k_in, group=groups)
    for d in lhs_spec[2:]:
      n.mark(lhs.nodes[d], f"it is a spatial axis of {why}")
    for d in rhs_spec[2:]:
      n.mark(rhs.nodes[d], f"it is a window axis of {why}")
    self.contractions.append((index, [k_in]))

  def _concatenate(self, step: Step, vals: list[Value], why: str) -> None:
    dim = step.params["dimension"]
    out = self.values[step.outs[0]]
    for val in vals:
      for d in range(len(out.shape)):
        if d != dim:
          self._same(val.nodes[d], out.nodes[d], why)
    parts = [val.nodes[dim] for val in vals if val.shape[dim]]
    roots = {self.nodes.find(q) for q in parts}
    if len(roots) == 1 and len(parts) > 1:  # k copies of the same channels (im2col patches)
      copies = self.nodes.new(len(parts))
      self.nodes.mark(copies, f"it counts copies of the same channels ({why})")
      node = self.nodes.new(out.shape[dim], (PROD, [copies, parts[0]]))
    else:
      node = self.nodes.new(out.shape[dim], (SUM, parts))
    self._same(node, out.nodes[dim], why)

  def _slice(self, step: Step, vals: list[Value], why: str) -> None:
    p = step.params
    val = vals[0]
    out = self.values[step.outs[0]]
    strides = p.get("strides") or (1,) * len(val.shape)
    ranges = []
    for d, (a, b, s) in enumerate(zip(p["start_indices"], p["limit_indices"], strides)):
      size = val.shape[d]
      if a == 0 and b == size and s == 1:
        self._same(val.nodes[d], out.nodes[d], why)
        ranges.append(None)
        continue
      if s != 1:
        self.nodes.mark(val.nodes[d], f"it is sliced with a stride by {why}")
        ranges.append(None)
        continue
      sizes = [x for x in (a, b - a, size - b) if x]
      parts = self.nodes.split(val.nodes[d], SUM, sizes)
      if parts is None:
        self.nodes.mark(val.nodes[d], f"it is sliced across its structure by {why}")
        self.nodes.mark(out.nodes[d], f"it is sliced across its structure by {why}")
        ranges.append(None)
        continue
      mid = parts[1] if a else parts[0]
      self._same(mid, out.nodes[d], why)
      ranges.append(parts[0] if a else None)
    step.aux["before"] = ranges  # per axis: the node of what precedes the slice, or None

  def _split(self, step: Step, vals: list[Value], why: str) -> None:
    axis = step.params["axis"]
    val = vals[0]
    outs = [self.values[o] for o in step.outs]
    for o in outs:
      for d in range(len(val.shape)):
        if d != axis:
          self._same(val.nodes[d], o.nodes[d], why)
    sizes = [s for s in step.params["sizes"] if s]
    parts = self.nodes.split(val.nodes[axis], SUM, sizes)
    if parts is None:
      self.nodes.mark(val.nodes[axis], f"it is split across its structure by {why}")
      for o in outs:
        self.nodes.mark(o.nodes[axis], f"it is split across its structure by {why}")
      return
    it = iter(parts)
    for o, s in zip(outs, step.params["sizes"]):
      if s:
        self._same(next(it), o.nodes[axis], why)

  def _pad(self, step: Step, vals: list[Value], why: str) -> None:
    val = vals[0]
    out = self.values[step.outs[0]]
    pads = []
    for d, (lo, hi, interior) in enumerate(step.params["padding_config"]):
      if (lo, hi, interior) == (0, 0, 0):
        self._same(val.nodes[d], out.nodes[d], why)
        pads.append(None)
      elif lo >= 0 and hi >= 0 and interior == 0:
        lo_n = self.nodes.new(lo) if lo else None
        hi_n = self.nodes.new(hi) if hi else None
        parts = [q for q in (lo_n, val.nodes[d], hi_n) if q is not None]
        self._same(self.nodes.new(out.shape[d], (SUM, parts)), out.nodes[d], why)
        pads.append((lo_n, hi_n))
      else:
        self.nodes.mark(val.nodes[d], f"it is padded by {why}")
        self.nodes.mark(out.nodes[d], f"it is padded by {why}")
        pads.append(None)
    step.aux["pads"] = pads

  def _gather(self, step: Step, vals: list[Value], why: str) -> None:
    p = step.params
    dn = p["dimension_numbers"]
    op = vals[0]
    out = self.values[step.outs[0]]
    collapsed = set(dn.collapsed_slice_dims) | set(getattr(dn, "operand_batching_dims", ()))
    offset_operand = [d for d in range(len(op.shape)) if d not in collapsed]
    full = []
    for d, od in zip(offset_operand, dn.offset_dims):
      if p["slice_sizes"][d] == op.shape[d]:
        self._same(op.nodes[d], out.nodes[od], why)
        full.append(d)
      else:
        self.nodes.mark(op.nodes[d], f"it is gathered from by {why}")
        self.nodes.mark(out.nodes[od], f"it is gathered from by {why}")
    for d in collapsed:
      self.nodes.mark(op.nodes[d], f"it is indexed by {why}")
    idx = vals[1]
    batch_out = [d for d in range(len(out.shape)) if d not in dn.offset_dims]
    for a, d in zip(range(len(idx.shape) - 1), batch_out):  # the last index axis: coordinates
      if idx.shape[a] == out.shape[d]:
        self._same(idx.nodes[a], out.nodes[d], why)
    self._mark_value(step.ins[1], f"an index of {why}")
    step.aux["full"] = full



def mac_dims(g: Graph, step: Step) -> list[int]:
  """The axis nodes whose sizes multiply to a contraction's MACs (its output axes and the
  axes it sums over)."""
  vals = [g.values[i] for i in step.ins]
  out = g.values[step.outs[0]]
  if step.primitive.name == "dot_general":
    (lc, _), _ = step.params["dimension_numbers"]
    return list(out.nodes) + [vals[0].nodes[a] for a in lc]
  rhs_spec = step.params["dimension_numbers"].rhs_spec
  return list(out.nodes) + [step.aux["in_per_group"]] + [vals[1].nodes[d] for d in rhs_spec[2:]]


def reads_inputs(g: Graph, inputs: list[int], outputs: list[int], empty: int | None) -> list[bool]:
  """Per output, whether it still depends on an input once every channel of the leaf set
  ``empty`` is gone (None: at full width).

  A value depends on an input when a step that reads one makes it, unless it has an axis of
  no channel left (it holds nothing) or it is a contraction over an axis of no channel left
  (a sum of nothing: its layer's bias, a constant).
  """
  nodes = g.nodes
  sizes: dict[int, int] = {}

  def size(n: int) -> int:
    r = nodes.find(n)
    if r not in sizes:
      s = nodes.struct[r]
      if s is None:
        sizes[r] = 0 if r == empty else nodes.size[r]
      else:
        parts = [size(c) for c in s[1]]
        sizes[r] = int(np.prod(parts)) if s[0] == PROD else sum(parts)
    return sizes[r]

  live = set(inputs)
  for step in g.steps:
    if not any(i in live for i in step.ins):
      continue
    if any(size(n) == 0 for o in step.outs for n in g.values[o].nodes):
      continue
    summed = step.aux.get("contracted") or (
        [step.aux["in_per_group"]] if "in_per_group" in step.aux else [])
    if any(size(n) == 0 for n in summed):
      continue
    live.update(step.outs)
  return [o in live for o in outputs]

