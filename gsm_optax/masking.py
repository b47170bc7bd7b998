"""Pruning baselines as optax wrappers: a fixed mask, and gradual magnitude pruning.

Both wrap any optimizer ``inner`` and hold the weights outside their mask at
exactly zero: the gradient there is zeroed before ``inner`` sees it, ``inner``
sees those weights as zero, and the returned update is ``-params`` there, so
``optax.apply_updates`` writes an exact 0 whatever ``inner`` computed.

Non-finite values are never hidden, as in :func:`gsm_optax.keep_top_gradients`:
a non-finite gradient is passed to ``inner`` even outside the mask, and a
non-finite update from ``inner`` is returned as is, so NaN shows up in training
as it would without the mask and ``optax.apply_if_finite`` still skips the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from gsm_optax import _utils, eligibility, group_selection, grouping
from gsm_optax.importance import magnitude
from gsm_optax.schedules import cubic_keep_ratio_schedule
from gsm_optax.selection import global_topk_mask, keep_count

Array = jax.Array
PyTree = Any
Mask = PyTree | Callable[[PyTree], PyTree]


class HoldMaskState(NamedTuple):
  """State of :func:`hold_mask`.

  Attributes:
    mask: the mask, with the structure of the params: a bool array for every
      masked leaf and ``optax.MaskedNode()`` for every leaf that is not masked.
    inner_state: the state of the wrapped optimizer.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gsm_optax import hold_mask, prune_mask
    >>> params = {"w": jnp.array([[1., -3.]])}
    >>> hold_mask(optax.sgd(0.1), prune_mask(params, 0.5)).init(params).mask
    {'w': Array([[False,  True]], dtype=bool)}
  """

  mask: PyTree
  inner_state: optax.OptState


class GradualPruningState(NamedTuple):
  """State of :func:`gradual_magnitude_pruning`.

  Attributes:
    count: number of updates made so far (int32, saturating).
    mask: the current mask, with the structure of the params: a bool array
      (True = kept) for every eligible leaf and ``optax.MaskedNode()`` for every
      other leaf. It is a valid ``mask`` for :func:`hold_mask`.
    inner_state: the state of the wrapped optimizer.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gsm_optax import gradual_magnitude_pruning
    >>> tx = gradual_magnitude_pruning(optax.sgd(0.1), 0.5, begin_step=0, end_step=10,
    ...                                update_every=5)
    >>> tx.init({"w": jnp.ones((2, 2))}).count
    Array(0, dtype=int32)
  """

  count: Array  # type: ignore[assignment]  # shadows tuple.count, as optax's states do
  mask: PyTree
  inner_state: optax.OptState


def _is_mask_leaf(x: Any) -> bool:
  return x is None or isinstance(x, optax.MaskedNode)


def _check_inner(inner: Any) -> optax.GradientTransformationExtraArgs:
  if not (callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None))):
    raise TypeError(f"inner must be an optax.GradientTransformation; got inner={inner!r}.")
  return optax.with_extra_args_support(inner)


def _resolve_hold_mask(mask: Mask, params: PyTree) -> list[Array | None]:
  """One entry per params leaf: a bool array shaped like it, or None (not masked)."""
  if callable(mask):
    mask = mask(params)
  mask_def: Any  # a PyTreeDef
  with_path, mask_def = jax.tree_util.tree_flatten_with_path(mask, is_leaf=_is_mask_leaf)
  try:
    subtrees = mask_def.flatten_up_to(params)
  except (ValueError, TypeError) as e:
    raise ValueError(
        "mask must have the structure of params (or a prefix of it); got mask"
        f" structure {mask_def} for params structure"
        f" {jax.tree_util.tree_structure(params)}."
    ) from e
  resolved: list[Array | None] = []
  for (path, m), sub in zip(with_path, subtrees):
    name = f"mask{jax.tree_util.keystr(path)}"
    sub_leaves = jax.tree_util.tree_leaves_with_path(sub)
    if _is_mask_leaf(m) or (isinstance(m, (bool, np.bool_)) and m):
      resolved.extend([None] * len(sub_leaves))
    elif isinstance(m, (bool, np.bool_)):
      resolved.extend(jnp.zeros(jnp.shape(p), bool) for _, p in sub_leaves)
    else:
      shape, dtype = getattr(m, "shape", None), getattr(m, "dtype", None)
      if len(sub_leaves) != 1 or sub_leaves[0][0]:
        raise ValueError(
            f"{name} is an array of shape {shape} where params hold the subtree"
            f" {jax.tree_util.tree_structure(sub)}; an array mask must sit on a"
            " single parameter leaf (use True, False or None for whole subtrees)."
        )
      p = sub_leaves[0][1]
      if dtype is None or np.dtype(dtype) != np.dtype(bool):
        raise TypeError(
            f"mask leaves must be bool arrays, True/False or None; {name} is a"
            f" {type(m).__name__} of dtype {dtype} (its parameter has shape {jnp.shape(p)})."
        )
      if tuple(np.shape(m)) != tuple(jnp.shape(p)):
        raise ValueError(
            f"{name} has shape {tuple(np.shape(m))}, but its parameter has"
            f" shape {tuple(jnp.shape(p))}."
        )
      resolved.append(jnp.asarray(m, bool))
  return resolved


def _zero_outside(x: Array, keep: Array) -> Array:
  return jnp.where(keep, x, jnp.zeros((), jnp.result_type(x)))


def _masked_grad(g: Array, keep: Array) -> Array:
  """The gradient inside the mask; non-finite gradients everywhere."""
  return _zero_outside(g, keep | ~jnp.isfinite(g))


def _held_update(u: Array, p: Array, keep: Array) -> Array:
  """``u`` inside the mask (and wherever it is non-finite), ``-p`` outside it."""
  return jnp.where(keep | ~jnp.isfinite(u), u, -jnp.asarray(p).astype(jnp.result_type(u)))


def hold_mask(
    inner: optax.GradientTransformation, mask: Mask
) -> optax.GradientTransformationExtraArgs:
  """Runs ``inner`` on the weights inside ``mask`` and holds the others at exactly 0.

  The gradient is zeroed outside the mask, ``inner`` sees the parameters with
  zeros outside the mask, and the returned update is ``inner``'s inside the
  mask and ``-params`` outside it, so that ``params + update`` is exactly 0
  there, even where ``params`` were not zero: the first update prunes. The
  weights inside the mask follow exactly the trajectory of ``inner`` on the
  masked problem (``inner`` started from the masked parameters). Use it to
  fine-tune after a one-shot prune, or to retrain a lottery ticket.

  Args:
    inner: the optimizer to wrap, any ``optax.GradientTransformation``.
    mask: True = weight kept. A pytree with the structure of the params (or a
      prefix of it, as ``optax.masked``'s ``mask``) whose leaves are bool
      arrays shaped like their parameter, ``True`` or ``None`` (the whole
      subtree is not masked: ``inner``'s update passes untouched), ``False``
      (the whole subtree is held at 0) or ``optax.MaskedNode()`` (not masked;
      so the ``mask`` of a :class:`GradualPruningState` can be passed on). Or
      a callable ``params -> such a pytree``, called once, in ``init``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`HoldMaskState` (the mask lives in the state, so it is not baked
    into a jitted update as a constant); its ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gsm_optax import prune_mask
    >>> from gsm_optax.masking import hold_mask
    >>> params = {"w": jnp.array([[1., -3.], [2., 0.5]]), "b": jnp.ones(2)}
    >>> tx = hold_mask(optax.sgd(0.1, momentum=0.9), prune_mask(params, 0.5))
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    >>> updates, state = tx.update(grads, state, params)
    >>> optax.apply_updates(params, updates)["w"]
    Array([[ 0. , -3.1],
           [ 1.9,  0. ]], dtype=float32)
  """
  inner = _check_inner(inner)

  def init_fn(params):
    if _utils.has_no_leaves(params):  # optax.tree_map_params: the mask is shaped like params
      return HoldMaskState(mask=params, inner_state=inner.init(params))
    masks = _resolve_hold_mask(mask, params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    masked = [p if m is None else _zero_outside(p, m) for p, m in zip(leaves, masks)]
    state_mask = [optax.MaskedNode() if m is None else m for m in masks]
    return HoldMaskState(
        mask=jax.tree_util.tree_unflatten(treedef, state_mask),
        inner_state=inner.init(jax.tree_util.tree_unflatten(treedef, masked)),
    )

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise _utils.missing_params_error("hold_mask", "returns -params outside the mask")
    grads, treedef = jax.tree_util.tree_flatten(updates)
    param_leaves = _utils.check_params_structure(treedef, params)
    masks = treedef.flatten_up_to(state.mask)
    held = [not isinstance(m, optax.MaskedNode) for m in masks]
    grads = [_masked_grad(g, m) if h else g for g, m, h in zip(grads, masks, held)]
    inner_params = [_zero_outside(p, m) if h else p for p, m, h in zip(param_leaves, masks, held)]
    inner_updates, inner_state = inner.update(
        jax.tree_util.tree_unflatten(treedef, grads),
        state.inner_state,
        jax.tree_util.tree_unflatten(treedef, inner_params),
        **extra_args,
    )
    out = [
        _held_update(u, p, m) if h else u
        for u, p, m, h in zip(treedef.flatten_up_to(inner_updates), param_leaves, masks, held)
    ]
    return jax.tree_util.tree_unflatten(treedef, out), HoldMaskState(state.mask, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def gradual_magnitude_pruning(
    inner: optax.GradientTransformation,
    final_keep_ratio: float,
    *,
    begin_step: int,
    end_step: int,
    update_every: int,
    eligible: eligibility.Eligible = None,
    initial_keep_ratio: float = 1.0,
    groups: grouping.GroupSpec | None = None,
    budget: grouping.Budget = "groups",
    allocation: str = "global",
) -> optax.GradientTransformationExtraArgs:
  r"""Gradual magnitude pruning (Zhu & Gupta 2017) around any optimizer.

  At update ``t`` (counting from 0) the fraction of eligible weights kept is

  .. math::
    r_t = r_f + (r_i - r_f) \left(1 - \mathrm{clip}\left(
      \frac{t - t_b}{t_e - t_b}, 0, 1\right)\right)^3

  (``r_i = initial_keep_ratio``, ``r_f = final_keep_ratio``, ``t_b =
  begin_step``, ``t_e = end_step``). The mask is recomputed at updates ``t_b,
  t_b + update_every, ...`` up to ``t_e``, and at ``t_e`` itself even when it is
  not on that grid, so the final ratio is always reached; between them it is
  held. Before ``t_b`` every weight is kept. At a mask update the
  ``Q = floor(r_t * n)`` (see :func:`gsm_optax.keep_count`) of the ``n``
  eligible weights of largest magnitude after ``inner``'s update are kept, one
  global threshold over all eligible leaves, ties broken as in
  :func:`gsm_optax.global_topk_mask`; weights already pruned rank below every
  kept one, so the mask only shrinks. The others are set to exactly 0 by the
  returned update and stay 0 (as in :func:`hold_mask`: their gradient is zeroed
  before ``inner``). Non-eligible leaves (biases, norms) are never masked. From
  update ``t_e`` on, exactly ``floor(r_f * n)`` eligible weights are kept.

  ``update`` is jit-friendly: the schedule and the mask live in the state, the
  top-Q is computed only at mask updates (under ``lax.cond``), and the state
  keeps its structure and dtypes, so it works in ``lax.scan``, under
  ``optax.apply_if_finite`` and ``optax.MultiSteps``, and compiles once.

  Args:
    inner: the optimizer to wrap, any ``optax.GradientTransformation``.
    final_keep_ratio: ``r_f``, fraction of eligible weights kept at the end, in
      (0, 1] and at most ``initial_keep_ratio``.
    begin_step: ``t_b``, the update at which pruning starts, >= 0.
    end_step: ``t_e``, the update at which the final ratio is reached, >
      ``begin_step``.
    update_every: updates between mask updates (``\Delta t``), >= 1.
    eligible: which parameters are prunable: None for every floating point
      array of rank >= 2, or a pytree of bools / a callable ``params -> pytree
      of bools``, as ``optax.masked``'s ``mask``.
    initial_keep_ratio: ``r_i``, the ratio at ``begin_step``, in (0, 1].
    groups: prune whole groups instead of weights (structured gradual
      pruning): at a mask update the groups are ranked by their RMS (L2 norm
      per weight, ``"group_rms"`` of :func:`gsm_optax.keep_top_groups`; per
      cost for a budget in weights or cost), pruned groups below every kept
      one, and every entry of a pruned group, biases included, is held at 0.
      Every set keeps at least its ``min_kept`` best groups (see
      :class:`gsm_optax.Groups`). See :func:`gsm_optax.keep_top_groups`
      for the spec; ``eligible`` must then be None.
    budget: with ``groups``, what the keep ratios count: ``"groups"``,
      ``"weights"``, ``"cost"`` or :func:`gsm_optax.mac_costs`.
    allocation: with ``groups``, ``"global"`` (one ranking of all groups, as
      for weights), ``"uniform"`` (the same fraction of every set of
      groups, each ranked within itself, as in Li et al. 2017) or
      ``"normalized"`` (one ranking of all groups, each set's RMS divided by
      the root mean square of that set's RMS). Magnitudes of different
      layers are not comparable (plain L2 norms favour large groups,
      per-weight ones the layers initialised with larger weights: either can
      empty a layer of LeNet-300-100), so ``"uniform"`` is the safe baseline.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`GradualPruningState`; its ``update`` needs ``params``.

  References:
    Zhu & Gupta, `To prune, or not to prune: exploring the efficacy of pruning
    for model compression <https://arxiv.org/abs/1710.01878>`_, 2017.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from gsm_optax.masking import gradual_magnitude_pruning
    >>> tx = gradual_magnitude_pruning(
    ...     optax.sgd(0.1, momentum=0.9), 0.1, begin_step=100, end_step=1000,
    ...     update_every=100)
    >>> params = {"w": jnp.ones((4, 4)), "b": jnp.zeros(4)}
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
    >>> updates, state = tx.update(grads, state, params)
  """
  inner = _check_inner(inner)
  for name, value in [("final_keep_ratio", final_keep_ratio),
                      ("initial_keep_ratio", initial_keep_ratio)]:
    if callable(value):
      raise TypeError(
          f"{name} must be a float in (0, 1], not a schedule: gradual_magnitude_pruning builds"
          " its cubic schedule from final_keep_ratio, initial_keep_ratio, begin_step and"
          " end_step. Pass the ratios as floats (to anneal GSM's keep ratio instead, give the"
          f" schedule to gsm(learning_rate, keep_ratio=schedule)); got {name}={value!r}.")
  _utils.check_int("begin_step", begin_step, 0, _utils.INT32_MAX)
  _utils.check_int("end_step", end_step, 0, _utils.INT32_MAX)
  _utils.check_int("update_every", update_every, 1, _utils.INT32_MAX)
  grouping.check_group_options(groups, budget, allocation, eligible)
  keep_ratio_at = cubic_keep_ratio_schedule(
      final_keep_ratio, begin_step=begin_step, end_step=end_step,
      initial_keep_ratio=initial_keep_ratio)

  def is_mask_update(count: Array) -> Array:
    on_grid = ((count - begin_step) % update_every == 0) | (count == end_step)
    return (count >= begin_step) & (count <= end_step) & on_grid

  ranking = (_top_weights(eligible) if groups is None
             else _top_groups(groups, budget, allocation))
  return _gradual_pruning(inner, final_keep_ratio, keep_ratio_at, is_mask_update, ranking)


class _Ranking(NamedTuple):
  """What one kind of gradual pruning ranks, for the params at hand.

  Attributes:
    flags: per params leaf, whether it is masked.
    num_units: the number of units ranked (eligible weights, or groups).
    what: what the units are, for errors (None: no keep count to check, as
      for a budget in weights or cost).
    new_mask: ``(param_leaves, inner_leaves, masks, keep_ratio) -> masks``: the
      mask of every masked leaf, in order, keeping the best units of the
      weights ``apply_updates`` is about to write (those already pruned rank
      below every other); ``masks`` are the state's, one per params leaf.
  """

  flags: list[bool]
  num_units: int
  what: str | None
  new_mask: Callable[[list[Any], list[Any], list[Any], Array], list[Array]]


def _top_weights(eligible: eligibility.Eligible) -> Callable[[PyTree], _Ranking]:
  """Gradual pruning of single weights: one global top-Q of ``|w|`` over the eligible leaves."""

  def ranking(params: PyTree) -> _Ranking:
    flags, num_eligible = eligibility.eligible_leaves(eligible, params)

    def new_mask(param_leaves, inner_leaves, masks, ratio):
      scores = []
      for p, u, m, f in zip(param_leaves, inner_leaves, masks, flags):
        if f:
          p = jnp.asarray(p)
          score = magnitude((p + u).astype(p.dtype), None)  # the weight apply_updates writes
          scores.append(jnp.where(m, score, jnp.asarray(-1, score.dtype)))
      return global_topk_mask(scores, keep_count(ratio, num_eligible))

    return _Ranking(flags, num_eligible, "eligible weights", new_mask)

  return ranking


def _top_groups(groups: grouping.GroupSpec, budget: grouping.Budget,
                allocation: str) -> Callable[[PyTree], _Ranking]:
  """Gradual pruning of whole groups, ranked by their RMS under ``budget`` and ``allocation``."""

  def ranking(params: PyTree) -> _Ranking:
    resolved = grouping.resolve_groups(groups, params)

    def new_mask(param_leaves, inner_leaves, masks, ratio):
      written = [jnp.asarray(p) + u if f else p
                 for p, u, f in zip(param_leaves, inner_leaves, resolved.flags)]
      costs = grouping.group_costs(resolved, budget, param_leaves)
      norms = grouping.group_norms(resolved, written)
      alive = grouping.nonzero_groups(resolved, masks)  # the groups not pruned yet
      scores = [jnp.where(a, n, jnp.asarray(-1, n.dtype)) for n, a in zip(norms, alive)]
      selection = group_selection.allocate(allocation, resolved, scores, ratio, budget, costs)
      expanded = grouping.expand_group_mask(resolved, selection.mask,
                                            [jnp.shape(p) for p in param_leaves])
      return [m for m in expanded if m is not None]

    return _Ranking(resolved.flags, resolved.num_groups,
                    "groups" if budget == "groups" else None, new_mask)

  return ranking


def _gradual_pruning(
    inner: optax.GradientTransformationExtraArgs,
    final_keep_ratio: float,
    keep_ratio_at: optax.Schedule,
    is_mask_update: Callable[[Array], Array],
    ranking: Callable[[PyTree], _Ranking],
) -> optax.GradientTransformationExtraArgs:
  """The schedule and the mask's application, shared by both kinds of gradual pruning."""

  def init_fn(params):
    if _utils.has_no_leaves(params):  # optax.tree_map_params: the mask is shaped like params
      return GradualPruningState(jnp.zeros([], jnp.int32), params, inner.init(params))
    ranked = ranking(params)
    if ranked.what is not None:
      n = ranked.num_units
      _utils.check_number("final_keep_ratio", final_keep_ratio, lambda r: np.floor(r * n) >= 1,
                          f"large enough to keep at least one of the {n} {ranked.what}"
                          f" (>= {1 / n:.3g})")
    leaves, treedef = jax.tree_util.tree_flatten(params)
    mask = [jnp.ones_like(p, dtype=bool) if f else optax.MaskedNode()
            for p, f in zip(leaves, ranked.flags)]
    return GradualPruningState(
        count=jnp.zeros([], jnp.int32),
        mask=jax.tree_util.tree_unflatten(treedef, mask),
        inner_state=inner.init(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise _utils.missing_params_error("gradual_magnitude_pruning", "ranks weights by magnitude")
    grads, treedef = jax.tree_util.tree_flatten(updates)
    param_leaves = _utils.check_params_structure(treedef, params)
    ranked = ranking(params)
    flags = ranked.flags
    masks = treedef.flatten_up_to(state.mask)
    grads = [_masked_grad(g, m) if f else g for g, m, f in zip(grads, masks, flags)]
    inner_params = [_zero_outside(p, m) if f else p
                    for p, m, f in zip(param_leaves, masks, flags)]
    inner_updates, inner_state = inner.update(
        jax.tree_util.tree_unflatten(treedef, grads),
        state.inner_state,
        jax.tree_util.tree_unflatten(treedef, inner_params),
        **extra_args,
    )
    inner_leaves = treedef.flatten_up_to(inner_updates)
    old = [m for m, f in zip(masks, flags) if f]
    new = iter(lax.cond(
        is_mask_update(state.count),
        lambda: ranked.new_mask(param_leaves, inner_leaves, masks, keep_ratio_at(state.count)),
        lambda: old))
    out, state_mask = [], []
    for u, p, f in zip(inner_leaves, param_leaves, flags):
      if f:
        keep = next(new)
        out.append(_held_update(u, p, keep))
        state_mask.append(keep)
      else:
        out.append(u)
        state_mask.append(optax.MaskedNode())
    new_state = GradualPruningState(
        count=optax.safe_increment(state.count),
        mask=jax.tree_util.tree_unflatten(treedef, state_mask),
        inner_state=inner_state,
    )
    return jax.tree_util.tree_unflatten(treedef, out), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
