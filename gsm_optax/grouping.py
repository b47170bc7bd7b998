"""Groups of weights pruned together: neurons, filters, input features.

A :class:`Groups` is one set of ``size`` groups: each of its members is a
parameter leaf and the axis of that leaf whose index says which group an entry
belongs to. The groups of structured GSM are the output neurons of dense
layers, the output filters of convolutions (with the bias and a following
norm's scale and offset of the same unit) or the input features of a layer;
:func:`output_groups` and :func:`input_groups` build those for Flax models, and
any other partition can be written by hand. A group's score is the sum of its
entries' scores; the selection then ranks groups instead of weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gsm_optax import _utils, eligibility
from gsm_optax.importance import magnitude, resolve_importance, score_dtype

Array = jax.Array
PyTree = Any

BUDGETS = ("groups", "weights", "cost")
ALLOCATIONS = ("global", "uniform", "normalized")
GROUP_TAYLOR = "group_taylor"  # |sum g * w| over a group (Molchanov et al. 2019)
GROUP_RMS = "group_rms"  # sqrt(sum w**2 / n) over a group of n weights: its L2 norm per weight
GROUP_IMPORTANCES = (GROUP_TAYLOR, GROUP_RMS)  # the scores defined for groups only


class GroupMember(NamedTuple):
  """One parameter leaf of a :class:`Groups` and the axis that indexes its groups.

  Attributes:
    path: the leaf's path, its keys joined by "/" (``"fc1/kernel"``; for an
      ``nnx.State`` the attribute names, ``"linear/kernel"``).
    axis: the axis of that leaf whose index gives the group. Its length is
      ``size`` or a multiple of it; index ``i`` then belongs to group ``i mod
      size`` (the order in which a Flax CNN flattens ``[h, w, channels]``
      before a dense layer, so that a dense layer's input rows can join the
      filters that feed them).
    inner: how many consecutive indices of ``axis`` share a group: index ``i``
      belongs to group ``(i // inner) mod size``. 1 by default; a kernel whose
      output axis is ``heads * head_dim`` (split into heads after the layer)
      has the heads as groups with ``inner=head_dim``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import output_groups
    >>> output_groups({"fc": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}})[0].members
    (GroupMember(path='fc/kernel', axis=1, inner=1), GroupMember(path='fc/bias', axis=0, inner=1))
  """

  path: str
  axis: int
  inner: int = 1


class Groups(NamedTuple):
  """A set of ``size`` groups of weights, pruned or kept as wholes.

  Attributes:
    name: a name for reports and errors (a layer's, say).
    size: the number of groups (neurons, filters, input features).
    members: the leaves whose entries belong to these groups. Every entry of a
      member belongs to exactly one group, and a leaf is a member of at most
      one :class:`Groups` of a model.
    cost: what one group costs, for a budget in ``"cost"`` (a number, its
      size on disk, say); None when not given. A budget in
      multiply-accumulates is :func:`mac_costs`.
    min_kept: the fewest groups of the set that any selection or prune keeps
      (its best ones), whatever the budget; 1 by default, so that no layer of
      a chain is emptied and the model cut off from its inputs. 0 lets the
      budget remove the whole set: ask for it only where the outputs do not
      need the set (the inner width of a residual branch, whose skip stays;
      :meth:`gsm_optax.structure.Coupling.allow_empty` says which sets).
    multiple_of: every selection or prune keeps a multiple of this many groups of
      the set (its best ones), or the whole set; 1 by default. Hardware runs a
      layer fastest at widths that fill its vector registers or tiles: on
      XLA:CPU a ResNet-20 whose first stage has 17 channels took 2.4x the time
      of one with 16 (``python -m benchmarks.width_speed``), so a model exported
      with :func:`gsm_optax.narrow` is only as fast as its MACs say where its
      widths are multiples of 8 (GPUs' tensor cores and TPUs' lanes work in
      multiples of 8 and 128; not measured here).
      The budget is counted at the rounded widths: a set's partial multiple
      costs nothing and is not kept, so a multiple of groups enters the
      selection when its weakest group does. ``min_kept`` is rounded up to it.

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import output_groups
    >>> output_groups({"fc": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}})[0].size
    3
  """

  name: str
  size: int
  members: tuple[GroupMember, ...]
  cost: float | None = None
  min_kept: int = 1
  multiple_of: int = 1


class MacTerm(NamedTuple):
  """The multiply-accumulates of one layer, for a budget in MACs (see :func:`mac_costs`).

  Attributes:
    macs: the layer's multiply-accumulates per example at full width.
    sets: the names of the :class:`Groups` whose kept fraction scales them:
      a layer between two pruned sets (the filters of one convolution and of
      the next) costs ``macs * f_in * f_out``.

  Example:
    >>> import gsm_optax
    >>> g = [gsm_optax.Groups("h", 4, (gsm_optax.GroupMember("fc2/kernel", 0),))]
    >>> gsm_optax.mac_costs(g, [gsm_optax.MacTerm(8 * 4, ("h",))]).terms
    (MacTerm(macs=32.0, sets=('h',)),)
  """

  macs: float
  sets: tuple[str, ...]


def mac_costs(groups: Sequence[Groups], terms: Sequence[MacTerm], *,
              per_mac: bool = False) -> MacCost:
  """A budget in multiply-accumulates for ``groups``: the MACs of the widths kept.

  A group's cost in MACs depends on what is kept around it (a filter of a
  second convolution costs ``h * w * k * k`` per input channel the first one
  keeps), so MACs do not add up group by group. Pass the result as the
  ``budget`` of :func:`gsm_optax.keep_top_groups`, :func:`gsm_optax.gsm`
  or :func:`gsm_optax.prune`: groups are still taken best score first, and
  kept while the model's MACs ``sum(macs * f_in * f_out)`` at the kept
  fractions ``f`` stay within ``keep_ratio`` of the MACs at full width.

  With ``per_mac=True`` groups are taken by score per MAC instead, the
  greedy order of the knapsack "most score within the MACs": a row of a dense
  layer that costs a few hundred MACs is then not outranked by a filter that
  costs tens of thousands. A group's cost is what it adds to the MACs at the
  fractions kept at the last step (its layer's MACs per unit, times the kept
  fraction of the other set of that layer), kept in the optimizer's state. As
  with every budget, each set keeps its ``min_kept`` best groups (see
  :class:`Groups`), so no layer is emptied unless asked. Without state
  (:func:`gsm_optax.prune`) the costs are those at full width.

  Args:
    groups: the groups; their names must be distinct.
    terms: one :class:`MacTerm` per layer.
    per_mac: rank by score per MAC rather than by score.

  Returns:
    A :class:`MacCost`.

  Example:
    >>> import gsm_optax
    >>> g = [gsm_optax.Groups("h", 4, (gsm_optax.GroupMember("fc2/kernel", 0),))]
    >>> budget = gsm_optax.mac_costs(g, [gsm_optax.MacTerm(8 * 4, ("h",))])
    >>> budget.total
    32.0
  """
  groups = tuple(groups)
  names = [g.name for g in groups]
  if len(set(names)) != len(names):
    raise ValueError(f"mac_costs needs distinct group names; got {names}.")
  terms = tuple(MacTerm(float(t.macs), tuple(t.sets)) for t in terms)
  for t in terms:
    unknown = [s for s in t.sets if s not in names]
    if unknown or not t.macs >= 0:
      raise ValueError(f"mac_costs: {t} names sets {unknown} that are not among the groups"
                       f" {names}, or its macs are not >= 0.")
  return MacCost(tuple(names), tuple(g.size for g in groups), terms, per_mac)


class MacCost(NamedTuple):
  """A budget in multiply-accumulates (see :func:`mac_costs`).

  Attributes:
    names: the names of the groups, in the order of the groups spec.
    sizes: their sizes.
    terms: one :class:`MacTerm` per layer.
    per_mac: whether groups are ranked by score per MAC.

  Example:
    >>> import gsm_optax
    >>> g = [gsm_optax.Groups("h", 4, (gsm_optax.GroupMember("fc2/kernel", 0),))]
    >>> gsm_optax.mac_costs(g, [gsm_optax.MacTerm(8 * 4, ("h",))])
    MacCost(names=('h',), sizes=(4,), terms=(MacTerm(macs=32.0, sets=('h',)),), per_mac=False)
  """

  names: tuple[str, ...]
  sizes: tuple[int, ...]
  terms: tuple[MacTerm, ...]
  per_mac: bool = False

  def unit_costs(self, fractions: dict[str, Any]) -> list[Any]:
    """What one more group of each set adds to the MACs at the kept ``fractions``."""
    costs = []
    for name, size in zip(self.names, self.sizes):
      cost = 0.0
      for t in self.terms:
        if name in t.sets:
          part = t.macs / size
          for other in t.sets:
            if other != name:
              part = part * fractions[other]
          cost = cost + part
      costs.append(cost)
    return costs

  @property
  def total(self) -> float:
    """The MACs at full width."""
    return float(sum(t.macs for t in self.terms))

  def macs(self, kept: dict[str, Any]) -> Any:
    """The MACs when ``kept[name]`` groups of each set are kept (arrays broadcast)."""
    total = 0.0
    for t in self.terms:
      part = t.macs
      for s in t.sets:
        part = part * (kept[s] / self.sizes[self.names.index(s)])
      total = total + part
    return total


GroupSpec = str | Sequence[Groups] | Callable[[PyTree], Sequence[Groups]]
Budget = Any  # "groups", "weights", "cost" or a MacCost


def _selected_kernels(params: PyTree, eligible: eligibility.Eligible) -> list[str]:
  """Paths of the leaves ``eligible`` selects (default: every float array of rank >= 2)."""
  flags = jax.tree_util.tree_leaves(eligibility.resolve_eligible(eligible, params))
  paths = [_utils.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  return [p for p, f in zip(paths, flags) if f]


def output_groups(params: PyTree, *,
                  eligible: eligibility.Eligible = None) -> tuple[Groups, ...]:
  """One group per output unit of each selected kernel: dense neurons and conv filters.

  The groups of a kernel ``[..., in, out]`` (Flax ``Dense`` and ``Conv``) are
  its ``out`` units, on its last axis. The unit's bias (a ``bias`` of shape
  ``[out]`` beside the kernel) joins the group, so that a pruned unit's output
  is exactly zero. A normalisation after the layer cannot be found from the
  parameters alone (``jax.tree_util`` orders dict keys by name, not by call):
  :func:`gsm_optax.couple` reads it from the model's computation, and gives these
  groups with their norms as ``Coupling.groups``. Without tracing the model, these
  groups serve a model that :func:`gsm_optax.couple` cannot follow (a loop such as
  ``lax.scan``). Do not select a model's last layer: its outputs are the logits.

  Args:
    params: the parameters (a dict, Flax ``params`` or an ``nnx.State``).
    eligible: which kernels to group, as for
      :func:`gsm_optax.keep_top_gradients` (default: every floating point
      array of rank >= 2).

  Returns:
    A tuple of :class:`Groups`, one per selected kernel.

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import output_groups
    >>> params = {"fc": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
    >>> output_groups(params)[0].members
    (GroupMember(path='fc/kernel', axis=1, inner=1), GroupMember(path='fc/bias', axis=0, inner=1))
  """
  leaves = {_utils.path_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(params)}
  out = []
  for path in _selected_kernels(params, eligible):
    kernel = leaves[path]
    if jnp.ndim(kernel) < 1:
      raise ValueError(f"output_groups: {path} is a scalar; it has no output units.")
    width = jnp.shape(kernel)[-1]
    members = [GroupMember(path, jnp.ndim(kernel) - 1)]
    parent, _, key = path.rpartition("/")
    bias = f"{parent}/bias" if parent else "bias"
    if key != "bias" and bias in leaves and jnp.shape(leaves[bias]) == (width,):
      members.append(GroupMember(bias, 0))
    out.append(Groups(name=parent or path, size=width, members=tuple(members)))
  return tuple(out)


def input_groups(params: PyTree, *,
                 eligible: eligibility.Eligible = None) -> tuple[Groups, ...]:
  """One group per input feature of each selected kernel: its rows (dense) or input channels.

  The groups of a kernel ``[..., in, out]`` are its ``in`` inputs, on its
  second-to-last axis: the input pixels of a first dense layer, or the units of
  the layer before, whose output is unused once their row is pruned. A dense
  layer's single input features (pixels, positions of a flattened feature map)
  are no channels of :func:`gsm_optax.couple`, whose groups are whole channels:
  ``Coupling.mac_costs(groups)`` budgets these groups in MACs, and
  :func:`gsm_optax.narrow` gathers the features a pruned layer still reads.

  Args:
    params: the parameters.
    eligible: which kernels to group, as for :func:`output_groups`.

  Returns:
    A tuple of :class:`Groups`, one per selected kernel.

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import input_groups
    >>> params = {"fc": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
    >>> [(g.name, g.size, g.members) for g in input_groups(params)]
    [('fc inputs', 4, (GroupMember(path='fc/kernel', axis=0, inner=1),))]
  """
  selected = set(_selected_kernels(params, eligible))
  out = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = _utils.path_name(path)
    if name not in selected:
      continue
    if jnp.ndim(leaf) < 2:
      raise ValueError(f"input_groups: {name} has shape {jnp.shape(leaf)}; it needs rank >= 2.")
    parent = name.rpartition("/")[0]
    out.append(Groups(name=f"{parent or name} inputs", size=jnp.shape(leaf)[-2],
                      members=(GroupMember(name, jnp.ndim(leaf) - 2),)))
  return tuple(out)


class _Placement(NamedTuple):
  group: int  # which Groups, an index into ResolvedGroups.groups
  axis: int
  size: int
  inner: int = 1


class ResolvedGroups(NamedTuple):
  """Groups matched to a params tree: per flattened leaf, its group set and axis, or None."""

  groups: tuple[Groups, ...]
  placements: tuple[_Placement | None, ...]

  @property
  def flags(self) -> list[bool]:
    """Which leaves belong to a group (the prunable ones)."""
    return [p is not None for p in self.placements]

  @property
  def num_groups(self) -> int:
    return sum(g.size for g in self.groups)

  def weights_per_group(self, params_leaves: list[Any]) -> list[int]:
    """How many entries one group of each set holds, over all its members."""
    counts = [0] * len(self.groups)
    for leaf, p in zip(params_leaves, self.placements):
      if p is not None:
        counts[p.group] += int(np.prod(jnp.shape(leaf))) // p.size
    return counts


def resolve_groups(groups: GroupSpec, params: PyTree) -> ResolvedGroups:
  """Matches a group spec to ``params``, checking it thoroughly.

  Args:
    groups: ``"outputs"`` (:func:`output_groups`), ``"inputs"``
      (:func:`input_groups`), a sequence of :class:`Groups`, or a callable
      ``params -> sequence of Groups``.
    params: the parameters.

  Returns:
    A :class:`ResolvedGroups`.

  Raises:
    ValueError: naming the group and the path when a member is not a leaf of
      ``params``, its axis does not exist or its length is not a multiple of
      the group count, a leaf is a member twice, or there are no groups.
  """
  given: Groups | Sequence[Groups]
  if isinstance(groups, str):
    builders = {"outputs": output_groups, "inputs": input_groups}
    if groups not in builders:
      raise ValueError(f"groups must be 'outputs', 'inputs', a sequence of gsm_optax.Groups or a"
                       f" callable params -> Groups; got groups={groups!r}.")
    given = builders[groups](params)
  elif callable(groups):
    given = groups(params)
  else:
    given = groups
  spec = (given,) if isinstance(given, Groups) else tuple(given)
  if not spec or not all(isinstance(g, Groups) for g in spec):
    raise ValueError(f"groups must give a non-empty sequence of gsm_optax.Groups; got {spec!r}.")
  with_path = jax.tree_util.tree_leaves_with_path(params)
  index = {_utils.path_name(p): i for i, (p, _) in enumerate(with_path)}
  shapes = {name: tuple(jnp.shape(with_path[i][1])) for name, i in index.items()}
  placements: list[_Placement | None] = [None] * len(with_path)
  for gi, g in enumerate(spec):
    _utils.check_int(f"groups[{g.name!r}].size", g.size, 1)
    _utils.check_int(f"groups[{g.name!r}].min_kept", g.min_kept, 0, g.size)
    _utils.check_int(f"groups[{g.name!r}].multiple_of", g.multiple_of, 1, g.size)
    if not g.members:
      raise ValueError(f"groups[{g.name!r}] has no members.")
    for m in g.members:
      inner = getattr(m, "inner", 1)
      _utils.check_int(f"groups[{g.name!r}] member {m.path} inner", inner, 1)
      axis = _utils.member_axis(f"groups[{g.name!r}]", m.path, m.axis, g.size * inner, shapes)
      i = index[m.path]
      leaf = with_path[i][1]
      if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
        raise TypeError(f"groups[{g.name!r}]: {m.path} has dtype {jnp.result_type(leaf)}; only"
                        " floating point parameters can be pruned.")
      placed = placements[i]
      if placed is not None:
        other = spec[placed.group].name
        raise ValueError(f"{m.path} is a member of both groups[{other!r}] and groups[{g.name!r}];"
                         " a leaf can belong to one set of groups only.")
      placements[i] = _Placement(gi, axis, g.size, inner)
  return ResolvedGroups(spec, tuple(placements))


def group_scores(resolved: ResolvedGroups, scores: list[Array | None]) -> list[Array]:
  """Each group's score: the sum of its entries' ``scores`` (one array per params leaf).

  Args:
    resolved: from :func:`resolve_groups`.
    scores: per flattened params leaf, its entries' scores (anything for
      leaves outside every group).

  Returns:
    One float array of shape ``[size]`` per :class:`Groups`.
  """
  placed: list[tuple[Array, _Placement]] = []
  for s, p in zip(scores, resolved.placements):
    if p is not None:
      if s is None:
        raise ValueError(f"group_scores: a member of groups[{resolved.groups[p.group].name!r}]"
                         " has no score (None).")
      placed.append((s, p))
  dtype = jnp.float64 if jnp.float64 in [s.dtype for s, _ in placed] else jnp.float32
  totals = [jnp.zeros((g.size,), dtype) for g in resolved.groups]
  for s, p in placed:
    s = jnp.moveaxis(s.astype(dtype), p.axis, 0)
    per_index = jnp.sum(s.reshape(s.shape[0], -1), axis=1)
    totals[p.group] = totals[p.group] + per_index.reshape(-1, p.size, p.inner).sum(axis=(0, 2))
  return totals


def nonzero_groups(resolved: ResolvedGroups, leaves: list[Any]) -> list[Array]:
  """Per set of groups, which groups have a non-zero entry in ``leaves`` (bool ``[size]``)."""
  counts = group_scores(resolved, [None if p is None else (jnp.asarray(x) != 0).astype(jnp.float32)
                                   for x, p in zip(leaves, resolved.placements)])
  return [c > 0 for c in counts]


def expand_group_mask(resolved: ResolvedGroups, group_masks: list[Array],
                      shapes: list[tuple[int, ...]]) -> list[Array | None]:
  """Per params leaf, the entry mask of its groups' mask (None outside every group)."""
  out: list[Array | None] = []
  for shape, p in zip(shapes, resolved.placements):
    if p is None:
      out.append(None)
      continue
    along = jnp.tile(jnp.repeat(group_masks[p.group], p.inner),
                     shape[p.axis] // (p.size * p.inner))
    view = [1] * len(shape)
    view[p.axis] = shape[p.axis]
    out.append(jnp.broadcast_to(along.reshape(view), shape))
  return out


def group_costs(resolved: ResolvedGroups, budget: Budget, leaves: list[Any]) -> list[float]:
  """The cost of one group of each set under ``budget``: 1 for ``"groups"``, its weights for
  ``"weights"``, its ``cost`` for ``"cost"`` (unused for a :class:`MacCost`)."""
  if budget == "weights":
    return [float(c) for c in resolved.weights_per_group(leaves)]
  if budget == "cost":
    missing = [g.name for g in resolved.groups if g.cost is None]
    if missing:
      raise ValueError(f"budget='cost' needs every Groups' cost; {missing} have cost=None.")
    return [float(g.cost) for g in resolved.groups if g.cost is not None]
  if isinstance(budget, MacCost):
    names = tuple(g.name for g in resolved.groups)
    if tuple(sorted(budget.names)) != tuple(sorted(names)):
      raise ValueError(f"the MAC budget is for groups {budget.names}; the groups are {names}.")
  return [1.0] * len(resolved.groups)


def check_group_options(groups: GroupSpec | None, budget: Budget, allocation: str,
                        eligible: eligibility.Eligible = None) -> None:
  """The one check of the group options that every pruning function takes.

  ``budget`` and ``allocation`` are about groups: without ``groups`` they must
  keep their defaults (``"groups"``, ``"global"``), and with ``groups`` the
  groups' members are the prunable parameters, so ``eligible`` must be None.
  """
  if not (isinstance(budget, MacCost) or (isinstance(budget, str) and budget in BUDGETS)):
    raise ValueError(f"budget must be one of {BUDGETS} or a gsm_optax.mac_costs(...); got"
                     f" budget={budget!r}.")
  if allocation not in ALLOCATIONS:
    raise ValueError(f"allocation must be one of {ALLOCATIONS}; got allocation={allocation!r}.")
  if groups is None:
    if budget != "groups":
      raise ValueError(f"budget={budget!r} needs groups: a budget in weights is what keep_ratio"
                       " already is without groups.")
    if allocation != "global":
      raise ValueError(f"allocation={allocation!r} needs groups: without groups there is one"
                       " ranking of all eligible weights.")
  elif eligible is not None:
    raise ValueError("give either groups or eligible: with groups, the groups' members are the"
                     f" prunable parameters; got eligible={eligible!r}.")


def check_group_importance(importance: Any) -> None:
  """Raises unless ``importance`` scores groups: one of :data:`GROUP_IMPORTANCES`, or any
  weights' score (summed over each group)."""
  if not (isinstance(importance, str) and importance in GROUP_IMPORTANCES):
    resolve_importance(importance)


def check_ranked_group_options(groups: GroupSpec | None, budget: Budget, allocation: str,
                               importance: Any) -> None:
  """The options of a stage that ranks groups by ``importance`` (:func:`gsm_optax.keep_top_groups`):
  groups given, the group options (:func:`check_group_options`) and a score of groups
  (:func:`check_group_importance`)."""
  if groups is None:
    raise ValueError("keep_top_groups needs groups; to rank single weights use"
                     " keep_top_gradients.")
  check_group_options(groups, budget, allocation)
  check_group_importance(importance)


def member_mask(groups: GroupSpec, params: PyTree) -> PyTree:
  """A pytree of bools like ``params``: True on every leaf that belongs to a group."""
  flags = resolve_groups(groups, params).flags
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), flags)


