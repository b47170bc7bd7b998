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
      out_rev: list[int] = []
      inner = 1
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
  """The flattened computation with a node for every axis of every value (pass one).

  What each primitive does to the axes is its rule in ``rules``
  (:data:`gsm_optax.structure.primitives.RULES`).
  """

  def __init__(self, rules: dict[str, Any]) -> None:
    self.rules = rules  # primitive name -> rule.Rule
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

  def same(self, a: int, b: int, why: str) -> None:
    """The axes ``a`` and ``b`` hold the same channels."""
    self.nodes.unify(a, b, why)

  def mark_value(self, v: int, reason: str) -> None:
    """No axis of value ``v`` can be narrowed, for ``reason``."""
    for n in self.values[v].nodes:
      self.nodes.mark(n, reason)

  def set_nodes(self, out: int, nodes: list[int]) -> None:
    """The axis nodes of value ``out`` are ``nodes`` (a reshape's, a transpose's)."""
    val = self.values[out]
    self.values[out] = Value(val.shape, val.dtype, tuple(nodes))

  def _use(self, v: int, contracted: frozenset[int]) -> None:
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
    """Applies the primitive's coupling rule (``rules``) and records its parameter uses."""
    name = step.primitive.name
    if name not in self.rules:
      raise ValueError(
          f"couple: primitive '{name}' at {step.where} is not supported: its effect on channels"
          " is unknown, so no coupling is given rather than a wrong one. Please report it, or"
          " write the gsm_optax.Groups by hand.")
    coupled = self.rules[name].couple(self, step, index)
    view = coupled.view_of
    for v in step.ins:
      if view is not None and v == view and v in self.origin:
        continue
      self._use(v, coupled.contracted)
    if view is not None and view in self.origin and len(step.outs) == 1:
      self.origin[step.outs[0]] = self.origin[view]

  def mac_dims(self, step: Step) -> list[int]:
    """The axis nodes whose sizes multiply to a contraction's MACs."""
    return self.rules[step.primitive.name].mac_dims(self, step)


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

