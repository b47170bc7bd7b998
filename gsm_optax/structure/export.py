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

from gsm_optax import _utils
from gsm_optax.structure import graph
from gsm_optax.structure.coupling import Coupling, Traced
from gsm_optax.structure.primitives import RULES

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
      training) raises a ValueError naming the operation, and so does another
      size along an axis traced at size 1 (a batch of one: couple at 2 or more).
    kept: per channel set, the indices of the channels kept (original numbering).
    widths: per channel set, how many channels are kept.
    input_indices: per dense layer that reads only some of its input features (its
      kernel's path, such as ``"fc1/kernel"``), the indices of those features in its input
      as the narrow model computes it (after the channels before it were cut): single
      pixels, or single positions of a flattened feature map, whose rows of the kernel are
      all zero. :attr:`apply` gathers them before the layer, so it still takes the full
      input. A dense layer is a kernel ``[in, out]`` that one ``dot_general`` reads (not an
      nnx module's, whose own ``__call__`` cannot gather).
    macs: the narrow model's multiply-accumulates per example.
    module: for an nnx module, the module with its state narrowed (its own
      ``__call__`` runs the narrow model); None otherwise.

  Example:
    >>> import jax.numpy as jnp
    >>> import gsm_optax
    >>> mlp = lambda p, x: jnp.maximum(x @ p["w1"], 0) @ p["w2"]
    >>> params = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 2))}
    >>> coupling = gsm_optax.couple(mlp, params, jnp.ones((1, 3)))
    >>> gsm_optax.narrow(coupling, gsm_optax.prune(params, 0.5, groups=coupling.groups)).widths
    {'w1': 2}
  """

  variables: PyTree
  apply: Any
  kept: dict[str, np.ndarray]
  widths: dict[str, int]
  input_indices: dict[str, np.ndarray]
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

  Warns:
    UserWarning: naming the sets left with no channel whose removal cuts the
      outputs off the inputs (a layer of a chain; see
      :attr:`gsm_optax.structure.ChannelSet.can_empty`).

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
  t = coupling.traced
  if t.nnx is not None and not isinstance(variables, dict):
    from flax import nnx

    variables = nnx.to_pure_dict(nnx.state(variables))
  g, nodes = t.graph, t.graph.nodes
  flat, tree = jax.tree_util.tree_flatten(variables)
  if len(flat) != len(t.leaves) or (t.variables_tree is not None and tree != t.variables_tree):
    raise ValueError(f"narrow: variables have structure {tree}, not that of the variables"
                     f" coupled, {t.variables_tree}.{_params_hint(tree, t.variables_tree)}")
  arrays = {leaf.value: np.asarray(x) for leaf, x in zip(t.leaves, flat)}
  for leaf, x in zip(t.leaves, flat):
    if tuple(np.shape(x)) != g.values[leaf.value].shape:
      raise ValueError(f"narrow: {leaf.path} has shape {np.shape(x)}, not the coupled"
                       f" {g.values[leaf.value].shape}.")
  prunable = {s: name for s, name in t.set_names.items()
              if nodes.reason.get(s) is None and coupling.set(name).prunable}
  zeros = _Zeros(g, prunable, arrays)
  zeros.run()
  removable = zeros.removable()
  _check_no_constant_got_in(coupling, arrays, zeros, removable)
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

  narrowed = {leaf.value: cut(leaf.value, arrays[leaf.value]) for leaf in t.leaves
              if any(not position_mask(n).all() for n in g.values[leaf.value].nodes)}
  gathers = {} if t.nnx is not None else _row_gathers(t, {**arrays, **narrowed})
  for index, rows in gathers.items():
    kernel = g.steps[index].ins[1]
    narrowed[kernel] = narrowed.get(kernel, arrays[kernel])[rows]
  new_flat = [jnp.asarray(narrowed[leaf.value], dtype=jnp.result_type(x))
              if leaf.value in narrowed else x for leaf, x in zip(t.leaves, flat)]
  new_vars = jax.tree_util.tree_unflatten(tree, new_flat)
  by_value = {leaf.value: leaf.group_path or leaf.path for leaf in t.leaves}
  input_indices = {by_value[g.steps[i].ins[1]]: rows for i, rows in gathers.items()}
  consts = {v: cut(v, c) for v, c in g.consts.items()}
  kept = {t.set_names[s]: np.flatnonzero(k).astype(np.int32) for s, k in keep.items()}
  widths = {name: int(k.size) for name, k in kept.items()}
  emptied = [gr.name for gr in coupling.groups
             if widths.get(gr.name) == 0 and not coupling.set(gr.name).can_empty]
  if emptied:
    _utils.warn(f"narrow: no channel of {emptied} is left, so the narrow model's outputs no"
                " longer depend on its inputs (a layer of a chain was emptied). Prune with"
                " groups whose min_kept is at least 1 (the default).")
  runner = _Runner(t, sizes, consts, gathers)
  module = None
  if t.nnx is not None:
    from flax import nnx

    graphdef, state = t.nnx
    state = nnx.split(nnx.merge(graphdef, state))[1]  # a copy
    nnx.replace_by_pure_dict(state, new_vars)
    module = nnx.merge(graphdef, state)
    _resize_nnx(module)
  return Narrow(new_vars, runner, kept, widths, input_indices, runner.macs(), module)


def _check_no_constant_got_in(coupling: Coupling, arrays: dict[int, np.ndarray], zeros: _Zeros,
                              removable: dict[int, np.ndarray]) -> None:
  """Raises for a group whose producers are all zero but whose channels stay: a constant got in
  (an operation maps 0 to a non-zero constant that the layers after it read)."""
  t = coupling.traced
  for gr in coupling.groups:
    s = next(r for r, n in t.set_names.items() if n == gr.name)
    dead = np.ones(gr.size, bool)
    for m in gr.members:
      leaf = next(leaf for leaf in t.leaves if leaf.group_path == m.path)
      a = np.moveaxis(arrays[leaf.value], m.axis, 0)
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


def _row_gathers(t: Traced, arrays: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
  """Per dense layer that reads only some of its input features: its step, and the rows of
  its kernel (the features) that are not all zero, in the narrowed numbering.

  A dense layer is a ``dot_general`` of an input ``[..., n]`` with a kernel ``[n, m]`` that
  is a parameter read by this step alone (so that its rows can go). A row of zeros adds
  nothing to the layer's outputs for any input: its feature is gathered out of the input.
  """
  g = t.graph
  uses: dict[int, int] = {}
  for step in g.steps:
    for v in step.ins:
      uses[v] = uses.get(v, 0) + 1
  params = {leaf.value for leaf in t.leaves}
  out = {}
  for index, _ in g.contractions:
    step = g.steps[index]
    if step.primitive.name != "dot_general":
      continue
    (lc, rc), (lb, _) = step.params["dimension_numbers"]
    kernel = step.ins[1]
    if (kernel not in params or uses[kernel] != 1 or kernel in t.output_ids or lb
        or len(g.values[kernel].shape) != 2 or tuple(rc) != (0,) or len(lc) != 1):
      continue
    rows = (arrays[kernel] != 0).any(axis=1)
    if not rows.all():
      out[index] = np.flatnonzero(rows).astype(np.int32)
  return out


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
  """Which channel slices of every value are exactly zero, for any input (pass two).

  Each primitive's ``zeros`` rule (:data:`gsm_optax.structure.primitives.RULES`) reads its
  operands' with :meth:`get` and :meth:`whole_zero` and records its results' with :meth:`put`.
  """

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

  def size(self, s: int) -> int:
    """How many channels the set ``s`` has."""
    return self.nodes.size[s]

  def _from_array(self, v: int, a: np.ndarray) -> None:
    z = {}
    for s, (axis, lab) in self.classes(v).items():
      moved = np.moveaxis(a, axis, 0)
      nz = (moved.reshape(moved.shape[0], -1) != 0).any(axis=1)
      at = lab >= 0
      live = np.zeros(self.nodes.size[s], bool)
      np.logical_or.at(live, lab[at], nz[at])
      z[s] = ~live
    self.put(v, z, not np.any(a))

  def put(self, v: int, per_set: dict[int, np.ndarray], whole: bool) -> None:
    """Value ``v`` is zero on the channels ``per_set[s]`` of each set, and everywhere when
    ``whole``."""
    self.z[v] = per_set
    self.whole[v] = whole

  def get(self, v: int, s: int) -> np.ndarray:
    """Which channels of the set ``s`` value ``v`` is zero on."""
    if s in self.z.get(v, {}):
      return self.z[v][s]
    return np.full(self.nodes.size[s], self.whole_zero(v))

  def whole_zero(self, v: int) -> bool:
    """Whether value ``v`` is zero everywhere."""
    return self.whole.get(v, False)

  def run(self) -> None:
    for step in self.g.steps:
      if not any(o in self.z for o in step.outs):  # not a constant computed already
        RULES[step.primitive.name].zeros(self, step)
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


def _size_one_error(k: int, d: int, traced: tuple[int, ...], shape: tuple[int, ...]) -> ValueError:
  """The error of a narrow model called with another size along an axis coupled at size 1."""
  what = "a batch" if d == 0 else f"axis {d}"
  coupled = (2,) + tuple(traced[1:]) if d == 0 else traced
  return ValueError(
      f"the narrow model's input {k} has shape {tuple(shape)}, but couple traced it with shape"
      f" {tuple(traced)}: {what} of size 1, which a trace cannot tell from any other axis of"
      " size 1 (a reshape or a broadcast bakes the 1 in), so the narrow model runs at that size"
      f" only. Call it with size 1 there, or couple the model at the size it will run at, or at"
      f" 2 or more for any batch: couple(model, variables, jax.ShapeDtypeStruct({coupled},"
      " dtype)).")


class _Runner:
  """The narrow model: the coupled jaxpr re-evaluated with narrower arrays (pass three)."""

  def __init__(self, traced: Traced, sizes: dict[int, int], consts: dict[int, np.ndarray],
               gathers: dict[int, np.ndarray]) -> None:
    self.t = traced
    self.g = traced.graph
    self.sizes = sizes
    self.consts = consts
    self.gathers = gathers  # step -> the input features a dense layer reads
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
    if self.t.input_ids and self.g.values[self.t.input_ids[0]].shape:
      batch = self.g.values[self.t.input_ids[0]].shape[0]
    for index, _ in self.g.contractions:
      step = self.g.steps[index]
      if index in self.gathers:  # its outputs times the features it gathers
        dims = list(self.g.values[step.outs[0]].nodes)
        features = self.gathers[index].size
      else:
        dims, features = self.g.mac_dims(step), 1
      total += float(np.prod([self._size(n, dynamic) for n in dims])) * features / batch
    return total

  def __call__(self, variables: PyTree, *inputs: Any) -> Any:
    flat = jax.tree_util.tree_leaves((variables, *inputs))
    ids = [leaf.value for leaf in self.t.leaves] + list(self.t.input_ids)
    if len(flat) != len(ids):
      raise ValueError(f"the narrow model takes (variables, *inputs) with {len(ids)} arrays in"
                       f" all; got {len(flat)}.")
    env: dict[int, Any] = dict(self.consts)
    dynamic: dict[int, int] = {}
    nodes = self.g.nodes
    fixed: dict[int, str] = {}
    for n, why in self.g.reduced:
      for leaf in nodes.leaves(n):
        fixed.setdefault(nodes.find(leaf), why)
    for v, x in zip(ids, flat):
      env[v] = x
      if v in self.t.input_ids:
        traced = self.g.values[v].shape
        if len(np.shape(x)) != len(traced):
          raise ValueError(f"the narrow model's input has shape {np.shape(x)}; it was coupled"
                           f" with shape {traced}.")
        for d, (n, s) in enumerate(zip(self.g.values[v].nodes, np.shape(x))):
          r = nodes.find(n)
          if traced[d] == 1 and s != 1:
            raise _size_one_error(self.t.input_ids.index(v), d, traced, np.shape(x))
          if s != traced[d]:
            reducer = next((fixed[leaf] for leaf in map(nodes.find, nodes.leaves(n))
                            if leaf in fixed), None)
            if reducer is not None:
              raise ValueError(
                  f"the narrow model's input has shape {np.shape(x)}, but axis {d} was coupled"
                  f" with size {traced[d]} and {reducer} reduces over it (a mean divides by that"
                  " size): call it with that size, or couple the model at this shape.")
          if nodes.struct[r] is None:
            dynamic[r] = int(s)
    for index, step in enumerate(self.g.steps):
      args = [env[i] for i in step.ins]
      if index in self.gathers:
        (contracted,), _ = step.params["dimension_numbers"][0]
        args[0] = jnp.take(args[0], self.gathers[index], axis=contracted)
      params = dict(step.params)
      resize = RULES[step.primitive.name].resize
      if resize is not None:
        resize(self.g, step, params, lambda n: self._size(n, dynamic))
      out = step.primitive.bind(*args, **params)
      outs = out if step.primitive.multiple_results else [out]
      for o, y in zip(step.outs, outs):
        env[o] = y
        for n, s in zip(self.g.values[o].nodes, np.shape(y)):
          r = nodes.find(n)
          if nodes.struct[r] is None and r not in self.sizes:
            dynamic.setdefault(r, int(s))
    results = [env[o] for o in self.t.output_ids]
    return jax.tree_util.tree_unflatten(self.t.out_tree, results)
