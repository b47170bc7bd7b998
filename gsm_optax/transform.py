"""The GSM selection stages (of weights, of groups) and the full GSM optimizer, as optax
transformations."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import optax

from gsm_optax import _utils, eligibility, group_selection, grouping
from gsm_optax import importance as importance_lib
from gsm_optax.selection import global_topk_selection, keep_count

Array = jax.Array
PyTree = Any
KeepRatio: TypeAlias = float | Array | optax.Schedule
ScalarOrSchedule: TypeAlias = float | Array | optax.Schedule


class KeepTopGradientsState(NamedTuple):
  """State of :func:`keep_top_gradients` and :func:`keep_top_groups`; read it with
  :func:`selection_stats`.

  Attributes:
    count: number of updates made so far (int32, saturating).
    keep_count: number of eligible gradients kept at the last update (int32;
      0 before the first update); for :func:`keep_top_groups`, the number of
      groups kept.
    threshold: the ranking score of the last kept weight at the last update
      (NaN before the first update); with ``allocation="normalized"``, the
      score over its set's root mean square.
    average_scores: the exponential moving average of the importance scores,
      shaped like params (zero for non-eligible leaves), when
      ``importance_ema > 0``; None otherwise. For :func:`keep_top_groups`, a
      tuple of one ``[size]`` array per :class:`gsm_optax.Groups` (the averaged
      sums).
    kept_fractions: with a MAC budget ranked per MAC
      (``gsm_optax.mac_costs(..., per_mac=True)``), the fraction of each set of
      groups kept at the last update (ones before the first); None otherwise.
    held_sets: for :func:`keep_top_groups`, a bool ``[number of sets]`` array: True for
      each set that the budget alone would have left with fewer than its
      ``min_kept`` groups at the last update (a layer it would have emptied),
      and that kept its best ``min_kept`` instead; None for
      :func:`keep_top_gradients`.

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import keep_top_gradients
    >>> keep_top_gradients(0.5).init({"w": jnp.ones((2, 2))}).count
    Array(0, dtype=int32)
  """

  count: Array  # type: ignore[assignment]  # shadows tuple.count, as optax's states do
  keep_count: Array
  threshold: Array
  average_scores: PyTree = None
  kept_fractions: PyTree = None
  held_sets: Array | None = None


class SelectionStats(NamedTuple):
  """What a training loop logs about the selection; see :func:`selection_stats`.

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import gsm, selection_stats
    >>> selection_stats(gsm(0.1, 0.5).init({"w": jnp.ones((2, 2))})).step
    Array(0, dtype=int32)
  """

  step: Array
  keep_count: Array
  threshold: Array
  held_sets: Array


def _check_init_keep_count(keep_ratio: KeepRatio, num_eligible: int,
                           what: str = "eligible weights") -> None:
  ratio = keep_ratio(0) if callable(keep_ratio) else keep_ratio
  name = "keep_ratio(0)" if callable(keep_ratio) else "keep_ratio"
  if isinstance(ratio, jax.core.Tracer):
    return
  _utils.check_keep_ratio(ratio, name)
  if math.floor(float(ratio) * num_eligible) < 1:
    raise ValueError(
        f"{name}={float(ratio)!r} keeps floor({float(ratio)!r} * {num_eligible})"
        f" = 0 of the {num_eligible} {what}; it must keep at least"
        f" one (keep_ratio >= {1 / num_eligible:.3g})."
    )


def _check_stage_options(factory: str, keep_ratio: KeepRatio,
                         passive_weight_decay: ScalarOrSchedule, importance_ema: Any) -> bool:
  """Checks the options both stages share; returns whether scores are averaged."""
  _utils.check_keep_ratio(keep_ratio)
  _utils.check_number("passive_weight_decay", passive_weight_decay,
                      lambda x: 0 <= x < math.inf, "a finite number >= 0 or a schedule",
                      allow_schedule=True)
  _utils.check_number("importance_ema", importance_ema, lambda x: 0 <= x < 1, "in [0, 1)",
                      schedule_hint=_utils.inject_hint(factory, "importance_ema"))
  return isinstance(importance_ema, jax.core.Tracer) or float(importance_ema) > 0


def _check_gsm_options(learning_rate: optax.ScalarOrSchedule, momentum: float,
                       weight_decay: float, importance_ema: float) -> None:
  """Checks the options of :func:`gsm` (its selection stage checks the others)."""
  _utils.check_number("learning_rate", learning_rate, lambda x: x > 0,
                      "a positive float or a schedule", allow_schedule=True)
  _utils.check_number("momentum", momentum, lambda x: 0 <= x < 1, "in [0, 1)",
                      schedule_hint=_utils.inject_hint("gsm", "momentum"))
  _utils.check_number("weight_decay", weight_decay, lambda x: 0 <= x < math.inf,
                      "a finite number >= 0",
                      schedule_hint=_utils.inject_hint("gsm", "weight_decay"))
  _utils.check_number("importance_ema", importance_ema, lambda x: 0 <= x < 1, "in [0, 1)",
                      schedule_hint=_utils.inject_hint("gsm", "importance_ema"))


def _value_at(value: ScalarOrSchedule, count: Array) -> Any:
  return value(count) if callable(value) else value


def _ranking_dtype(leaves: list[Any], flags: list[bool]) -> Any:
  """float64 when a prunable leaf is float64, float32 otherwise: the threshold's dtype."""
  dtypes = [jnp.result_type(p) for p, f in zip(leaves, flags) if f]
  return jnp.float64 if jnp.float64 in dtypes else jnp.float32


