"""Export of a structurally pruned model: the same architecture with narrower layers.

After structured GSM and ``gsm_optax.prune(..., groups=...)`` whole units of a
dense model are exactly zero: output filters, neurons, input features.
:func:`export_pruned` removes them and returns a physically smaller parameter
tree for the same architecture with fewer channels per layer.

Which entries belong together is a tuple of :class:`Channels`: the channels
that one layer produces (its kernel's output axis, its bias, a normalisation's
scale and offset) and the next layer consumes (its kernel's input axis). For a
plain chain of Flax linen layers, :func:`trace_layers` records the layers in
call order and :func:`sequential_coupling` derives the channels; other models
(residual, branched) pass their own tuple of :class:`Channels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gsm_optax import _utils
from gsm_optax.grouping import GroupMember, Groups, MacCost, MacTerm, mac_costs

PyTree = Any

__all__ = ["Channels", "Exported", "Layer", "count_macs", "export_pruned", "sequential_coupling",
           "trace_layers"]

# Normalisations that mix the channels: removing a channel changes the others' outputs.
_CROSS_CHANNEL_NORMS = ("LayerNorm", "GroupNorm", "RMSNorm", "InstanceNorm")


class Layer(NamedTuple):
  """One call of a Flax submodule that owns parameters, as :func:`trace_layers` records it.

  Attributes:
    name: the module's path, its names joined by "/" (``"conv1"``, ``"block/conv"``).
    kind: ``"dense"`` (a kernel of rank 2), ``"conv"`` (a kernel of rank >= 3
      laid out ``[...spatial..., in, out]`` like ``nn.Conv``), ``"norm"`` (a
      per-channel ``scale`` and/or ``bias`` and no kernel, like
      ``nn.BatchNorm``) or ``"other"`` (anything else, such as ``nn.LayerNorm``,
      which mixes the channels).
    kernel: the path of its kernel in the params, or None.
    bias: the path of its bias, or None.
    scale: the path of its scale, or None.
    input_shape: the shape of one example of its input (no batch axis).
    output_shape: the shape of one example of its output.
    macs: its multiply-accumulates per example at full width (0 without a kernel).
    shares: the other kernel layers whose outputs share this layer's output
      channels (a residual addition), as :func:`gsm_optax.couple` reads them from
      the model's jaxpr; :func:`sequential_coupling` refuses such a model.

  Example:
    >>> from flax import linen as nn
    >>> import jax.numpy as jnp
    >>> from gsm_optax.export import trace_layers
    >>> trace_layers(nn.Sequential([nn.Dense(2)]), jnp.zeros((1, 4)))[0].kind
    'dense'
  """

  name: str
  kind: str
  kernel: str | None
  bias: str | None
  scale: str | None
  input_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  macs: int
  shares: tuple[str, ...] = ()


class Channels(NamedTuple):
  """A set of ``size`` channels that some layers produce and others consume.

  Attributes:
    name: a name for errors and :attr:`Exported.kept` (the producing layer's).
    size: the number of channels.
    producers: the entries that compute the channels: the producing kernel's
      output axis, its bias, a normalisation's scale and offset. Empty for the
      model's inputs.
    consumers: the entries that read the channels: the next kernels' input
      axes. A member's axis may be a multiple of ``size`` long; index ``i``
      then belongs to channel ``i % size`` (a dense layer after flattening an
      NHWC map).

  Example:
    >>> from flax import linen as nn
    >>> import jax.numpy as jnp
    >>> from gsm_optax.export import sequential_coupling, trace_layers
    >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
    >>> [c.size for c in sequential_coupling(trace_layers(model, jnp.zeros((1, 4))))]
    [4, 8]
  """

  name: str
  size: int
  producers: tuple[GroupMember, ...]
  consumers: tuple[GroupMember, ...]


class Exported(NamedTuple):
  """What :func:`export_pruned` returns.

  Attributes:
    params: the narrower parameters, in the same tree structure.
    widths: the output width of every kernel layer after export, by layer name.
    input_indices: per consuming layer, the input features it keeps (int32,
      indices into its input as the exported model computes it, after the
      previous layer was narrowed), or None when it takes all its inputs. The
      exported model must gather these features before the layer.
    kept: per :class:`Channels` set, the kept channels in the original numbering.
    variables: the sliced ``variables`` (``{"batch_stats": ...}``), or None.

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import GroupMember
    >>> from gsm_optax.export import Channels, export_pruned
    >>> params = {"a": {"kernel": jnp.array([[1., 0.]])}, "b": {"kernel": jnp.ones((2, 1))}}
    >>> coupling = [Channels("a", 2, (GroupMember("a/kernel", 1),), (GroupMember("b/kernel", 0),))]
    >>> export_pruned(params, coupling).params["b"]["kernel"].shape
    (1, 1)
  """

  params: PyTree
  widths: dict[str, int]
  input_indices: dict[str, np.ndarray | None]
  kept: dict[str, np.ndarray]
  variables: PyTree | None = None


def _first_shape(tree: Any) -> tuple[int, ...] | None:
  """The shape of the first array of rank >= 1 in ``tree``, or None."""
  for leaf in jax.tree_util.tree_leaves(tree):
    if jnp.ndim(leaf) >= 1:
      return tuple(jnp.shape(leaf))
  return None


def trace_layers(model: Any, *sample_args: Any, variables: PyTree | None = None
                 ) -> tuple[Layer, ...]:
  """The parameter-owning submodule calls of a Flax linen model, in call order.

  Runs the model abstractly (``jax.eval_shape``: nothing is computed) with a
  method interceptor that records each submodule ``__call__`` whose module owns
  a ``kernel``, ``bias`` or ``scale`` directly. The order is the order of the
  calls, not that of the parameter dict (which JAX sorts by name).

  Args:
    model: a ``flax.linen.Module``.
    *sample_args: its inputs, with a batch axis first (arrays or
      ``jax.ShapeDtypeStruct``).
    variables: its variables; when None, the model is traced through
      ``model.init`` instead of ``model.apply``.

  Returns:
    A tuple of :class:`Layer`, one per call (a module called twice appears twice).

  Example:
    >>> from flax import linen as nn
    >>> import jax.numpy as jnp
    >>> from gsm_optax.export import trace_layers
    >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
    >>> [(l.name, l.kind, l.macs) for l in trace_layers(model, jnp.zeros((1, 4)))]
    [('layers_0', 'dense', 32), ('layers_2', 'dense', 16)]
  """
  from flax import linen as nn  # here, so that `import gsm_optax` does not import flax

  cross_channel = tuple(getattr(nn, n) for n in _CROSS_CHANNEL_NORMS if hasattr(nn, n))
  calls: list[Layer | None] = []

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not module.path:
      return next_fun(*args, **kwargs)
    slot = len(calls)
    calls.append(None)  # the slot of this call: nested calls come after it
    out = next_fun(*args, **kwargs)
    own = {k: v for k, v in module.variables.get("params", {}).items()
           if k in ("kernel", "bias", "scale") and hasattr(v, "shape")}
    in_shape, out_shape = _first_shape((args, kwargs)), _first_shape(out)
    if own and in_shape is not None and out_shape is not None:
      calls[slot] = _layer(module, own, in_shape[1:], out_shape[1:], cross_channel)
    return out

  with nn.intercept_methods(interceptor):
    if variables is None:
      variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *sample_args))
    else:
      jax.eval_shape(lambda v: model.apply(v, *sample_args, mutable=True), variables)
  layers = tuple(layer for layer in calls if layer is not None)
  return _with_shared_outputs(layers, model, variables, sample_args)


def _with_shared_outputs(layers: tuple[Layer, ...], model: Any, variables: PyTree,
                         sample_args: tuple[Any, ...]) -> tuple[Layer, ...]:
  """``layers`` with :attr:`Layer.shares` read from the jaxpr by :func:`gsm_optax.couple`:
  shapes alone cannot show an identity skip connection whose widths match."""
  from gsm_optax.structure import couple  # the jaxpr coupling; a chain is its simplest case

  try:
    coupling = couple(lambda v, *a: model.apply(v, *a, mutable=True)[0], variables,
                      *sample_args)
  except ValueError:
    return layers  # a primitive couple does not know: the chain is assumed, as before
  owner = {}
  for s in coupling.sets:
    kernels = [m.path.rpartition("/")[0] for m in s.producers if m.path.endswith("/kernel")]
    for k in kernels:
      owner[k] = tuple(sorted(set(kernels) - {k}))
  return tuple(layer._replace(shares=owner.get(layer.name, ())) for layer in layers)


def _layer(module: Any, own: dict[str, Any], in_shape: tuple[int, ...],
           out_shape: tuple[int, ...], cross_channel: tuple[type, ...]) -> Layer:
  """The :class:`Layer` of one call of ``module``, whose own params are ``own``."""
  name = "/".join(str(p) for p in module.path)
  paths = {k: f"{name}/{k}" if k in own else None for k in ("kernel", "bias", "scale")}
  kernel = own.get("kernel")
  macs = 0
  if kernel is not None and kernel.ndim >= 2:
    kind = "dense" if kernel.ndim == 2 else "conv"
    macs = int(np.prod(out_shape[:-1], dtype=np.int64)) * int(np.prod(kernel.shape))
  elif (kernel is None and not isinstance(module, cross_channel) and in_shape
        and in_shape == out_shape and all(v.shape == in_shape[-1:] for v in own.values())):
    kind = "norm"
  else:
    kind = "other"
  return Layer(name, kind, paths["kernel"], paths["bias"], paths["scale"], in_shape, out_shape,
               macs)


def _kernel_path(layer: Layer) -> str:
  """The path of a dense or conv layer's kernel, which such a layer must name."""
  if layer.kernel is None:
    raise ValueError(f"sequential_coupling: layer {layer.name!r} has kind {layer.kind!r} and"
                     " kernel=None; a dense or conv layer needs the path of its kernel.")
  return layer.kernel


def _kernel_ndim(layer: Layer) -> int:
  """The rank of a dense (2) or conv kernel (spatial axes of the input, plus in and out)."""
  return 2 if layer.kind == "dense" else len(layer.input_shape) + 1


def sequential_coupling(layers: Sequence[Layer]) -> tuple[Channels, ...]:
  """The :class:`Channels` of a plain chain of layers, as :func:`trace_layers` records them.

  One set for the first kernel layer's inputs (no producers) and one per pair
  of consecutive kernel layers: the earlier layer's kernel (output axis) and
  bias, and the scale and bias of the norms between them, produce the
  channels; the later kernel's input axis consumes them. A flatten from a
  convolution into a dense layer is allowed (NHWC order: input ``i`` of the
  dense layer is channel ``i % C``). Activations and pooling between layers do
  not appear in the trace: export assumes they map 0 to 0 per channel (ReLU,
  max or average pooling).

  Shapes alone cannot show a skip connection whose widths happen to match (an
  identity residual ``x + f(x)``): compare the exported model's outputs with
  the pruned dense model's, and write the :class:`Channels` by hand for such
  models.

  Args:
    layers: the layers in call order.

  Returns:
    A tuple of :class:`Channels`.

  Raises:
    ValueError: naming the layers when a layer's input width is neither the
      previous kernel layer's output width nor (a dense layer after a
      convolution) a multiple of it, a norm is not per channel of the previous
      kernel's width, a layer is called twice, or a layer is of kind
      ``"other"``.

  Example:
    >>> from flax import linen as nn
    >>> import jax.numpy as jnp
    >>> from gsm_optax.export import sequential_coupling, trace_layers
    >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
    >>> [(c.name, c.size) for c in sequential_coupling(trace_layers(model, jnp.zeros((1, 4))))]
    [('layers_0 inputs', 4), ('layers_0', 8)]
  """
  out: list[Channels] = []
  prev: Layer | None = None  # the last kernel layer
  norms: list[Layer] = []  # the norms after it
  seen: set[str] = set()
  for layer in layers:
    if layer.name in seen:
      raise ValueError(f"sequential_coupling: layer {layer.name!r} is called more than once; a"
                       " shared layer is not a plain chain: pass the Channels by hand.")
    seen.add(layer.name)
    if layer.kind == "norm":
      if prev is not None:  # a norm of the model's inputs is not pruned
        if layer.input_shape[-1] != prev.output_shape[-1]:
          raise ValueError(
              f"sequential_coupling: norm {layer.name!r} has width {layer.input_shape[-1]}, not"
              f" the {prev.output_shape[-1]} channels of the layer before it, {prev.name!r}.")
        norms.append(layer)
      continue
    if layer.kind not in ("dense", "conv"):
      raise ValueError(f"sequential_coupling: layer {layer.name!r} (kind {layer.kind!r}, e.g. a"
                       " normalisation across channels) cannot be narrowed channel by channel:"
                       " pass the Channels by hand.")
    if layer.shares:
      raise ValueError(
          f"sequential_coupling: layer {layer.name!r} shares its output channels with"
          f" {list(layer.shares)} (a residual addition): the model is not a plain chain."
          " Use gsm_optax.couple and gsm_optax.narrow, which follow the jaxpr.")
    width = layer.input_shape[-1]
    consumer = GroupMember(_kernel_path(layer), _kernel_ndim(layer) - 2)
    if prev is None:
      out.append(Channels(f"{layer.name} inputs", width, (), (consumer,)))
    else:
      size = prev.output_shape[-1]
      flattened = (prev.kind == "conv" and layer.kind == "dense" and len(layer.input_shape) == 1
                   and width % size == 0)
      if width != size and not flattened:
        raise ValueError(
            f"sequential_coupling: layer {layer.name!r} takes inputs of width {width}, but the"
            f" kernel layer called before it, {prev.name!r}, outputs {size} channels: the model"
            " is not a plain chain (a residual or concatenated skip connection, a branch?)."
            " Pass the Channels by hand.")
      producers = [GroupMember(_kernel_path(prev), _kernel_ndim(prev) - 1)]
      if prev.bias is not None:
        producers.append(GroupMember(prev.bias, 0))
      for norm in norms:
        producers += [GroupMember(path, 0) for path in (norm.scale, norm.bias) if path is not None]
      out.append(Channels(prev.name, size, tuple(producers), (consumer,)))
    prev, norms = layer, []
  return tuple(out)


def _along(leaf: np.ndarray, axis: int) -> np.ndarray:
  """Per index of ``axis``: whether any entry of that slice is non-zero."""
  moved = np.moveaxis(leaf, axis, 0)
  return (moved.reshape(moved.shape[0], -1) != 0).any(axis=1)


def export_pruned(params: PyTree, coupling: Sequence[Channels], *,
                  variables: PyTree | None = None) -> Exported:
  """Removes the dead channels of a structurally pruned model: narrower layers, same outputs.

  A channel is dead when all its producer entries are exactly 0 (its output
  is then 0: this assumes the activations and pooling between the layers map
  0 to 0, as ReLU, max and average pooling do, and a norm's scale and offset
  are among the producers), or when all its consumer entries are 0 (its
  output is unused). Dead channels are removed from every producer and
  consumer; a channel of a flattened map loses the rows of all its positions.
  Besides, a row of a dense consumer (rank-2 kernel) that is all 0 is removed
  on its own (pixels, single positions of a flattened map): the exported model
  gathers the kept features, :attr:`Exported.input_indices`. The inputs of a
  convolution reading the model's inputs are all kept.

  Run it outside ``jit``, on concrete parameters (the widths depend on values).

  Args:
    params: the pruned parameters (whole units exactly 0).
    coupling: the :class:`Channels` sets (:func:`sequential_coupling`).
    variables: other collections to slice like the norms' parameters, e.g.
      ``{"batch_stats": ...}``: every 1-D leaf of a norm that produces a set is
      cut like the norm's scale.

  Returns:
    An :class:`Exported`.

  Raises:
    ValueError: naming the set and the value when a member is not a leaf of
      ``params``, has no such axis, its length is not a multiple of the set's
      size, a leaf axis is a member of two sets, a set has no consumers, or
      every channel of a set is dead (the model would output a constant).

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import GroupMember
    >>> from gsm_optax.export import Channels, export_pruned
    >>> params = {"fc1": {"kernel": jnp.array([[1., 0., 2.]]), "bias": jnp.zeros(3)},
    ...           "fc2": {"kernel": jnp.ones((3, 1))}}
    >>> coupling = [Channels("fc1", 3, (GroupMember("fc1/kernel", 1),
    ...                                 GroupMember("fc1/bias", 0)),
    ...                      (GroupMember("fc2/kernel", 0),))]
    >>> export_pruned(params, coupling).widths
    {'fc1': 2, 'fc2': 1}
  """
  with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = [_utils.path_name(p) for p, _ in with_path]
  leaves = {n: np.asarray(leaf) for n, (_, leaf) in zip(names, with_path)}
  shapes = {n: leaf.shape for n, leaf in leaves.items()}
  cuts: dict[tuple[str, int], np.ndarray] = {}  # (path, axis) -> kept indices
  per_channel: dict[str, np.ndarray] = {}  # norm module -> kept channel mask (for variables)
  input_indices: dict[str, np.ndarray | None] = {}
  kept: dict[str, np.ndarray] = {}
  layers: set[str] = set()
  claimed: set[tuple[str, int]] = set()

  def member(ch: Channels, m: GroupMember) -> tuple[str, int]:
    axis = _utils.member_axis(f"coupling[{ch.name!r}]", m.path, m.axis, ch.size, shapes)
    shape = shapes[m.path]
    if (m.path, axis) in claimed:
      raise ValueError(f"coupling[{ch.name!r}]: axis {axis} of {m.path} is a member twice;"
                       " a leaf axis belongs to one Channels set, once.")
    claimed.add((m.path, axis))
    if len(shape) >= 2:
      layers.add(m.path.rpartition("/")[0])
    return m.path, axis

  for ch in coupling:
    if not isinstance(ch, Channels):
      raise TypeError(f"coupling must hold gsm_optax Channels; got {ch!r}.")
    _utils.check_int(f"coupling[{ch.name!r}].size", ch.size, 1)
    if not ch.consumers:
      raise ValueError(f"coupling[{ch.name!r}] has no consumers.")
    producers = [member(ch, m) for m in ch.producers]
    consumers = [member(ch, m) for m in ch.consumers]
    alive = np.zeros(ch.size, bool)
    for path, axis in consumers:
      alive |= _along(leaves[path], axis).reshape(-1, ch.size).any(axis=0)
    if producers:
      made = np.zeros(ch.size, bool)
      for path, axis in producers:
        made |= _along(leaves[path], axis).reshape(-1, ch.size).any(axis=0)
      alive &= made
    elif any(leaves[path].ndim != 2 for path, _ in consumers):
      alive[:] = True  # a convolution cannot gather its input channels: keep them
    if not alive.any():
      raise ValueError(f"export_pruned: every channel of coupling[{ch.name!r}] (size {ch.size})"
                       " is dead (all its producer or all its consumer entries are 0): the model"
                       " would output a constant. Keep at least one.")
    kept[ch.name] = np.flatnonzero(alive).astype(np.int32)
    for path, axis in producers:
      mask = np.tile(alive, leaves[path].shape[axis] // ch.size)
      cuts[path, axis] = np.flatnonzero(mask)
      if leaves[path].ndim == 1:
        per_channel[path.rpartition("/")[0]] = mask
    # The model's inputs are not narrowed: their kept features are gathered.
    new_size = int(alive.sum()) if producers else ch.size
    rank = np.cumsum(alive) - 1
    for path, axis in consumers:
      rows = np.tile(alive, leaves[path].shape[axis] // ch.size)
      if leaves[path].ndim == 2:
        rows &= _along(leaves[path], axis)
      rows = np.flatnonzero(rows)
      cuts[path, axis] = rows
      index = (rows // ch.size) * new_size + rank[rows % ch.size] if producers else rows
      full = rows.size == leaves[path].shape[axis] // ch.size * new_size
      input_indices[path.rpartition("/")[0]] = None if full else index.astype(np.int32)

  out = []
  for name, (_, leaf) in zip(names, with_path):
    value = leaves[name]
    for axis in range(value.ndim):
      if (name, axis) in cuts:
        value = np.take(value, cuts[name, axis], axis=axis)
    out.append(leaf if value is leaves[name] else jnp.asarray(value))
  new_params = jax.tree_util.tree_unflatten(treedef, out)
  new_leaves = {n: x for n, x in zip(names, out)}
  widths = {layer: int(new_leaves[f"{layer}/kernel"].shape[-1]) for layer in sorted(layers)
            if f"{layer}/kernel" in new_leaves}
  new_variables = None if variables is None else _slice_variables(variables, per_channel)
  return Exported(new_params, widths, input_indices, kept, new_variables)


def _slice_variables(variables: PyTree, per_channel: dict[str, np.ndarray]) -> PyTree:
  """``variables`` with each 1-D leaf of a norm in ``per_channel`` cut to its kept channels."""
  if not isinstance(variables, dict) or "params" in variables:
    keys = list(variables) if isinstance(variables, dict) else type(variables).__name__
    raise ValueError("variables must be a dict of collections other than 'params', such as"
                     f" {{'batch_stats': ...}}; got variables with {keys}.")

  def cut(path, leaf):
    module = _utils.path_name(path[1:]).rpartition("/")[0]  # path[0] is the collection
    mask = per_channel.get(module)
    if mask is None or jnp.ndim(leaf) != 1 or jnp.shape(leaf)[0] != mask.size:
      return leaf
    return jnp.asarray(np.asarray(leaf)[mask])

  return jax.tree_util.tree_map_with_path(cut, variables)


def count_macs(layers: Sequence[Layer], exported: Exported | None = None) -> int:
  """Multiply-accumulates per example of the traced model's kernel layers.

  Args:
    layers: from :func:`trace_layers` (on the full-width model).
    exported: an :class:`Exported` of that model; None for the full width.

  Returns:
    The sum over dense and conv layers of ``prod(output spatial shape) *
    kernel size`` (``in * out`` for a dense layer), with the exported kernels'
    shapes when ``exported`` is given. Norms and other layers count 0.

  Example:
    >>> from flax import linen as nn
    >>> import jax.numpy as jnp
    >>> from gsm_optax.export import count_macs, trace_layers
    >>> model = nn.Sequential([nn.Conv(8, (3, 3)), nn.relu, nn.Dense(2)])
    >>> count_macs(trace_layers(model, jnp.zeros((1, 4, 4, 3))))  # 16 * 9 * 3 * 8 + 16 * 8 * 2
    3712
  """
  if exported is None:
    return sum(layer.macs for layer in layers)
  kernels = {_utils.path_name(p): leaf
             for p, leaf in jax.tree_util.tree_leaves_with_path(exported.params)}
  total = 0
  for layer in layers:
    if layer.kind in ("dense", "conv"):
      if layer.kernel not in kernels:
        raise ValueError(f"count_macs: {layer.kernel!r} of layer {layer.name!r} is not a leaf of"
                         " exported.params.")
      spatial = int(np.prod(layer.output_shape[:-1], dtype=np.int64))
      total += spatial * int(np.prod(jnp.shape(kernels[layer.kernel])))
  return total


def sequential_groups(coupling: Sequence[Channels]) -> tuple[Groups, ...]:
  """Output groups of a traced sequential model, each unit with its bias and its norm.

  One :class:`gsm_optax.Groups` per set of ``coupling`` that has producers: a
  unit's kernel slice, its bias and the scale and offset of a per-channel norm
  after it (found in call order by :func:`trace_layers`, which
  :func:`gsm_optax.output_groups` cannot do from the parameters alone). The
  logits are not a set of the coupling, so they are never grouped.

  Args:
    coupling: from :func:`sequential_coupling`.

  Returns:
    A tuple of :class:`gsm_optax.Groups`.

  Example:
    >>> from flax import linen as nn
    >>> import jax.numpy as jnp
    >>> from gsm_optax.export import sequential_coupling, sequential_groups, trace_layers
    >>> model = nn.Sequential([nn.Dense(8), nn.BatchNorm(True), nn.relu, nn.Dense(2)])
    >>> groups = sequential_groups(sequential_coupling(trace_layers(model, jnp.zeros((1, 4)))))
    >>> [m.path for m in groups[0].members]
    ['layers_0/kernel', 'layers_0/bias', 'layers_1/scale', 'layers_1/bias']
  """
  return tuple(Groups(c.name, c.size, c.producers) for c in coupling if c.producers)


def sequential_mac_costs(layers: Sequence[Layer], coupling: Sequence[Channels],
                         groups: Sequence[Groups], *, per_mac: bool = False) -> MacCost:
  """A budget in multiply-accumulates for ``groups`` of a traced sequential model.

  Each kernel layer's MACs (:attr:`Layer.macs`) scale with the kept fraction of
  the groups that produce its inputs and of those that make its outputs: the
  :class:`gsm_optax.MacTerm` of every layer, from the coupling. Pass the result
  as ``budget`` with ``groups`` (from :func:`sequential_groups`, or any groups
  named after the coupling's sets).

  Args:
    layers: from :func:`trace_layers`.
    coupling: from :func:`sequential_coupling`.
    groups: the groups ranked.
    per_mac: rank groups by score per MAC (see :func:`gsm_optax.mac_costs`).

  Returns:
    A :class:`gsm_optax.MacCost` (see :func:`gsm_optax.mac_costs`).

  Example:
    >>> from flax import linen as nn
    >>> import jax.numpy as jnp
    >>> from gsm_optax.export import (sequential_coupling, sequential_groups,
    ...                               sequential_mac_costs, trace_layers)
    >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
    >>> layers = trace_layers(model, jnp.zeros((1, 4)))
    >>> coupling = sequential_coupling(layers)
    >>> budget = sequential_mac_costs(layers, coupling, sequential_groups(coupling))
    >>> budget.names, budget.total  # 4 * 8 + 8 * 2, both scaled by the hidden units kept
    (('layers_0',), 48.0)
  """
  names = {g.name for g in groups}
  terms = []
  for layer in layers:
    if layer.kernel is None:
      continue
    sets = tuple(c.name for c in coupling if c.name in names
                 and any(m.path == layer.kernel for m in c.producers + c.consumers))
    terms.append(MacTerm(layer.macs, sets))
  return mac_costs(groups, terms, per_mac=per_mac)
