"""Which parameter axes share channels, read from the model's jaxpr.

:func:`couple` traces a model once (abstractly: shapes are enough) and follows
every axis of every value through the primitives with a union-find: the two
operands of an add or a gating multiply, a contraction's two axes, a
convolution's input channels and its kernel's, a concatenation's parts, the
heads and head dimension of a reshaped width. What comes out is a set of
channel sets, each with the parameter axes that produce it (a kernel's output
axis, a bias, a norm's scale and offset) and those that consume it (the next
kernels' input axes). Residual connections join the channels of every block
that adds to the same stream into one set; a reduction over a channel axis
(LayerNorm, RMSNorm, GroupNorm, a softmax over channels) makes its set
unprunable. The groups structured GSM ranks and their costs in MACs come from
the same analysis, and :func:`gsm_optax.narrow` uses it to export the pruned
model.

References:
  Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023 (the same
  coupling, read from PyTorch's autograd graph).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from gsm_optax import _utils
from gsm_optax.grouping import GroupMember, Groups, MacCost, MacTerm, mac_costs
from gsm_optax.structure import graph, primitives

PyTree = Any

__all__ = ["ChannelSet", "Coupling", "couple"]


class ChannelSet(NamedTuple):
  """One set of channels that several parameter axes share.

  Attributes:
    name: the set's name (the first layer that produces it; a transformer's
      heads are named after their query layer).
    size: the number of channels.
    producers: the parameter axes that compute the channels (kernel output
      axes, biases, norm scales and offsets), as :class:`gsm_optax.GroupMember`.
    consumers: the parameter axes that read them (kernel input axes).
    prunable: whether channels of the set may be removed.
    reason: why not, when not prunable (naming the primitive and source line).
    can_empty: whether every channel of the set may go with the model's
      outputs still reading its inputs: the inner width of a residual branch
      (the block goes, the skip stays), not a layer of a chain. Only a group
      set (one of :attr:`Coupling.groups`) can be emptied.

  Example:
    >>> import jax.numpy as jnp
    >>> import gsm_optax
    >>> mlp = lambda p, x: jnp.maximum(x @ p["w1"], 0) @ p["w2"]
    >>> params = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 2))}
    >>> [(s.name, s.size, s.prunable) for s in gsm_optax.couple(mlp, params, jnp.ones((1, 3))).sets]
    [('w1', 4, True), ('w1 inputs', 3, False), ('w2', 2, False)]
  """

  name: str
  size: int
  producers: tuple[GroupMember, ...]
  consumers: tuple[GroupMember, ...]
  prunable: bool
  reason: str | None
  can_empty: bool = False


class _Leaf(NamedTuple):
  path: str  # in the variables given to couple
  group_path: str | None  # in the params that gsm() sees, or None (not a parameter)
  value: int  # the graph's value id


class Traced(NamedTuple):
  """What :func:`gsm_optax.narrow` reads of a :class:`Coupling`: the traced computation and
  where the variables, inputs and outputs are in it."""

  graph: graph.Graph
  leaves: tuple[_Leaf, ...]  # the variables' leaves, in flattening order
  variables_tree: Any  # their tree structure (None when the model took none)
  out_tree: Any
  input_ids: tuple[int, ...]
  output_ids: tuple[int, ...]
  set_names: dict[int, str]  # a channel set's root node -> its name
  nnx: Any  # (graphdef, state) of an nnx module, or None


class Coupling:
  """What :func:`couple` found: the channel sets of a model, its groups and MACs.

  Attributes:
    sets: every channel set that holds a parameter axis, prunable or not
      (:class:`ChannelSet`).
    groups: the :class:`gsm_optax.Groups` structured GSM ranks: one per
      prunable set, its members the set's producers (pass as
      ``gsm(..., groups=coupling.groups)`` and ``prune(..., groups=...)``).
    macs: the model's multiply-accumulates per example (per entry of the first
      input's leading axis) at full width.

  Example:
    >>> import jax.numpy as jnp
    >>> import gsm_optax
    >>> mlp = lambda p, x: jnp.maximum(x @ p["w1"], 0) @ p["w2"]
    >>> params = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 2))}
    >>> gsm_optax.couple(mlp, params, jnp.ones((1, 3))).macs  # 3 * 4 + 4 * 2
    20.0
  """

  def __init__(self, graph_: graph.Graph, leaves: list[_Leaf], in_tree: Any, out_tree: Any,
               input_ids: list[int], output_ids: list[int], nnx_parts: Any = None) -> None:
    self._graph = graph_
    self._leaves = leaves
    self._in_tree = in_tree  # of (variables, *inputs)
    self._out_tree = out_tree
    self._input_ids = input_ids
    self._output_ids = output_ids
    self._nnx = nnx_parts
    self._analyse()

  # -- analysis ----------------------------------------------------------------------------

  def _analyse(self) -> None:
    g, nodes = self._graph, self._graph.nodes
    # Each value's leaf sets; a set twice in one value cannot be narrowed consistently.
    for val in g.values:
      seen: set[int] = set()
      for n in val.nodes:
        here = {nodes.find(leaf) for leaf in nodes.leaves(n)}
        for leaf in here & seen:
          if nodes.size[leaf] > 1:
            nodes.reason.setdefault(leaf, "it indexes two axes of one array")
        seen |= here
    consumed = {(p, leaf) for p, x in g.consumed for leaf in nodes.leaves(x)}
    produced = {(p, leaf) for p, x in g.produced for leaf in nodes.leaves(x)}
    contracted = {nodes.find(leaf) for _, ns in g.contractions for n in ns
                  for leaf in nodes.leaves(n)}
    members: dict[int, list[tuple[int, int, int | None]]] = {}  # set -> (leaf idx, axis, inner)
    for i, tracked in enumerate(self._leaves):
      val = g.values[tracked.value]
      for axis, n in enumerate(val.nodes):
        for s, inner in _positions(nodes, n):
          members.setdefault(s, []).append((i, axis, inner))
    self._members = members
    paths_index = {leaf.group_path: i for i, leaf in enumerate(self._leaves)
                   if leaf.group_path is not None}
    sets: list[ChannelSet] = []
    self._set_of_root: dict[int, str] = {}
    names: set[str] = set()
    candidates: dict[int, list[tuple[int, int, int]]] = {}  # leaf idx -> [(set, axis, pos)]
    info = {}
    first = g.first_use
    order = lambda s: min(first.get(self._leaves[m[0]].value, len(g.steps)) for m in members[s])
    # prunable sets first, so that they get the plain names
    for s in sorted(members, key=lambda s: (s in nodes.reason or s not in contracted, order(s))):
      size = nodes.size[s]
      if size <= 1:
        continue
      reason = nodes.reason.get(s)
      if reason is None and s not in contracted:
        reason = "no contraction reads it (an unused or output-only axis)"
      prods, cons, expressible = [], [], True
      for i, axis, inner in members[s]:
        tracked = self._leaves[i]
        p = tracked.value
        role_c = (p, s) in consumed and (p, s) not in produced
        path = tracked.group_path
        if role_c:
          if inner is not None and path is not None:
            cons.append(GroupMember(path, axis, inner))
          continue
        if path is None:
          continue  # not a parameter (a batch statistic): cut at export, never ranked
        if inner is None:
          expressible = False  # a producer that a group member cannot describe
          continue
        prods.append(GroupMember(path, axis, inner))
      prods.sort(key=lambda m: first.get(self._leaves[paths_index[m.path]].value, len(g.steps)))
      name = _set_name(prods, cons, names, s) + ("" if prods or not cons
                                                 else self._part_of(cons[0], s, paths_index))
      names.add(name)
      self._set_of_root[s] = name
      prunable = reason is None
      if reason is not None and "window axis" in reason:
        continue  # a convolution's kernel window: never a channel
      sets.append(ChannelSet(name, size, tuple(prods), tuple(cons), prunable, reason))
      info[s] = (prods, expressible)
      if prunable and expressible and prods:
        for i, axis, inner in members[s]:
          if inner is not None and any(m.path == self._leaves[i].group_path and m.axis == axis
                                       for m in prods):
            candidates.setdefault(i, []).append((s, axis, -inner))
    # A leaf belongs to one group set: a kernel [d, heads, head_dim] joins its heads (the
    # lowest axis, the outermost factor). A set that loses a producer is no group.
    choice = {i: min(c, key=lambda t: (t[1], t[2]))[0] for i, c in candidates.items()}
    groups = []
    for s, (prods, expressible) in info.items():
      if not (expressible and prods and nodes.reason.get(s) is None and s in contracted):
        continue
      owners = {i for i, axis, inner in members[s]
                if any(m.path == self._leaves[i].group_path and m.axis == axis for m in prods)}
      if all(choice.get(i) == s for i in owners):
        groups.append(Groups(self._set_of_root[s], nodes.size[s], tuple(prods)))
    group_roots = {self._set_of_root[s]: s for s in info}
    needed = graph.reads_inputs(g, self._input_ids, self._output_ids, None)
    emptiable = {gr.name for gr in groups
                 if all(still or not was for still, was in zip(
                     graph.reads_inputs(g, self._input_ids, self._output_ids,
                                        group_roots[gr.name]), needed))}
    self.sets = tuple(c._replace(can_empty=c.name in emptiable) for c in sets)
    self.groups = tuple(groups)
    group_names = {gr.name for gr in groups}
    self._group_roots = {nodes.find(s): n for s, n in self._set_of_root.items()
                         if n in group_names}
    self._terms = self._mac_terms(self._group_roots)
    self.macs = float(sum(t.macs for t in self._terms))

  def _part_of(self, member: GroupMember, s: int, paths_index: dict[str, int]) -> str:
    """Where the set ``s`` sits in the axis of ``member`` that reads it, when that axis holds
    more than this set: ``" (axis 0 of 8x8x32)"`` for the rows of an ``8x8x32`` map that a
    dense layer reads flattened, ``" (axis 0 of 5x5x20x50)"`` for a kernel's window axis."""
    g, nodes = self._graph, self._graph.nodes
    value = g.values[self._leaves[paths_index[member.path]].value]
    parts = [nodes.find(leaf) for leaf in nodes.leaves(value.nodes[member.axis])]
    if len(parts) > 1 and s in parts:
      sizes = "x".join(str(nodes.size[p]) for p in parts)
      return f" (axis {parts.index(s)} of {sizes})"
    if len(value.shape) > 2 and member.axis != len(value.shape) - 2:
      return f" (axis {member.axis} of {'x'.join(map(str, value.shape))})"
    return ""

  def _mac_terms(self, named: dict[int, str]) -> list[MacTerm]:
    """One term per monomial of every contraction's MACs, by the groups it scales with:
    ``named`` maps the root of each grouped axis node to its group's name."""
    g = self._graph
    batch = g.values[self._input_ids[0]].shape[0] if (
        self._input_ids and g.values[self._input_ids[0]].shape) else 1
    terms: dict[tuple[str, ...], float] = {}
    for index, _ in g.contractions:
      step = g.steps[index]
      dims = g.mac_dims(step)
      total: list[tuple[float, tuple[str, ...]]] = [(1.0, ())]
      for n in dims:
        total = [(a * b, sa + sb) for (a, sa), (b, sb)
                 in itertools.product(total, self._monomials(n, named))]
      for macs, sets in total:
        key = tuple(sorted(set(sets)))
        terms[key] = terms.get(key, 0.0) + macs / batch
    return [MacTerm(m, k) for k, m in terms.items()]

  def _monomials(self, n: int, named: dict[int, str]) -> list[tuple[float, tuple[str, ...]]]:
    nodes = self._graph.nodes
    r = nodes.find(n)
    s = nodes.struct[r]
    if r in named:
      return [(float(nodes.size[r]), (named[r],))]
    if s is None:
      return [(float(nodes.size[r]), ())]
    parts = [self._monomials(c, named) for c in s[1]]
    if s[0] == graph.SUM:
      return [m for p in parts for m in p]
    out: list[tuple[float, tuple[str, ...]]] = [(1.0, ())]
    for p in parts:
      out = [(a * b, sa + sb) for (a, sa), (b, sb) in itertools.product(out, p)]
    return out

  # -- public ---------------------------------------------------------------------------

  @property
  def traced(self) -> Traced:
    """The traced computation, for :func:`gsm_optax.narrow`."""
    children = self._in_tree.children()
    return Traced(self._graph, tuple(self._leaves), children[0] if children else None,
                  self._out_tree, tuple(self._input_ids), tuple(self._output_ids),
                  dict(self._set_of_root), self._nnx)

  def mac_costs(self, groups: Sequence[Groups] | None = None, *,
                per_mac: bool = False) -> MacCost:
    """A budget in multiply-accumulates for ``groups`` (see :func:`gsm_optax.mac_costs`).

    Each contraction's MACs scale with the kept fraction of every group that spans one of
    its axes: the :class:`gsm_optax.MacTerm` of each layer, read from the model.

    Args:
      groups: the groups ranked; by default :attr:`groups`. Other groups (such as
        :func:`gsm_optax.input_groups`, whose units are single input features of a dense
        layer) must each span one whole axis of the coupled model: their members are
        parameter axes, all of the group's size, with ``inner=1``.
      per_mac: rank groups by score per MAC rather than by score.

    Returns:
      A :class:`gsm_optax.MacCost`, whose ``total`` is :attr:`macs` less the MACs that no
      group scales (they are the same at every width).

    Raises:
      ValueError: naming the group when its members are not parameters of the coupled
        model, or do not span one axis of it.

    Example:
      >>> import jax.numpy as jnp
      >>> import gsm_optax
      >>> mlp = lambda p, x: jnp.maximum(x @ p["w1"], 0) @ p["w2"]
      >>> params = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 2))}
      >>> coupling = gsm_optax.couple(mlp, params, jnp.ones((1, 3)))
      >>> coupling.mac_costs().terms  # both layers scale with the 4 hidden units kept
      (MacTerm(macs=20.0, sets=('w1',)),)
      >>> inputs = gsm_optax.input_groups(params)  # rows of w1, rows of w2
      >>> coupling.mac_costs(inputs).terms
      (MacTerm(macs=12.0, sets=('w1 inputs', 'w2 inputs')), MacTerm(macs=8.0, sets=('w2 inputs',)))
    """
    if groups is None:
      groups, terms = self.groups, self._terms
    else:
      groups = tuple(groups)
      terms = self._mac_terms({self._group_root(gr): gr.name for gr in groups})
    names = {gr.name for gr in groups}
    terms = [t for t in terms if t.sets and set(t.sets) <= names]
    return mac_costs(groups, terms, per_mac=per_mac)

  def _group_root(self, group: Groups) -> int:
    """The root of the axis node that every member of ``group`` spans."""
    nodes, by_path = self._graph.nodes, {leaf.group_path: leaf for leaf in self._leaves}
    roots = set()
    for m in group.members:
      leaf = by_path.get(m.path)
      if leaf is None:
        raise ValueError(f"mac_costs: group {group.name!r} has member {m.path!r}, which is not"
                         " a parameter of the coupled model.")
      shape = self._graph.values[leaf.value].shape
      if m.inner != 1 or not -len(shape) <= m.axis < len(shape) or shape[m.axis] != group.size:
        raise ValueError(
            f"mac_costs: group {group.name!r} (size {group.size}) has member {m} of shape"
            f" {shape}; each member must span one whole axis (inner=1).")
      roots.add(nodes.find(self._graph.values[leaf.value].nodes[m.axis]))
    if len(roots) != 1:
      raise ValueError(f"mac_costs: the members of group {group.name!r} span different axes of"
                       " the model; a group's MACs scale with one axis.")
    return roots.pop()

  def allow_empty(self, *names: str) -> tuple[Groups, ...]:
    """:attr:`groups`, with ``min_kept=0`` for sets that the outputs do not need.

    By default every group set keeps at least one group (see
    :class:`gsm_optax.Groups`). Pass the result as ``groups=`` to let the
    budget remove a whole residual branch's inner width, where the skip
    connection keeps the outputs reading the inputs.

    Args:
      *names: the sets that may be emptied; by default every set whose
        :attr:`ChannelSet.can_empty`.

    Returns:
      The groups, with ``min_kept=0`` for those sets.

    Raises:
      ValueError: naming a set that is not a group set, or whose removal
        would cut the model's outputs off its inputs.
    """
    group_names = [gr.name for gr in self.groups]
    if not names:
      names = tuple(c.name for c in self.sets if c.can_empty)
    for name in names:
      if name not in group_names:
        raise ValueError(f"allow_empty: {name!r} is not a group set; the group sets are"
                         f" {group_names}.")
      if not self.set(name).can_empty:
        raise ValueError(f"allow_empty: removing every channel of {name!r} would cut the"
                         " model's outputs off its inputs (no other path joins them); keep it.")
    return tuple(gr._replace(min_kept=0) if gr.name in names else gr for gr in self.groups)

  def set(self, name: str) -> ChannelSet:
    """The :class:`ChannelSet` called ``name``."""
    for s in self.sets:
      if s.name == name:
        return s
    raise ValueError(f"no channel set named {name!r}; the sets are {[s.name for s in self.sets]}.")

  def __repr__(self) -> str:
    rows = [f"  {s.name}: {s.size} channels, {len(s.producers)} producers, "
            f"{len(s.consumers)} consumers" + ("" if s.prunable else f", unprunable: {s.reason}")
            for s in self.sets]
    return (f"Coupling({len(self.groups)} groups, {self.macs:,.0f} MACs per example\n"
            + "\n".join(rows) + ")")