def _average(rate: Array, average: Array, scores: Array) -> Array:
  """One step of the moving average ``S <- r * S + (1 - r) * T`` in ``S``'s dtype."""
  return (rate * average + (1 - rate) * scores).astype(average.dtype)


def _averaged_groups(importance_ema: Any, averages: tuple[Array, ...] | None,
                     sums: list[Array]) -> tuple[list[Array], tuple[Array, ...] | None]:
  """The groups' summed scores to rank by, and the state's new averages: ``sums`` averaged into
  ``averages`` where the state keeps them (:func:`_average`), ``sums`` as they are where not."""
  if averages is None:
    return sums, None
  rate = jnp.asarray(importance_ema, jnp.float32)
  averaged = [_average(rate, a, s) for a, s in zip(averages, sums)]
  return averaged, tuple(averaged)


def _initial_state(threshold_dtype: Any, average_scores: PyTree = None,
                   kept_fractions: PyTree = None,
                   held_sets: Array | None = None) -> KeepTopGradientsState:
  return KeepTopGradientsState(
      count=jnp.zeros([], jnp.int32),
      keep_count=jnp.zeros([], jnp.int32),
      threshold=jnp.full([], jnp.nan, threshold_dtype),
      average_scores=average_scores,
      kept_fractions=kept_fractions,
      held_sets=held_sets,
  )


def _keep_or_decay(updates: PyTree, params: PyTree, masks: list[Array | None],
                   passive_weight_decay: ScalarOrSchedule, count: Array) -> PyTree:
  """``B * g + eta_p * (1 - B) * w`` on every leaf with a mask ``B``; other leaves as they are.

  A non-finite gradient is always kept, so that NaN shows in training and
  ``optax.apply_if_finite`` still skips the step. Both selection stages end here.
  """
  treedef: Any  # a PyTreeDef
  leaves, treedef = jax.tree_util.tree_flatten(updates)
  eta_p = _value_at(passive_weight_decay, count)
  off = _utils.is_concrete_number(passive_weight_decay) and float(passive_weight_decay) == 0.0
  out = []
  for g, w, mask in zip(leaves, treedef.flatten_up_to(params), masks):
    if mask is not None:
      passive = jnp.zeros((), g.dtype) if off else (eta_p * w).astype(g.dtype)
      g = jnp.where(mask | ~jnp.isfinite(g), g, passive)
    out.append(g)
  return jax.tree_util.tree_unflatten(treedef, out)


def _next_state(state: KeepTopGradientsState, num_kept: Any, threshold: Array,
                average_scores: PyTree, kept_fractions: PyTree = None,
                held_sets: Array | None = None) -> KeepTopGradientsState:
  return KeepTopGradientsState(
      count=optax.safe_increment(state.count),
      keep_count=jnp.asarray(num_kept, jnp.int32),
      threshold=threshold.astype(state.threshold.dtype),
      average_scores=average_scores,
      kept_fractions=kept_fractions,
      held_sets=held_sets,
  )


