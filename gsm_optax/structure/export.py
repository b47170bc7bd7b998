"""Exact export of a structurally pruned model: narrower parameters and the function that runs them.

:func:`narrow` finds which channels of each set can go without changing the
model's outputs and cuts them from every parameter (and batch statistic) that
holds them. A channel can go when, at every contraction that reads it (a dense
layer, a convolution, an attention product), its slice of one of the two
operands is exactly zero for any input. Which slices are zero is followed
through the computation from the pruned parameters: a zeroed filter, its bias
and its BatchNorm's scale make a zero channel; ReLU, GELU, SiLU, pooling and
residual additions of zeros keep it zero; a sigmoid, a softplus or a BatchNorm
offset turn it into a non-zero constant, which a narrower model cannot drop:
:func:`narrow` then names that operation rather than export a model whose
outputs differ.

The narrow model is computed by the same jaxpr, re-evaluated with the narrower
arrays (every shape the computation builds is recomputed from the kept
channels), so it needs no Python model class: it can be jitted and serialised
with ``jax.export``. For an nnx module, :attr:`Narrow.module` is the module
itself with its narrowed state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gsm_optax.structure import graph
from gsm_optax.structure.coupling import Coupling

PyTree = Any

__all__ = ["Narrow", "narrow"]


class Narrow(NamedTuple):
  """What :func:`narrow` returns.

  Attributes:
    variables: the narrowed variables, in the structure given to
      :func:`gsm_optax.couple` (linen ``{"params": ..., "batch_stats": ...}``,
      a params pytree, or an nnx module's pure state dict).
    apply: ``apply(variables, *inputs)`` computing the narrow model's outputs
      from ``variables``; jit-able and serialisable with ``jax.export``. Inputs
      have the shapes of the sample inputs given to :func:`gsm_optax.couple`,
      except along axes that no operation reduces over (the batch axis of a
      model in inference mode): those may have any size. Another size along a
      reduced axis (a mean over tokens, BatchNorm's batch statistics in
      training) raises a ValueError naming the operation.
    kept: per channel set, the indices of the channels kept (original numbering).
    widths: per channel set, how many channels are kept.
    macs: the narrow model's multiply-accumulates per example.
    module: for an nnx module, the module with its state narrowed (its own
      ``__call__`` runs the narrow model); None otherwise.
  """

  variables: PyTree
  apply: Any
  kept: dict[str, np.ndarray]
  widths: dict[str, int]
  macs: float
  module: Any = None


def _params_hint(given: Any, expected: Any) -> str:
  """The call meant when the params were given for linen variables, or the reverse."""
  if expected is None:
    return ""
  coupled = jax.tree_util.tree_unflatten(expected, [0] * expected.num_leaves)
  if (isinstance(coupled, Mapping) and "params" in coupled
      and jax.tree_util.tree_structure(coupled["params"]) == given):
    return (" These are the params alone, and the model was coupled with its linen variables:"
            " did you mean narrow(coupling, {**variables, 'params': pruned_params})?")
  given_tree = jax.tree_util.tree_unflatten(given, [0] * given.num_leaves)
  if (isinstance(given_tree, Mapping) and "params" in given_tree
      and jax.tree_util.tree_structure(given_tree["params"]) == expected):
    return (" These are linen variables, and the model was coupled with its params alone:"
            " did you mean narrow(coupling, variables['params'])?")
  return ""


def narrow(coupling: Coupling, variables: PyTree) -> Narrow:
  """Removes the channels of a structurally pruned model that do not change its outputs.

  Run it outside ``jit``, on concrete values (the widths depend on them).

  Args:
    coupling: from :func:`gsm_optax.couple` on this model.
    variables: the pruned variables, structured as those given to
      :func:`gsm_optax.couple` (for linen, ``{"params": pruned, "batch_stats":
      ...}``; for an nnx module, the module itself after ``nnx.update`` with the
      pruned params, or its pure state dict).

  Returns:
    A :class:`Narrow`.

  Raises:
    ValueError: naming the set, the operation and its source line when every
      producer of a channel of a group is zero but the channel is still not
      removable because an operation maps 0 to a non-zero constant (a sigmoid,
      a softplus, a BatchNorm offset or running mean): its consumers would see
      that constant. Zero the constant's source too (the offset is a member of
      the channel's group when it is a parameter), or keep those channels.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import gsm_optax
    >>> def mlp(p, x):
    ...   return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"]
    >>> params = {"w1": jnp.ones((3, 4)), "b1": jnp.ones(4), "w2": jnp.ones((4, 2))}
    >>> coupling = gsm_optax.couple(mlp, params, jnp.ones((1, 3)))
    >>> pruned = gsm_optax.prune(params, 0.5, groups=coupling.groups)
    >>> small = gsm_optax.narrow(coupling, pruned)
    >>> small.widths, small.variables["w1"].shape
    ({'w1': 2}, (3, 2))
  """
  if coupling._nnx is not None and not isinstance(variables, dict):
    from flax import nnx

    variables = nnx.to_pure_dict(nnx.state(variables))
  g, nodes = coupling._graph, coupling._graph.nodes
  flat, tree = jax.tree_util.tree_flatten(variables)
  expected = coupling._in_tree.children()[0] if coupling._in_tree.children() else None
  if len(flat) != len(coupling._leaves) or (expected is not None and tree != expected):
    raise ValueError(f"narrow: variables have structure {tree}, not that of the variables"
                     f" coupled, {expected}.{_params_hint(tree, expected)}")
  arrays = {leaf.value: np.asarray(x) for leaf, x in zip(coupling._leaves, flat)}
  for leaf, x in zip(coupling._leaves, flat):
    if tuple(np.shape(x)) != g.values[leaf.value].shape:
      raise ValueError(f"narrow: {leaf.path} has shape {np.shape(x)}, not the coupled"
                       f" {g.values[leaf.value].shape}.")
  prunable = {s: name for s, name in coupling._set_of_root.items()
              if nodes.reason.get(s) is None and coupling.set(name).prunable}
  zeros = _Zeros(g, prunable, arrays)
  zeros.run()
  removable = zeros.removable()
  # A group whose producers are all zero but whose channels stay: a constant got in.
  for gr in coupling.groups:
    s = next(r for r, n in coupling._set_of_root.items() if n == gr.name)
    dead = np.ones(gr.size, bool)
    for m in gr.members:
      i = next(i for i, leaf in enumerate(coupling._leaves) if leaf.group_path == m.path)
      a = np.moveaxis(arrays[coupling._leaves[i].value], m.axis, 0)
      nz = (a.reshape(a.shape[0], -1) != 0).any(axis=1).reshape(-1, gr.size, m.inner)
      dead &= ~nz.any(axis=(0, 2))
    stuck = dead & ~removable[s]
    if stuck.any():
      k = int(np.flatnonzero(stuck)[0])
      origin = zeros.lost.get((s, k))
      how = (f"'{origin[0]}' at {origin[1]} maps its zeros to a non-zero constant"
             if origin else "something adds a non-zero constant to it")
      raise ValueError(
          f"narrow: channel {k} of {gr.name!r} (and {int(stuck.sum()) - 1} more) has all its"
          f" producers at zero, but {how}, which the layers after it read: removing it would"
          " change the outputs. Zero that constant too (a BatchNorm's offset and running mean,"
          " or prune before a sigmoid/softplus), or keep those channels.")
  keep = {s: ~removable[s] for s in prunable}
  sizes = {s: int(k.sum()) for s, k in keep.items()}

  def position_mask(n: int) -> np.ndarray:
    mask = np.ones(nodes.size[nodes.find(n)], bool)
    for s, lab in nodes.labels(n).items():
      if s in keep:
        ok = lab < 0
        ok[lab >= 0] = keep[s][lab[lab >= 0]]
        mask &= ok
    return mask

  def cut(v: int, value: np.ndarray) -> np.ndarray:
    for axis, n in enumerate(g.values[v].nodes):
      mask = position_mask(n)
      if not mask.all():
        value = np.take(value, np.flatnonzero(mask), axis=axis)
    return value

  new_flat = [jnp.asarray(cut(leaf.value, arrays[leaf.value]), dtype=jnp.result_type(x))
              if any(not position_mask(n).all() for n in g.values[leaf.value].nodes) else x
              for leaf, x in zip(coupling._leaves, flat)]
  new_vars = jax.tree_util.tree_unflatten(tree, new_flat)
  consts = {v: cut(v, c) for v, c in g.consts.items()}
  kept = {coupling._set_of_root[s]: np.flatnonzero(k).astype(np.int32) for s, k in keep.items()}
  widths = {name: int(k.size) for name, k in kept.items()}
  runner = _Runner(coupling, sizes, consts)
  module = None
  if coupling._nnx is not None:
    from flax import nnx

    graphdef, state = coupling._nnx
    state = nnx.split(nnx.merge(graphdef, state))[1]  # a copy
    nnx.replace_by_pure_dict(state, new_vars)
    module = nnx.merge(graphdef, state)
    _resize_nnx(module)
  return Narrow(new_vars, runner, kept, widths, runner.macs(), module)


def _resize_nnx(module: Any) -> None:
  """Sets the width attributes of Flax's nnx layers to their narrowed parameters' shapes."""
  from flax import nnx

  for _, m in nnx.iter_graph(module):
    kernel = getattr(m, "kernel", None)
    shape = tuple(kernel.shape) if isinstance(kernel, nnx.Variable) else None
    if isinstance(m, nnx.Conv) and shape is not None:
      groups = m.feature_group_count
      if groups > 1:
        m.feature_group_count = shape[-1] // (m.out_features // groups)
      m.in_features, m.out_features = shape[-2] * m.feature_group_count, shape[-1]
    elif isinstance(m, nnx.LinearGeneral) and shape is not None:
      k = len(m.in_features)
      m.in_features, m.out_features = shape[:k], shape[k:]
    elif isinstance(m, nnx.Linear) and shape is not None:
      m.in_features, m.out_features = shape[0], shape[-1]
    elif isinstance(m, nnx.MultiHeadAttention):
      q = m.query.kernel.shape
      m.num_heads, m.head_dim = q[-2], q[-1]
      m.qkv_features = q[-2] * q[-1]
      if hasattr(m, "num_kv_heads"):
        m.num_kv_heads = m.key.kernel.shape[-2]
    for attr in ("scale", "bias"):
      v = getattr(m, attr, None)
      if hasattr(m, "num_features") and isinstance(v, nnx.Variable) and v.ndim == 1:
        m.num_features = v.shape[0]
        break


class _Zeros:
  """Which channel slices of every value are exactly zero, for any input (pass two)."""

  def __init__(self, g: graph.Graph, prunable: dict[int, str],
               arrays: dict[int, np.ndarray]) -> None:
    self.g, self.nodes = g, g.nodes
    self.prunable = prunable
    self.z: dict[int, dict[int, np.ndarray]] = {}
    self.whole: dict[int, bool] = {}
    self.lost: dict[tuple[int, int], tuple[str, str]] = {}
    self.removable_acc = {s: np.ones(self.nodes.size[s], bool) for s in prunable}
    self.seen = {s: False for s in prunable}
    self._classes: dict[int, dict[int, tuple[int, np.ndarray]]] = {}
    for v, a in list(arrays.items()) + list(g.consts.items()):
      self._from_array(v, a)

  def classes(self, v: int) -> dict[int, tuple[int, np.ndarray]]:
    """The prunable sets of value ``v``: set -> (axis, channel of each position)."""
    if v not in self._classes:
      out = {}
      for axis, n in enumerate(self.g.values[v].nodes):
        for s, lab in self.nodes.labels(n).items():
          if s in self.prunable:
            out[s] = (axis, lab)
      self._classes[v] = out
    return self._classes[v]

  def _from_array(self, v: int, a: np.ndarray) -> None:
    self.whole[v] = not np.any(a)
    z = {}
    for s, (axis, lab) in self.classes(v).items():
      moved = np.moveaxis(a, axis, 0)
      nz = (moved.reshape(moved.shape[0], -1) != 0).any(axis=1)
      at = lab >= 0
      live = np.zeros(self.nodes.size[s], bool)
      np.logical_or.at(live, lab[at], nz[at])
      z[s] = ~live
    self.z[v] = z

  def get(self, v: int, s: int) -> np.ndarray:
    if s in self.z.get(v, {}):
      return self.z[v][s]
    return np.full(self.nodes.size[s], self.whole.get(v, False))

  def run(self) -> None:
    for index, step in enumerate(self.g.steps):
      self.step(index, step)
    for index, ns in self.g.contractions:
      step = self.g.steps[index]
      lhs, rhs = step.ins[0], step.ins[1]
      for n in ns:
        for s in self.nodes.leaves(n):
          s = self.nodes.find(s)
          if s in self.prunable:
            self.removable_acc[s] &= self.get(lhs, s) | self.get(rhs, s)
            self.seen[s] = True

  def removable(self) -> dict[int, np.ndarray]:
    return {s: (r if self.seen[s] else np.zeros_like(r)) for s, r in self.removable_acc.items()}

  def step(self, index: int, step: graph.Step) -> None:
    name = step.primitive.name
    ins = step.ins
    for o in step.outs:
      if o in self.z:
        return  # a constant computed already
    if name in graph.ELEMENTWISE:
      self._elementwise(step, name)
    elif name == "dot_general":
      (lc, rc), (lb, rb) = step.params["dimension_numbers"]
      self._contract(step, [self.g.values[ins[0]].nodes[d] for d in lb],
                     [n for d, n in enumerate(self.g.values[ins[0]].nodes) if d not in lc + lb],
                     [n for d, n in enumerate(self.g.values[ins[1]].nodes) if d not in rc + rb])
    elif name == "conv_general_dilated":
      rhs_spec = step.params["dimension_numbers"].rhs_spec
      group = step.aux.get("group")
      self._contract(step, [group] if group is not None else [], [],
                     [self.g.values[ins[1]].nodes[rhs_spec[0]]])
    elif name in ("iota", "sort", "top_k", "argmax", "argmin"):
      for o in step.outs:
        self.whole[o] = False
        self.z[o] = {}
    else:  # data movement: a slice of the output is zero when its sources are
      data = ins[:1] if name in ("pad", "dynamic_slice", "dynamic_update_slice", "gather") else ins
      if name == "dynamic_update_slice":
        data = ins[:2]
      for o in step.outs:
        z = {}
        for s in self.classes(o):
          having = [v for v in data if s in self.classes(v)]
          if having:
            acc = np.ones(self.nodes.size[s], bool)
            for v in having:
              acc &= self.get(v, s)
          elif name == "pad":
            acc = np.full(self.nodes.size[s], self.whole.get(ins[1], False))
          else:
            acc = np.full(self.nodes.size[s], all(self.whole.get(v, False) for v in data))
          z[s] = acc
        self.z[o] = z
        wz = all(self.whole.get(v, False) for v in data)
        if name == "pad":
          wz = wz and self.whole.get(ins[1], False)
        self.whole[o] = wz

  def _contract(self, step: graph.Step, batch: list[int], lfree: list[int],
                rfree: list[int]) -> None:
    lhs, rhs = step.ins[0], step.ins[1]
    out = step.outs[0]
    both = self.whole.get(lhs, False) or self.whole.get(rhs, False)
    z = {}
    owners = {}
    for n in batch:
      for s in self.nodes.leaves(n):
        owners[self.nodes.find(s)] = "both"
    for n in lfree:
      for s in self.nodes.leaves(n):
        owners.setdefault(self.nodes.find(s), "lhs")
    for n in rfree:
      for s in self.nodes.leaves(n):
        owners.setdefault(self.nodes.find(s), "rhs")
    for s in self.classes(out):
      who = owners.get(s)
      if who == "both":
        acc = self.get(lhs, s) | self.get(rhs, s)
      elif who == "lhs":
        acc = self.get(lhs, s).copy()
      elif who == "rhs":
        acc = self.get(rhs, s).copy()
      else:
        acc = np.zeros(self.nodes.size[s], bool)
      z[s] = acc | both
    self.z[out] = z
    self.whole[out] = both

  def _elementwise(self, step: graph.Step, name: str) -> None:
    ins, out = step.ins, step.outs[0]
    operands = ins[1:] if name == "select_n" else ins
    if name == "clamp":
      operands = ins[1:2]
    z = {}
    for s in self.classes(out):
      parts = [self.get(v, s) for v in operands]
      if name in ("max", "min"):  # relu, relu6: max(0, c) = 0 for c <= 0, min(0, c) = 0 for c >= 0
        parts = [p | self._bound_keeps_zero(v, name) for p, v in zip(parts, operands)]
      if name in graph.ZERO_PRESERVING or name in graph.BINARY_ALL or name == "clamp":
        acc = np.logical_and.reduce(parts)
        if name == "clamp":
          acc = acc & self._clamp_keeps_zero(ins)
      elif name in graph.BINARY_ANY:
        acc = np.logical_or.reduce(parts)
      elif name in graph.BINARY_FIRST:
        acc = parts[0].copy()
      elif name == "integer_pow" and step.params["y"] > 0:
        acc = parts[0].copy()
      else:
        acc = np.zeros(self.nodes.size[s], bool)
      carrying = [self.get(v, s) for v in operands if s in self.classes(v)]
      was = np.logical_or.reduce(carrying) if carrying else np.zeros_like(acc)
      for k in np.flatnonzero(was & ~acc):
        self.lost[s, int(k)] = (name, step.where)  # the last loss is the one that stays
      z[s] = acc
    self.z[out] = z
    wholes = [self.whole.get(v, False) for v in operands]
    if name in graph.ZERO_PRESERVING or name in graph.BINARY_ALL:
      self.whole[out] = all(wholes)
    elif name in graph.BINARY_ANY:
      self.whole[out] = any(wholes)
    elif name in graph.BINARY_FIRST or (name == "integer_pow" and step.params["y"] > 0):
      self.whole[out] = wholes[0]
    else:
      self.whole[out] = False

  def _bound_keeps_zero(self, v: int, name: str) -> bool:
    c = self.g.consts.get(v)
    if c is None:
      return False
    return bool(np.all(c <= 0)) if name == "max" else bool(np.all(c >= 0))

  def _clamp_keeps_zero(self, ins: tuple[int, ...]) -> bool:
    lo, hi = self.g.consts.get(ins[0]), self.g.consts.get(ins[2])
    return lo is not None and hi is not None and bool(np.all(lo <= 0) and np.all(hi >= 0))


class _Runner:
  """The narrow model: the coupled jaxpr re-evaluated with narrower arrays (pass three)."""

  def __init__(self, coupling: Coupling, sizes: dict[int, int], consts: dict[int, np.ndarray]
               ) -> None:
    self.c = coupling
    self.g = coupling._graph
    self.sizes = sizes
    self.consts = consts
    self.__name__ = "narrow_apply"

  def _size(self, n: int, dynamic: dict[int, int]) -> int:
    nodes = self.g.nodes
    r = nodes.find(n)
    s = nodes.struct[r]
    if s is None:
      return dynamic.get(r, self.sizes.get(r, nodes.size[r]))
    parts = [self._size(c, dynamic) for c in s[1]]
    return int(np.prod(parts)) if s[0] == graph.PROD else int(sum(parts))

  def macs(self) -> float:
    total = 0.0
    dynamic: dict[int, int] = {}
    batch = 1
    if self.c._input_ids and self.g.values[self.c._input_ids[0]].shape:
      batch = self.g.values[self.c._input_ids[0]].shape[0]
    for index, _ in self.g.contractions:
      dims = graph.mac_dims(self.g, self.g.steps[index])
      total += float(np.prod([self._size(n, dynamic) for n in dims])) / batch
    return total

  def __call__(self, variables: PyTree, *inputs: Any) -> Any:
    flat = jax.tree_util.tree_leaves((variables, *inputs))
    ids = [leaf.value for leaf in self.c._leaves] + list(self.c._input_ids)
    if len(flat) != len(ids):
      raise ValueError(f"the narrow model takes (variables, *inputs) with {len(ids)} arrays in"
                       f" all; got {len(flat)}.")
    env: dict[int, Any] = dict(self.consts)
    dynamic: dict[int, int] = {}
    nodes = self.g.nodes
    fixed = {}
    for n, why in self.g.reduced:
      for leaf in nodes.leaves(n):
        fixed.setdefault(nodes.find(leaf), why)
    for v, x in zip(ids, flat):
      env[v] = x
      if v in self.c._input_ids:
        traced = self.g.values[v].shape
        if len(np.shape(x)) != len(traced):
          raise ValueError(f"the narrow model's input has shape {np.shape(x)}; it was coupled"
                           f" with shape {traced}.")
        for d, (n, s) in enumerate(zip(self.g.values[v].nodes, np.shape(x))):
          r = nodes.find(n)
          if s != traced[d]:
            why = next((fixed[leaf] for leaf in map(nodes.find, nodes.leaves(n))
                        if leaf in fixed), None)
            if why is not None:
              raise ValueError(
                  f"the narrow model's input has shape {np.shape(x)}, but axis {d} was coupled"
                  f" with size {traced[d]} and {why} reduces over it (a mean divides by that"
                  " size): call it with that size, or couple the model at this shape.")
          if nodes.struct[r] is None:
            dynamic[r] = int(s)
    for step in self.g.steps:
      args = [env[i] for i in step.ins]
      params = self._params(step, dynamic)
      out = step.primitive.bind(*args, **params)
      outs = out if step.primitive.multiple_results else [out]
      for o, y in zip(step.outs, outs):
        env[o] = y
        for n, s in zip(self.g.values[o].nodes, np.shape(y)):
          r = nodes.find(n)
          if nodes.struct[r] is None and r not in self.sizes:
            dynamic.setdefault(r, int(s))
    results = [env[o] for o in self.c._output_ids]
    return jax.tree_util.tree_unflatten(self.c._out_tree, results)

  def _params(self, step: graph.Step, dynamic: dict[int, int]) -> dict[str, Any]:
    p = dict(step.params)
    name = step.primitive.name
    size = lambda n: self._size(n, dynamic)
    out_nodes = self.g.values[step.outs[0]].nodes if step.outs else ()
    in_val = self.g.values[step.ins[0]] if step.ins else None
    if name in ("broadcast_in_dim", "iota"):
      p["shape"] = tuple(size(n) for n in out_nodes)
    elif name == "reshape":
      p["new_sizes"] = tuple(size(n) for n in out_nodes)
    elif name == "conv_general_dilated" and step.aux.get("group") is not None:
      p["feature_group_count"] = size(step.aux["group"])
    elif name == "slice":
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
    elif name == "split":
      p["sizes"] = tuple(size(self.g.values[o].nodes[p["axis"]]) for o in step.outs)
    elif name == "pad":
      config = []
      for d, (lo, hi, interior) in enumerate(p["padding_config"]):
        pads = step.aux["pads"][d]
        if pads is not None:
          lo = size(pads[0]) if pads[0] is not None else 0
          hi = size(pads[1]) if pads[1] is not None else 0
        config.append((lo, hi, interior))
      p["padding_config"] = tuple(config)
    elif name == "gather":
      sizes = list(p["slice_sizes"])
      for d in step.aux["full"]:
        sizes[d] = size(in_val.nodes[d])
      p["slice_sizes"] = tuple(sizes)
    elif name == "dynamic_slice":
      p["slice_sizes"] = tuple(size(in_val.nodes[d]) if s == in_val.shape[d] else s
                               for d, s in enumerate(p["slice_sizes"]))
    if "sharding" in p and name in ("broadcast_in_dim", "reshape", "iota"):
      p["sharding"] = None
    return p
