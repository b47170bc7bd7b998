"""Which groups a budget keeps: the selection of structured GSM, of the prune and of
structured gradual pruning.

Groups are ranked by a score per group (see :mod:`gsm_optax.grouping`); a
selection keeps every set's ``min_kept`` best groups, then the others best score
first while the budget (in groups, weights, costs or multiply-accumulates)
allows: globally (the scores as they are, or each set's over its own scale) or the
same fraction of every set; each set keeps a multiple of its ``multiple_of``
groups (or all of them), and the budget counts those.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gsm_optax import _utils
from gsm_optax.grouping import (
    Budget,
    Groups,
    MacCost,
    ResolvedGroups,
    expand_group_mask,
    group_costs,
    group_norms,
)
from gsm_optax.selection import global_budget_selection, global_topk_selection, keep_count

Array = jax.Array

class GroupSelection(NamedTuple):
  """The groups a selection keeps.

  Attributes:
    mask: per set of groups, a bool ``[size]`` array, True for the groups kept.
    threshold: the lowest ranking score of the groups kept (NaN when none is).
    num_kept: how many groups are kept (int32).
    held: a bool ``[number of sets]`` array, True for each set that the budget
      alone would have left with fewer than its ``min_kept`` groups (a layer it
      would have emptied): such a set keeps its ``min_kept`` best groups,
      taken before any other group, and beyond the budget if it cannot pay
      for them.
  """

  mask: list[Array]
  threshold: Array
  num_kept: Array
  held: Array


def select_groups(resolved: ResolvedGroups, scores: list[Array], keep_ratio: Any,
                  budget: Budget, costs: list[float],
                  fractions: Sequence[Array] | None = None) -> GroupSelection:
  """The kept groups: each set's ``min_kept`` best, then best score first, as many as
  ``budget`` allows.

  For ``"groups"``, the top ``floor(keep_ratio * count)`` groups (an exact
  global top-Q, with :func:`gsm_optax.global_topk_selection`). For a budget
  in weights, costs or MACs, groups cost differently (a filter of LeNet-5's
  first convolution holds 26 weights and costs 14,400 multiply-accumulates, a
  row of its first dense layer holds 500 and costs 500), but they are still
  taken in the order of their scores, and kept while what they cost together
  fits ``keep_ratio`` of the cost of all of them. Every set's ``min_kept``
  best groups (see :class:`Groups`) are taken first; where the budget alone
  would not have kept them, :attr:`GroupSelection.held` says so. A set with
  ``multiple_of`` m keeps its best ``m * floor(c / m)`` of the ``c`` groups
  the ranking reaches (all of them when ``c`` is its size), and the budget is
  counted at those numbers, so the ranking goes on while a partial multiple
  costs nothing.
  """
  if isinstance(budget, MacCost) and budget.per_mac:
    scores = _per_mac_scores(resolved, scores, budget, fractions)
  groups = resolved.groups
  rounding = any(g.multiple_of > 1 for g in groups)
  rounded = lambda counts: [_rounded(c, g) for c, g in zip(counts, groups)]
  reserved = [_best_in_set(s, _reserved_count(g)) for s, g in zip(scores, groups)]
  first = [jnp.where(r, jnp.asarray(jnp.inf, s.dtype), s) for r, s in zip(reserved, scores)]
  prefix_cost: Callable[[list[Array]], Any]
  cost: Callable[[list[Array]], Any] | list[float]
  if budget == "groups":
    k = keep_count(keep_ratio, resolved.num_groups)
    prefix_cost, allowed = (lambda counts: sum(rounded(counts))), jnp.asarray(k, jnp.float32)
    if rounding:
      mask = global_budget_selection(first, prefix_cost, allowed).mask
    else:
      mask = global_topk_selection(first, k).mask
  else:
    if isinstance(budget, MacCost):
      position = {g.name: i for i, g in enumerate(groups)}
      total = budget.total
      def prefix_cost(counts):
        kept = rounded(counts)
        return budget.macs({n: kept[position[n]] for n in budget.names})
      cost = prefix_cost
    else:
      total = sum(c * g.size for c, g in zip(costs, groups))
      prefix_cost = lambda counts: sum(n * c for n, c in zip(rounded(counts), costs))
      cost = prefix_cost if rounding else costs
    # float32 rounds ratio * total by up to 2**-24 relative: a budget of exactly a third of the
    # cost must still fit the groups that make up that third.
    allowed = (jnp.asarray(keep_ratio, jnp.float32) * jnp.asarray(total, jnp.float32)
               * (1 + jnp.float32(2.0**-20)))
    mask = global_budget_selection(first, cost, allowed).mask
  mask = [m | r for m, r in zip(mask, reserved)]
  if rounding:  # each set's best rounded count of what the ranking reached
    mask = [_best_in_set(f, _rounded(jnp.sum(m, dtype=jnp.int32), g)) if g.multiple_of > 1
            else m for f, m, g in zip(first, mask, groups)]
  held = _held_sets(resolved, scores, prefix_cost, allowed)
  return _group_selection(scores, mask, held)


def _rounded(count: Any, group: Groups) -> Any:
  """The number of groups a set keeps when the ranking reaches ``count`` of them: a
  multiple of its ``multiple_of``, or the whole set."""
  m = group.multiple_of
  if m == 1:
    return count
  return jnp.where(count >= group.size, group.size, count // m * m)


def _reserved_count(group: Groups) -> int:
  """The best groups a set keeps whatever the budget: ``min_kept``, rounded up to a
  multiple of ``multiple_of`` (at most the set)."""
  return min(group.size, -(-group.min_kept // group.multiple_of) * group.multiple_of)


def allocate(allocation: str, resolved: ResolvedGroups, scores: list[Array], keep_ratio: Any,
             budget: Budget, costs: list[float],
             fractions: Sequence[Array] | None = None) -> GroupSelection:
  """The kept groups under ``allocation``: one ranking of all groups (``"global"``,
  :func:`select_groups`, which takes ``fractions``), the same fraction of every set
  (``"uniform"``, :func:`uniform_selection`) or one ranking of each set's scores over
  their own root mean square (``"normalized"``, :func:`normalized_scores`)."""
  if allocation == "uniform":
    return uniform_selection(resolved, scores, keep_ratio, budget, costs)
  if allocation == "normalized":
    scores = normalized_scores(scores)
  return select_groups(resolved, scores, keep_ratio, budget, costs, fractions=fractions)


def normalized_scores(scores: list[Array]) -> list[Array]:
  """Each set's scores over their root mean square (NaN scores left out of it).

  A score's scale differs from layer to layer for reasons that say nothing of a
  group's worth: the initialisation's ``1/sqrt(fan_in)``, or a normalisation
  after the layer that makes its output blind to its kernel's scale. Over its
  own RMS every set's scores are on one scale (a set of equal groups scores 1
  everywhere), and one ranking of all groups compares each group with its own
  layer. Molchanov et al. (2017) rescale each layer's scores by their L2 norm
  for the same reason; the RMS does not also penalise large sets. A set whose
  scores are all zero (or NaN) is left as it is.
  """
  normalized = []
  for s in scores:
    finite = jnp.isfinite(s)
    mean_square = (jnp.sum(jnp.where(finite, s * s, 0))
                   / jnp.maximum(jnp.sum(finite), 1).astype(s.dtype))
    rms = jnp.sqrt(mean_square)
    normalized.append(jnp.where(rms > 0, s / jnp.where(rms > 0, rms, 1), s))
  return normalized


def _best_in_set(scores: Array, count: Any) -> Array:
  """The ``count`` best of one set's scores (NaN last, the earlier first on ties);
  ``count`` may be traced."""
  if isinstance(count, int) and count == 0:
    return jnp.zeros(scores.shape, bool)
  if isinstance(count, int) and count == 1:
    return jnp.arange(scores.size) == jnp.argmax(jnp.nan_to_num(scores, nan=-jnp.inf))
  nan = jnp.isnan(scores)
  order = jnp.lexsort((-jnp.where(nan, 0, scores), nan))
  return jnp.argsort(order) < count


def _held_sets(resolved: ResolvedGroups, scores: list[Array], prefix_cost: Any,
               allowed: Array) -> Array:
  """Per set, whether the budget alone (no ``min_kept``) keeps fewer than its ``min_kept``.

  The budget keeps a prefix of the ranking (descending score, NaN last, earlier
  first on ties) whose cost, a non-decreasing function of how many groups of
  each set it holds, fits ``allowed``. So a set keeps its ``min_kept`` best
  groups (``r``: ``min_kept`` rounded up to its ``multiple_of``) exactly when the
  prefix that ends at its ``r``-th best fits: one comparison of that group with
  every group, no second selection.
  """
  sizes = [g.size for g in resolved.groups]
  needing = [i for i, g in enumerate(resolved.groups) if g.min_kept > 0]
  reserve = [_reserved_count(g) for g in resolved.groups]
  held = jnp.zeros(len(sizes), bool)
  if not needing:
    return held
  dtype = jnp.result_type(*scores)
  flat = jnp.concatenate([s.astype(dtype) for s in scores])
  nan = jnp.isnan(flat)
  position = jnp.arange(flat.size)
  offsets = np.cumsum([0] + sizes)
  ends = []  # the global position of each needing set's r-th best group
  for i in needing:
    s = scores[i]
    order = jnp.lexsort((-jnp.where(jnp.isnan(s), 0, s), jnp.isnan(s)))
    ends.append(offsets[i] + order[reserve[i] - 1])
  last = jnp.stack(ends)
  s_r, nan_r, pos_r = flat[last][:, None], nan[last][:, None], last[:, None]
  ahead = ((~nan & nan_r) | (flat > s_r)
           | (((flat == s_r) | (nan & nan_r)) & (position <= pos_r)))  # [needing, all]
  counts = [jnp.sum(ahead[:, a:b], axis=1, dtype=jnp.int32) for a, b in zip(offsets, offsets[1:])]
  fits = jnp.asarray(prefix_cost(counts), jnp.float32) <= allowed
  return held.at[np.array(needing)].set(~fits)


def _group_selection(scores: list[Array], mask: list[Array], held: Array) -> GroupSelection:
  dtype = jnp.result_type(*scores)
  kept = jnp.asarray(sum(jnp.sum(m, dtype=jnp.int32) for m in mask))
  lowest = jnp.min(jnp.stack([jnp.min(jnp.where(m, s.astype(dtype), jnp.inf), initial=jnp.inf)
                              for m, s in zip(mask, scores)]))
  threshold = jnp.where(kept > 0, lowest, jnp.asarray(jnp.nan, dtype))
  return GroupSelection(mask, threshold, kept, held)


def _per_mac_scores(resolved: ResolvedGroups, scores: list[Array], budget: MacCost,
                    fractions: Sequence[Array] | None) -> list[Array]:
  """Score per MAC at the kept ``fractions`` (full width when None)."""
  widths = [1.0] * len(resolved.groups) if fractions is None else fractions
  by_name = {g.name: f for g, f in zip(resolved.groups, widths)}
  unit = dict(zip(budget.names, budget.unit_costs(by_name)))
  return [s / jnp.maximum(jnp.asarray(unit[g.name], s.dtype), 1e-30)
          for g, s in zip(resolved.groups, scores)]


def magnitude_selection(
    leaves: list[Any], keep_ratio: Any, *, resolved: ResolvedGroups, budget: str = "groups",
    allocation: str = "global",
) -> tuple[GroupSelection, list[Array | None]]:
  """The groups :func:`gsm_optax.prune` keeps (by RMS) and, per leaf, their entry mask."""
  costs = group_costs(resolved, budget, leaves)
  selection = allocate(allocation, resolved, group_norms(resolved, leaves), keep_ratio, budget,
                       costs)
  masks = expand_group_mask(resolved, selection.mask, [jnp.shape(x) for x in leaves])
  return selection, masks


def warn_if_held(selection: GroupSelection, resolved: ResolvedGroups, caller: str) -> None:
  """A Python warning naming the sets that ``min_kept`` held, when the selection is concrete
  (outside ``jit``; under ``jit`` the caller's state or report says it)."""
  if isinstance(selection.held, jax.core.Tracer):
    return
  held = [g for g, h in zip(resolved.groups, np.asarray(selection.held)) if h]
  if held:
    names = ", ".join(f"{g.name!r} (min_kept={g.min_kept})" for g in held)
    _utils.warn(f"{caller}: the budget alone would have kept fewer groups than min_kept of"
                f" {names}, which would cut the model's outputs off its inputs; those sets keep"
                " their best min_kept groups instead. Raise keep_ratio, or set min_kept=0"
                " on a set the outputs do not need.")


def uniform_selection(resolved: ResolvedGroups, scores: list[Array], keep_ratio: Any,
                      budget: Budget, costs: list[float]) -> GroupSelection:
  """The same fraction of every set, each set's best groups by score (at least ``min_kept``).

  The allocation of the layer-wise structured baselines (Li et al. 2017): the
  ranking stays within each set, so scores need not be comparable across
  layers. For ``"groups"`` the fraction is ``keep_ratio``; for the other
  budgets it is the largest multiple of 1/1024 whose groups fit ``keep_ratio``
  of the whole cost. A set with ``multiple_of`` keeps its share rounded down
  to a multiple of it (or the whole set), and the cost is counted so.
  """
  groups = resolved.groups
  sizes = np.array([g.size for g in groups])
  least = np.array([g.min_kept for g in groups])
  reserve = np.array([_reserved_count(g) for g in groups])
  if budget == "groups":
    fraction = jnp.asarray(keep_ratio, jnp.float32)
  else:
    grid = jnp.linspace(0.0, 1.0, 1025)
    counts = jnp.stack([_rounded(jnp.floor(grid * size + 1e-6), g)
                        for size, g in zip(sizes, groups)], axis=1)
    counts = jnp.maximum(counts, reserve)
    if isinstance(budget, MacCost):
      position = {g.name: i for i, g in enumerate(resolved.groups)}
      cost = budget.macs({n: counts[:, position[n]] for n in budget.names})
      total = budget.total
    else:
      cost = counts @ jnp.asarray(costs, jnp.float32)
      total = float(np.dot(sizes, costs))
    allowed = jnp.asarray(keep_ratio, jnp.float32) * total * (1 + 2.0**-20)
    fraction = jnp.max(jnp.where(cost <= allowed, grid, 0.0))
  masks, held = [], []
  for s, size, m, r, g in zip(scores, sizes, least, reserve, groups):
    share = _rounded(jnp.floor(fraction * size + 1e-6).astype(jnp.int32), g)
    masks.append(global_topk_selection([s], jnp.maximum(share, r)).mask[0])
    held.append(share < m)
  return _group_selection(scores, masks, jnp.stack(held))