def keep_top_gradients(
    keep_ratio: KeepRatio,
    *,
    importance: importance_lib.Importance = "taylor",
    eligible: eligibility.Eligible = None,
    passive_weight_decay: ScalarOrSchedule = 0.0,
    importance_ema: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  """Keeps the gradients of the globally most important weights only.

  Every update scores every eligible weight (by default ``|g * w|``), keeps the
  gradient of the ``Q = floor(keep_ratio * n)`` highest-scoring of the ``n``
  eligible weights of the whole model together, sets every other eligible
  gradient to zero, and passes non-eligible leaves (biases, norms) through
  untouched. This is the selection of Global Sparse Momentum SGD; put it in
  front of any optimizer. Exactly Q gradients survive, ties broken as in
  :func:`gsm_optax.global_topk_mask`. To rank whole neurons or filters
  instead, see :func:`keep_top_groups`.

  Non-finite gradients are never hidden: a NaN score ranks below every other
  score, so it cannot displace a finite weight from the top-Q, and every
  non-finite gradient is passed on unmasked, so that NaN shows up in training
  as it would without this stage and ``optax.apply_if_finite`` still skips the
  step.

  Two options go beyond the paper (both off by default, and then the stage is
  exactly the paper's mask ``B``):

  - ``passive_weight_decay`` (``eta_p``) gives the eligible weights outside
    the top-Q an update of ``eta_p * w`` instead of 0, so the stage returns
    ``B * g + eta_p * (1 - B) * w``. Followed by a weight decay ``eta`` on all
    eligible weights (as in :func:`gsm`), the passive weights then decay at
    ``eta + eta_p`` while the active ones keep ``eta``.
  - ``importance_ema`` (``r``) ranks the weights by an exponential moving
    average of their importance, ``S <- r * S + (1 - r) * T``, instead of the
    current step's ``T`` alone. The minibatch Taylor score of a converged
    weight is mostly noise, so the averaged score keeps the top-Q from
    churning.

  Args:
    keep_ratio: fraction of eligible weights that receive their gradient, in
      (0, 1]; a float, or a schedule ``step -> ratio`` (for example
      :func:`gsm_optax.cubic_keep_ratio_schedule`, dense to Q). Also works as
      an injected hyper-parameter of ``optax.inject_hyperparams``.
    importance: ``"taylor"`` (``|g * w|``, the paper), ``"magnitude"``
      (``|w|``) or a callable ``(params, grads) -> scores`` returning a pytree
      like params; higher scores are kept first.
    eligible: which parameters are prunable: None for every floating point
      array of rank >= 2 (:func:`gsm_optax.default_eligible`), or a pytree of
      bools / a callable ``params -> pytree of bools``, as ``optax.masked``'s
      ``mask``.
    passive_weight_decay: ``eta_p >= 0``, a float or a schedule ``step ->
      eta_p``: the update given to the eligible weights outside the top-Q, per
      unit of their value. 0 (the paper) zeroes their gradient.
    importance_ema: ``r`` in [0, 1): the rate of the moving average of the
      scores used for ranking. 0 (the paper) ranks by the current scores; the
      average is kept in the state (one float32 array per parameter) when the
      rate is not 0 at ``init``, so an injected rate must start non-zero.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`KeepTopGradientsState`; its ``update`` needs ``params``.

  References:
    Ding et al., `Global Sparse Momentum SGD for Pruning Very Deep Neural
    Networks <https://arxiv.org/abs/1909.12778>`_, NeurIPS 2019.

  Example:
    >>> import optax, jax.numpy as jnp
    >>> from gsm_optax import keep_top_gradients
    >>> tx = optax.chain(keep_top_gradients(0.5), optax.adam(1e-3))
    >>> params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.array([[1., 2.], [3., 4.]]), "b": jnp.ones(2)}
    >>> updates, state = tx.update(grads, state, params)
  """
  averaging = _check_stage_options("keep_top_gradients", keep_ratio, passive_weight_decay,
                                   importance_ema)
  score_fn = importance_lib.resolve_importance(importance)

  def init_fn(params):
    if _utils.has_no_leaves(params):  # optax.tree_map_params passes a placeholder
      return _initial_state(jnp.float32, params if averaging else None)
    flags, num_eligible = eligibility.eligible_leaves(eligible, params)
    _check_init_keep_count(keep_ratio, num_eligible)
    average_scores = None
    if averaging:
      average_scores = jax.tree_util.tree_map(
          lambda p: jnp.zeros(jnp.shape(p), importance_lib.score_dtype(p)), params)
    return _initial_state(_ranking_dtype(jax.tree_util.tree_leaves(params), flags),
                          average_scores)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise _utils.missing_params_error("keep_top_gradients", "ranks weights by importance")
    treedef = jax.tree_util.tree_structure(updates)
    param_leaves = _utils.check_params_structure(treedef, params)
    flags, num_eligible = eligibility.eligible_leaves(eligible, params)
    if isinstance(importance, str):  # a built-in score is leaf by leaf: score the eligible only
      eligible_scores = iter(score_fn(
          [p for p, f in zip(param_leaves, flags) if f],
          [g for g, f in zip(jax.tree_util.tree_leaves(updates), flags) if f]))
      scores = [next(eligible_scores) if f else None for f in flags]
    else:
      scores = treedef.flatten_up_to(score_fn(params, updates))
    # Whether averages are kept was settled by init (a concrete 0 keeps none), so that an
    # importance_ema injected by optax.inject_hyperparams (traced here) keeps the state's shape.
    average_scores = state.average_scores
    if average_scores is not None:
      rate = jnp.asarray(importance_ema, jnp.float32)
      scores = [_average(rate, a, s) if f else a
                for a, s, f in zip(treedef.flatten_up_to(average_scores), scores, flags)]
      average_scores = jax.tree_util.tree_unflatten(treedef, scores)
    k = keep_count(_value_at(keep_ratio, state.count), num_eligible)
    selection = global_topk_selection([s for s, f in zip(scores, flags) if f], k)
    kept = iter(selection.mask)
    masks = [next(kept) if f else None for f in flags]
    new_updates = _keep_or_decay(updates, params, masks, passive_weight_decay, state.count)
    return new_updates, _next_state(state, k, selection.threshold, average_scores)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def keep_top_groups(
    keep_ratio: KeepRatio,
    groups: grouping.GroupSpec,
    *,
    budget: grouping.Budget = "groups",
    allocation: str = "global",
    importance: importance_lib.Importance = "group_taylor",
    passive_weight_decay: ScalarOrSchedule = 0.0,
    importance_ema: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  """Keeps the gradients of the globally most important groups of weights only.

  The structured form of :func:`keep_top_gradients`: whole neurons, filters or
  input features (:class:`gsm_optax.Groups`) are ranked together; every entry
  of the global top-Q groups (the unit's bias and following norm included)
  keeps its gradient, every entry of the others gets the passive update
  ``eta_p * w`` (0 by default), and leaves outside every group pass untouched.
  Non-finite gradients are never hidden. Every set keeps at least its
  ``min_kept`` best groups (1 by default), so a budget never empties a layer of
  a chain; where the budget alone would have, the state's ``held_sets`` says
  so (:func:`selection_stats`).

  Args:
    keep_ratio: what fraction of ``budget`` the kept groups may take, in
      (0, 1]; a float or a schedule, as for :func:`keep_top_gradients`.
    groups: the groups to rank: ``"outputs"`` (:func:`gsm_optax.output_groups`:
      output neurons and filters with their biases), ``"inputs"``
      (:func:`gsm_optax.input_groups`), a sequence of :class:`gsm_optax.Groups`
      (``gsm_optax.couple(...).groups``, say) or a callable ``params -> Groups``.
    budget: what ``keep_ratio`` is a fraction of: ``"groups"`` (Q =
      floor(keep_ratio * number of groups), an exact top-Q as for weights),
      ``"weights"`` (groups taken best score first while their weights fit
      ``keep_ratio`` of all grouped weights), ``"cost"`` (the same with each
      :class:`gsm_optax.Groups`' own ``cost``) or :func:`gsm_optax.mac_costs`
      (the same with the model's multiply-accumulates at the widths kept).
    allocation: ``"global"`` (one ranking of all groups), ``"uniform"`` (the
      same fraction of every set, each ranked within itself, as the layer-wise
      baselines of Li et al. 2017) or ``"normalized"`` (one ranking of all
      groups, each set's scores divided by their root mean square, so that no
      layer's scale, from its initialisation or a normalisation after it,
      decides how much of it is kept; after Molchanov et al. 2017).
    importance: a group's score. Two are defined for groups only:
      ``"group_taylor"`` (the default), ``|sum g * w|`` over the group's
      entries, the first-order change of the loss when the group is removed
      (Molchanov et al. 2019), and ``"group_rms"``, ``sqrt(sum w**2 / n)`` over
      the group's ``n`` entries, its L2 norm per weight (the ranking of
      :func:`gsm_optax.prune` with groups; within one set it orders the groups
      as their L2 norms do, across sets of different group sizes it does
      not). A weights' score is summed over each group, a string as its
      function: ``"taylor"`` is ``sum |g * w|`` (as
      ``importance=gsm_optax.taylor``), ``"magnitude"`` is ``sum |w|`` (as
      ``importance=gsm_optax.magnitude``), a callable's scores are summed.
    passive_weight_decay: ``eta_p >= 0``, a float or a schedule, as for
      :func:`keep_top_gradients`, on the entries of the groups outside the top-Q.
    importance_ema: ``r`` in [0, 1), as for :func:`keep_top_gradients`; the
      state then holds one ``[size]`` average of the summed scores per set.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`KeepTopGradientsState`; its ``update`` needs ``params``.

  References:
    Molchanov et al., `Importance Estimation for Neural Network Pruning
    <https://arxiv.org/abs/1906.10771>`_, CVPR 2019.

    Molchanov et al., `Pruning Convolutional Neural Networks for Resource
    Efficient Inference <https://arxiv.org/abs/1611.06440>`_, ICLR 2017.

  Example:
    >>> import optax, jax.numpy as jnp
    >>> from gsm_optax import keep_top_groups
    >>> params = {"fc": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}}
    >>> tx = keep_top_groups(0.5, "outputs")
    >>> grads = {"fc": {"kernel": jnp.arange(12.).reshape(3, 4), "bias": jnp.ones(4)}}
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> updates["fc"]["bias"]
    Array([0., 0., 1., 1.], dtype=float32)
  """
  averaging = _check_stage_options("keep_top_groups", keep_ratio, passive_weight_decay,
                                   importance_ema)
  grouping.check_ranked_group_options(groups, budget, allocation, importance)

  def init_fn(params):
    if _utils.has_no_leaves(params):  # optax.tree_map_params passes a placeholder
      return _initial_state(jnp.float32)
    resolved = grouping.resolve_groups(groups, params)
    leaves = jax.tree_util.tree_leaves(params)
    if budget == "groups":
      _check_init_keep_count(keep_ratio, resolved.num_groups, "groups")
    grouping.group_costs(resolved, budget, leaves)  # checks the budget against the groups
    dtype = _ranking_dtype(leaves, resolved.flags)
    return _initial_state(
        dtype,
        # One running sum per group (before |.| for "group_taylor"; see grouping.group_values).
        average_scores=(tuple(jnp.zeros((g.size,), dtype) for g in resolved.groups)
                        if averaging else None),
        kept_fractions=(tuple(jnp.ones([], jnp.float32) for _ in resolved.groups)
                        if getattr(budget, "per_mac", False) else None),
        held_sets=jnp.zeros([len(resolved.groups)], bool))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise _utils.missing_params_error("keep_top_groups", "ranks groups by importance")
    treedef = jax.tree_util.tree_structure(updates)
    param_leaves = _utils.check_params_structure(treedef, params)
    resolved = grouping.resolve_groups(groups, params)
    sums = grouping.group_values(importance, resolved, params, updates, treedef)
    sums, average_scores = _averaged_groups(importance_ema, state.average_scores, sums)
    costs = grouping.group_costs(resolved, budget, param_leaves)
    scores = grouping.finish_group_scores(importance, sums)
    selection = group_selection.allocate(allocation, resolved, scores,
                                         _value_at(keep_ratio, state.count), budget, costs,
                                         fractions=state.kept_fractions)
    kept_fractions = state.kept_fractions
    if kept_fractions is not None:
      kept_fractions = tuple(jnp.mean(m.astype(jnp.float32)) for m in selection.mask)
    masks = grouping.expand_group_mask(resolved, selection.mask,
                                       [jnp.shape(p) for p in param_leaves])
    new_updates = _keep_or_decay(updates, params, masks, passive_weight_decay, state.count)
    return new_updates, _next_state(state, selection.num_kept, selection.threshold,
                                    average_scores, kept_fractions, selection.held)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def gsm(
    learning_rate: optax.ScalarOrSchedule,
    keep_ratio: KeepRatio,
    *,
    momentum: float = 0.99,
    weight_decay: float = 5e-4,
    nesterov: bool = False,
    importance: importance_lib.Importance | None = None,
    eligible: eligibility.Eligible = None,
    passive_weight_decay: ScalarOrSchedule = 0.0,
    importance_ema: float = 0.0,
    groups: grouping.GroupSpec | None = None,
    budget: grouping.Budget = "groups",
    allocation: str = "global",
) -> optax.GradientTransformationExtraArgs:
  r"""Global Sparse Momentum SGD (Ding et al., NeurIPS 2019).

  Every step the ``Q = floor(keep_ratio * n)`` eligible weights of highest
  importance receive the loss gradient; every eligible weight receives weight
  decay; momentum accumulates both:

  .. math::
    Z \leftarrow \beta Z + \eta W + B \odot \frac{\partial L}{\partial W},
    \qquad W \leftarrow W - \alpha Z

  with ``B = 1`` on the global top-Q and 0 elsewhere, so the other weights
  decay towards zero and a final :func:`gsm_optax.prune` to Q non-zeros needs
  no fine-tuning. Non-eligible parameters (biases, norms) get their full
  gradient and no decay, as in the authors' code. This is exactly
  ``optax.chain(keep_top_gradients(keep_ratio, ...),
  optax.add_decayed_weights(weight_decay, mask=eligible),
  optax.trace(momentum, nesterov=nesterov),
  optax.scale_by_learning_rate(learning_rate))``, with
  :func:`keep_top_groups` in place of :func:`keep_top_gradients` when
  ``groups`` is given.

  With its defaults this is the paper's update. Two options (passed on to
  :func:`keep_top_gradients`) make the final prune free where the paper's
  update leaves weights beyond Q that still matter (the recommended recipe,
  :func:`gsm_optax.recommended_gsm`, sets them): ``passive_weight_decay`` adds a term
  ``eta_p (1 - B) W`` to the update of ``Z``, so only the weights outside the
  top-Q decay harder, and ``importance_ema`` ranks by a moving average of the
  importance. A ``keep_ratio`` schedule such as
  :func:`gsm_optax.cubic_keep_ratio_schedule` goes from dense to Q.

  With ``groups`` this is structured GSM: the ranking, the mask ``B`` and the
  weight decay apply to whole groups (neurons, filters, input features, with
  their biases and norms; see :class:`gsm_optax.Groups`), so that the passive
  groups decay as wholes and ``gsm_optax.prune(..., groups=groups)`` followed
  by :func:`gsm_optax.narrow` gives a narrower dense model. This is the rule
  that Ding et al.'s ResRep applies to channels.

  Args:
    learning_rate: ``alpha``, a float or an optax schedule.
    keep_ratio: fraction of eligible weights to keep, in (0, 1]; a float or a
      schedule. See :func:`keep_top_gradients`.
    momentum: ``beta``, in [0, 1).
    weight_decay: ``eta``, >= 0, applied to eligible weights only.
    nesterov: use Nesterov momentum (the authors' LeNet runs do).
    importance: None for the stage's default (``"taylor"``; with groups,
      ``"group_taylor"``), or a score of :func:`keep_top_gradients` (of
      :func:`keep_top_groups` with groups).
    eligible: which parameters are prunable; see :func:`keep_top_gradients`.
    passive_weight_decay: ``eta_p >= 0``, a float or a schedule: extra decay
      of the eligible weights outside the top-Q at each step, on top of
      ``weight_decay``. 0 is the paper.
    importance_ema: rate in [0, 1) of the moving average of the importance
      used for ranking; 0 (the paper) ranks by the current minibatch's scores.
    groups: rank groups of weights instead of weights; see
      :func:`keep_top_groups`. Their members (biases and norms included)
      receive the weight decay; ``eligible`` must then be None.
    budget: with ``groups``, what ``keep_ratio`` counts: ``"groups"``,
      ``"weights"``, ``"cost"`` or :func:`gsm_optax.mac_costs` (see
      :func:`keep_top_groups`).
    allocation: with ``groups``, ``"global"``, ``"uniform"`` or
      ``"normalized"`` (see :func:`keep_top_groups`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its ``update`` needs
    ``params``.

  References:
    Ding et al., `Global Sparse Momentum SGD for Pruning Very Deep Neural
    Networks <https://arxiv.org/abs/1909.12778>`_, NeurIPS 2019.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from gsm_optax import gsm, prune
    >>> params = {"w": jnp.ones((3, 3)), "b": jnp.zeros(3)}
    >>> tx = gsm(1e-2, keep_ratio=1 / 3, momentum=0.9)
    >>> state = tx.init(params)
    >>> grads = jax.grad(lambda p: jnp.sum((p["w"] @ jnp.arange(3.)) ** 2))(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> pruned = prune(params, 1 / 3)
  """
  _check_gsm_options(learning_rate, momentum, weight_decay, importance_ema)
  grouping.check_group_options(groups, budget, allocation, eligible)
  selection: optax.GradientTransformationExtraArgs
  if groups is None:
    selection = keep_top_gradients(
        keep_ratio, importance="taylor" if importance is None else importance,
        eligible=eligible, passive_weight_decay=passive_weight_decay,
        importance_ema=importance_ema)
    decayed = lambda p: eligibility.resolve_eligible(eligible, p)
  else:
    selection = keep_top_groups(
        keep_ratio, groups, budget=budget, allocation=allocation,
        importance="group_taylor" if importance is None else importance,
        passive_weight_decay=passive_weight_decay, importance_ema=importance_ema)
    decayed = lambda p: grouping.member_mask(groups, p)
  return optax.chain(
      selection,
      optax.add_decayed_weights(weight_decay, mask=decayed),
      optax.trace(decay=momentum, nesterov=nesterov),
      optax.scale_by_learning_rate(learning_rate),
  )


def selection_stats(opt_state: Any) -> SelectionStats:
  """Reads the selection's step, keep count and threshold from any optimizer state.

  Works on the state of :func:`gsm`, :func:`keep_top_gradients`,
  :func:`keep_top_groups`, or any chain,
  ``inject_hyperparams``, ``MultiSteps`` or ``apply_if_finite`` wrapping them;
  the first selection stage found is reported. Jit-friendly.

  Args:
    opt_state: an optax optimizer state.

  Returns:
    A :class:`SelectionStats` of ``step`` (updates made), ``keep_count`` (Q at
    the last update; with groups, the groups kept), ``threshold`` (the
    importance of the last kept weight at the last update) and ``held_sets``
    (with groups, how many sets kept their ``min_kept`` best groups only
    because the budget alone would have emptied them; 0 without groups).

  Raises:
    ValueError: if the state holds no selection stage.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gsm_optax import gsm, selection_stats
    >>> tx = optax.MultiSteps(gsm(1e-2, keep_ratio=0.25), every_k_schedule=1)
    >>> params = {"w": jnp.arange(8.).reshape(2, 4)}
    >>> state = tx.init(params)
    >>> _, state = tx.update(params, state, params)
    >>> stats = selection_stats(state)
    >>> int(stats.step), int(stats.keep_count)
    (1, 2)
  """
  found = [
      s
      for s in jax.tree_util.tree_leaves(
          opt_state, is_leaf=lambda x: isinstance(x, KeepTopGradientsState)
      )
      if isinstance(s, KeepTopGradientsState)
  ]
  if not found:
    raise ValueError(
        "selection_stats found no keep_top_gradients state in opt_state; was"
        " the optimizer built with gsm() or keep_top_gradients()?"
    )
  s = found[0]
  held = (jnp.zeros([], jnp.int32) if s.held_sets is None
          else jnp.sum(s.held_sets, dtype=jnp.int32))
  return SelectionStats(step=s.count, keep_count=s.keep_count, threshold=s.threshold,
                        held_sets=held)