def group_norms(resolved: ResolvedGroups, leaves: list[Any]) -> list[Array]:
  """Each group's magnitude, ``"group_rms"``: the root mean square of its ``n`` entries,
  ``||w|| / sqrt(n)``.

  A global ranking compares groups of different sizes (a 300-weight row of a
  first dense layer, a 10-weight row of the last), and plain L2 norms grow with
  the size: ranked by them, LeNet-300-100 loses every input row of its last
  layer first. The RMS is the L2 norm per weight, comparable across sizes, and
  orders the groups of one set as their L2 norms do.
  """
  sizes = resolved.weights_per_group(leaves)
  squares = [None if p is None else jnp.square(magnitude(leaf, None)) / sizes[p.group]
             for leaf, p in zip(leaves, resolved.placements)]
  return [jnp.sqrt(s) for s in group_scores(resolved, squares)]


def group_values(importance: Any, resolved: ResolvedGroups, params: PyTree, grads: PyTree,
                 treedef: Any) -> list[Array]:
  """What is summed over each group before :func:`finish_group_scores`, per importance.

  ``"group_taylor"``: the signed products ``g * w``, so that a group's score is
  ``|sum g * w|``, the first-order change of the loss when the whole group is
  removed (Molchanov et al. 2019); summing ``|g * w|`` instead grows with the
  group's size whatever the group's effect, so a global ranking would favour
  large groups (a 500-weight row over a 10-weight one). ``"group_rms"``: the
  squares ``w**2 / n`` (a group's score is its RMS, see :func:`group_norms`).
  A weights' score (``"taylor"``, ``"magnitude"``, a callable): the weights'
  scores, summed, the string as its function (``"taylor"`` sums ``|g * w|``
  as ``importance=gsm_optax.taylor`` does, ``"magnitude"`` sums ``|w|``).
  """
  param_leaves = treedef.flatten_up_to(params)
  if importance == GROUP_TAYLOR:
    grad_leaves = treedef.flatten_up_to(grads)
    values = [None if p is None else
              w.astype(score_dtype(w, g)) * g.astype(score_dtype(w, g))
              for w, g, p in zip(param_leaves, grad_leaves, resolved.placements)]
  elif importance == GROUP_RMS:
    sizes = resolved.weights_per_group(param_leaves)
    values = [None if p is None else jnp.square(magnitude(w, None)) / sizes[p.group]
              for w, p in zip(param_leaves, resolved.placements)]
  else:
    values = treedef.flatten_up_to(resolve_importance(importance)(params, grads))
  return group_scores(resolved, values)


def finish_group_scores(importance: Any, sums: list[Array]) -> list[Array]:
  """Group scores from the sums of :func:`group_values`: ``|.|``, ``sqrt`` or as they are."""
  if importance == GROUP_TAYLOR:
    return [jnp.abs(s) for s in sums]
  if importance == GROUP_RMS:
    return [jnp.sqrt(s) for s in sums]
  return sums
