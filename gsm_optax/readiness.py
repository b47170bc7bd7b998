"""How ready a model is for the final prune: measured from any training loop, under jit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gsm_optax import _utils, eligibility, group_selection, grouping
from gsm_optax.importance import magnitude
from gsm_optax.selection import Selection, global_topk_selection, keep_count

Array = jax.Array
PyTree = Any


class PruneReadiness(NamedTuple):
  """What the final prune to Q weights would do to the parameters now.

  Attributes:
    removed_l2_fraction: ``||W - prune(W)|| / ||W||`` over the eligible
      weights: the share of their L2 norm the prune would remove (0 once the
      model is exactly Q-sparse).
    removed_l1_fraction: the same with the L1 norm.
    largest_removed: the largest magnitude the prune would set to 0.
    threshold: the Q-th largest magnitude, the smallest one kept.
    num_carrying: how many weights beyond the Q kept ones still have a
      magnitude above ``tolerance * threshold``: the weights GSM has not yet
      driven towards 0. With ``groups``, ``threshold`` and ``num_carrying``
      are about groups and their RMS magnitudes, and ``largest_removed`` is
      the largest removed entry.
    metric_before: ``eval_fn(params)``; NaN when no ``eval_fn`` was given.
    metric_after: ``eval_fn(prune(params))``; NaN when no ``eval_fn``.
    held_sets: with ``groups``, how many sets the prune keeps at their
      ``min_kept`` best groups only because the budget alone would have left
      them fewer (a layer it would have emptied; see
      :class:`gsm_optax.Groups`); 0 without groups.

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import prune_readiness
    >>> int(prune_readiness({"w": jnp.array([[4., 3.], [0.5, 0.01]])}, 0.5).num_carrying)
    1
  """

  removed_l2_fraction: Array
  removed_l1_fraction: Array
  largest_removed: Array
  threshold: Array
  num_carrying: Array
  metric_before: Array
  metric_after: Array
  held_sets: Array

  @property
  def prune_cost(self) -> Array:
    """``metric_before - metric_after``: what the prune costs (for an accuracy)."""
    return self.metric_before - self.metric_after


def prune_readiness(
    params: PyTree,
    keep_ratio: float | Array,
    *,
    eligible: eligibility.Eligible = None,
    tolerance: float = 0.1,
    eval_fn: Callable[[PyTree], Array] | None = None,
    groups: grouping.GroupSpec | None = None,
    budget: grouping.Budget = "groups",
    allocation: str = "global",
) -> PruneReadiness:
  """Measures how much the final :func:`gsm_optax.prune` to Q weights would change now.

  Call it every few epochs of GSM training to see whether the weights outside
  the top-Q have decayed enough for the prune to be free: the share of the
  weights' norm it would remove, how many weights beyond Q still carry weight,
  and, given an ``eval_fn`` (an accuracy on held-out data, say), the metric
  before and after the prune. Pure and jit-friendly (``eval_fn`` must be too,
  to jit it); ``keep_ratio`` may be traced.

  Args:
    params: the parameters.
    keep_ratio: the final keep ratio, in (0, 1] (Q = floor(keep_ratio * n)).
    eligible: which parameters are prunable (see
      :func:`gsm_optax.keep_top_gradients`).
    tolerance: a weight beyond Q counts in ``num_carrying`` when its magnitude
      exceeds ``tolerance`` times the Q-th largest magnitude; >= 0.
    eval_fn: optional ``params -> scalar``, evaluated on ``params`` and on
      their pruned copy.
    groups: measure the structured prune of :func:`gsm_optax.prune` with
      these groups (see :func:`gsm_optax.keep_top_groups`).
    budget: with ``groups``, ``"groups"``, ``"weights"``, ``"cost"`` or
      :func:`gsm_optax.mac_costs`.
    allocation: with ``groups``, ``"global"``, ``"uniform"`` or
      ``"normalized"``, as for :func:`gsm_optax.prune`.

  Returns:
    A :class:`PruneReadiness`.

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import prune_readiness
    >>> params = {"w": jnp.array([[4., 3.], [0.5, 0.01]])}
    >>> r = prune_readiness(params, 0.5)
    >>> int(r.num_carrying), float(r.largest_removed)
    (1, 0.5)
  """
  _utils.check_keep_ratio(keep_ratio, once="prune_readiness")
  _utils.check_number("tolerance", tolerance, lambda x: x >= 0, "a number >= 0")
  grouping.check_group_options(groups, budget, allocation, eligible)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  selection: Selection | group_selection.GroupSelection
  if groups is None:
    flags, num_eligible = eligibility.eligible_leaves(eligible, params)
    scores = magnitude([w for w, f in zip(leaves, flags) if f], None)
    selection = global_topk_selection(scores, keep_count(keep_ratio, num_eligible))
    kept_masks = selection.mask
    unit_scores, unit_masks = scores, selection.mask
    held = jnp.zeros([], jnp.int32)
  else:
    resolved = grouping.resolve_groups(groups, params)
    flags = resolved.flags
    selection, masks = group_selection.magnitude_selection(
        leaves, keep_ratio, resolved=resolved, budget=budget, allocation=allocation)
    scores = magnitude([w for w, f in zip(leaves, flags) if f], None)
    kept_masks = [m for m in masks if m is not None]
    norms = grouping.group_norms(resolved, leaves)
    unit_masks = selection.mask
    unit_scores = norms
    held = jnp.sum(selection.held, dtype=jnp.int32)
  threshold = selection.threshold
  dtype = threshold.dtype
  zero = jnp.zeros((), dtype)
  l1 = l2 = l1_out = l2_out = largest = zero
  for s, kept in zip(scores, kept_masks):
    removed = jnp.where(kept, zero, s.astype(dtype))
    l1 += jnp.sum(s)
    l2 += jnp.sum(jnp.square(s))
    l1_out += jnp.sum(removed)
    l2_out += jnp.sum(jnp.square(removed))
    largest = jnp.maximum(largest, jnp.max(removed, initial=0))
  carrying = jnp.zeros((), jnp.int32)
  for s, kept in zip(unit_scores, unit_masks):
    removed = jnp.where(kept, zero, s.astype(dtype))
    carrying += jnp.sum(removed > tolerance * threshold, dtype=jnp.int32)
  tiny = jnp.finfo(dtype).tiny
  nan = jnp.full((), jnp.nan, jnp.float32)
  before = after = nan
  if eval_fn is not None:
    masks = iter(kept_masks)
    pruned = [jnp.where(next(masks), w, jnp.zeros((), jnp.result_type(w))) if f else w
              for w, f in zip(leaves, flags)]
    before = jnp.asarray(eval_fn(params))
    after = jnp.asarray(eval_fn(jax.tree_util.tree_unflatten(treedef, pruned)))
  return PruneReadiness(
      removed_l2_fraction=jnp.sqrt(l2_out / jnp.maximum(l2, tiny)),
      removed_l1_fraction=l1_out / jnp.maximum(l1, tiny),
      largest_removed=largest,
      threshold=threshold,
      num_carrying=carrying,
      metric_before=before,
      metric_after=after,
      held_sets=held,
  )