def _positions(nodes: graph.Nodes, n: int) -> list[tuple[int, int | None]]:
  """The leaf sets of the axis node ``n`` with their ``inner`` stride, or None where the set
  sits inside a sum (a concatenation), which a group member cannot describe."""
  r = nodes.find(n)
  s = nodes.struct[r]
  if s is None:
    return [(r, 1)]
  if s[0] == graph.SUM:
    roots = {nodes.find(c) for c in s[1]}
    if len(roots) == 1 and nodes.struct[next(iter(roots))] is None:
      return [(next(iter(roots)), 1)]  # k copies of one set (a GLU's two halves): i mod size
    return [(leaf, None) for leaf in nodes.leaves(r)]
  out = []
  inner = 1
  for c in reversed(s[1]):
    for leaf, k in _positions(nodes, c):
      out.append((leaf, None if k is None else k * inner))
    inner *= nodes.size[nodes.find(c)]
  return out


def _set_name(producers: list[GroupMember], consumers: list[GroupMember], taken: set[str],
              root: int) -> str:
  members = producers or consumers
  if not members:
    base = f"set{root}"
  else:
    kernels = [m for m in members if m.path.rpartition("/")[2] in ("kernel", "embedding")]
    first = (kernels or members)[0]
    base = first.path.rpartition("/")[0] or first.path
    if not producers:
      base += " inputs"
  name, k = base, 1
  while name in taken:
    k += 1
    name = f"{base}#{k}"
  return name


def couple(model: Any, variables: PyTree = None, *inputs: Any) -> Coupling:
  """Reads which parameter axes share channels from the model's computation.

  Traces ``model`` once (``jax.make_jaxpr``; arrays or ``jax.ShapeDtypeStruct``
  inputs, nothing is computed) and propagates each axis' channel identity
  through the primitives (see the module docstring).

  Args:
    model: ``model.apply`` of a Flax linen model (called as
      ``model.apply(variables, *inputs)``: wrap it in a lambda to pass
      ``train=`` or ``mutable=``; it must return the outputs only); any function
      ``f(params, *inputs)``; or an ``nnx.Module`` (then ``variables`` is its first
      input, and the module's state is read with ``nnx.split``).
    variables: what ``model`` takes first: linen variables
      (``{"params": ..., "batch_stats": ...}``) or a params pytree.
    *inputs: sample inputs, with the batch axis first: a batch of 2 or more
      for a :func:`gsm_optax.narrow` model that runs at any batch. A trace at
      a batch of 1 cannot tell the batch axis from other axes of size 1 (a
      flatten's reshape bakes the 1 in), so that narrow model runs at a batch
      of 1 only, and says so when called with another.

  Returns:
    A :class:`Coupling`: its ``groups`` are the paths of ``variables["params"]``
    for linen variables, of ``nnx.state(module, nnx.Param)`` for an nnx module,
    and of ``variables`` for a plain function.

  Raises:
    ValueError: naming the primitive and the source line of the first operation
      whose effect on channels is not known (control flow, scatter, ...).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import linen as nn
    >>> import gsm_optax
    >>> class Residual(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     h = nn.relu(nn.Dense(8)(x))
    ...     h = h + nn.Dense(8)(nn.relu(nn.Dense(8)(h)))
    ...     return nn.Dense(3)(h)
    >>> model = Residual()
    >>> x = jnp.ones((2, 5))
    >>> coupling = gsm_optax.couple(model.apply, model.init(jax.random.PRNGKey(0), x), x)
    >>> [(g.name, g.size, len(g.members)) for g in coupling.groups]
    [('Dense_0', 8, 4), ('Dense_2', 8, 2)]
  """
  nnx_parts = None
  if _is_nnx_module(model):
    from flax import nnx  # only when an nnx module is given

    inputs = (variables, *inputs) if variables is not None else inputs
    graphdef, state = nnx.split(model)
    pure = nnx.to_pure_dict(state)
    param_paths = {_utils.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(
        nnx.to_pure_dict(nnx.state(model, nnx.Param)))}

    def fn(pure_state, *xs):
      s = nnx.split(model)[1]
      nnx.replace_by_pure_dict(s, pure_state)
      return nnx.merge(graphdef, s)(*xs)

    variables = pure
    nnx_parts = (graphdef, state)
    group_path = lambda path: path if path in param_paths else None
  else:
    if _is_linen_module(model):
      raise TypeError(
          "couple needs the linen module's apply, not the module itself: couple(model.apply,"
          f" variables, x), with variables = model.init(rng, x); got model={type(model).__name__}"
          "(...).")
    if not callable(model):
      raise TypeError(f"couple needs model.apply, a function f(params, *inputs) or an nnx.Module;"
                      f" got model={model!r}.")
    if _is_linen_module(getattr(model, "__self__", None)) and _params_alone(variables):
      raise _params_alone_error(variables)
    fn = model
    linen = isinstance(variables, dict) and "params" in variables and any(
        isinstance(v, dict) for v in variables.values())

    def group_path(path):
      if not linen:
        return path
      head, _, rest = path.partition("/")
      return rest if head == "params" else None
  if not inputs:
    raise ValueError("couple needs sample inputs: couple(model.apply, variables, x).")
  args = (variables, *inputs)
  flat, in_tree = jax.tree_util.tree_flatten(args)
  abstract = [jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in flat]
  try:
    closed, out_shape = jax.make_jaxpr(lambda *a: fn(*jax.tree_util.tree_unflatten(in_tree, a)),
                                       return_shape=True)(*abstract)
  except Exception as e:  # a lambda around model.apply given the params alone
    if type(e).__name__ == "ScopeCollectionNotFound" and _params_alone(variables):
      raise _params_alone_error(variables) from e
    raise
  g = graph.Graph(primitives.RULES)
  ids = [g.new_value(a.shape, a.dtype) for a in abstract]
  n_var = len(jax.tree_util.tree_leaves(variables))
  paths = [_utils.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(variables)]
  leaves = [_Leaf(path, group_path(path), v) for path, v in zip(paths, ids[:n_var])]
  for leaf in leaves:
    g.origin[leaf.value] = leaf.value
  for v in ids[n_var:]:
    for n in g.values[v].nodes:
      g.nodes.mark(n, "it is an axis of the model's inputs")
  outs = g.inline(closed.jaxpr, list(closed.consts), ids)
  for v in outs:
    for n in g.values[v].nodes:
      g.nodes.mark(n, "it is an axis of the model's outputs")
  out_tree = jax.tree_util.tree_structure(out_shape)
  return Coupling(g, leaves, in_tree, out_tree, ids[n_var:], outs, nnx_parts)


def _params_alone(variables: Any) -> bool:
  return isinstance(variables, Mapping) and "params" not in variables


def _params_alone_error(variables: Mapping[Any, Any]) -> ValueError:
  return ValueError(
      "couple(model.apply, variables, x) needs the linen variables that model.init returns,"
      " {'params': ...} (with 'batch_stats' if the model has them), not the params alone;"
      " did you mean couple(model.apply, {'params': params}, x)? Got variables with keys"
      f" {sorted(map(str, variables))}.")


def _is_linen_module(x: Any) -> bool:
  linen = sys.modules.get("flax.linen")  # a linen module exists only once flax.linen is imported
  return linen is not None and isinstance(x, linen.Module)


def _is_nnx_module(x: Any) -> bool:
  try:
    from flax import nnx
  except ImportError:  # pragma: no cover
    return False
  return isinstance(x, nnx.Module)

