"""Which groups a budget keeps: the selection of structured GSM, of the prune and of
structured gradual pruning.

Groups are ranked by a score per group (see :mod:`gsm_optax.grouping`); a
selection keeps every set's ``min_kept`` best groups, then the others best score
first while the budget (in groups, weights, costs or multiply-accumulates)
allows, globally or the same fraction of every set.
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
  would not have kept them, :attr:`GroupSelection.held` says so.
  """
  if isinstance(budget, MacCost) and budget.per_mac:
    scores = _per_mac_scores(resolved, scores, budget, fractions)
  reserved = [_best_in_set(s, g.min_kept) for s, g in zip(scores, resolved.groups)]
  first = [jnp.where(r, jnp.asarray(jnp.inf, s.dtype), s) for r, s in zip(reserved, scores)]
  prefix_cost: Callable[[list[Array]], Any]
  cost: Callable[[list[Array]], Any] | list[float]
  if budget == "groups":
    k = keep_count(keep_ratio, resolved.num_groups)
    prefix_cost, allowed = (lambda counts: sum(counts)), jnp.asarray(k, jnp.float32)
    mask = global_topk_selection(first, k).mask
  else:
    if isinstance(budget, MacCost):
      position = {g.name: i for i, g in enumerate(resolved.groups)}
      total = budget.total
      prefix_cost = lambda counts: budget.macs({n: counts[position[n]] for n in budget.names})
      cost = prefix_cost
    else:
      total = sum(c * g.size for c, g in zip(costs, resolved.groups))
      prefix_cost = lambda counts: sum(n * c for n, c in zip(counts, costs))
      cost = costs
    # float32 rounds ratio * total by up to 2**-24 relative: a budget of exactly a third of the
    # cost must still fit the groups that make up that third.
    allowed = (jnp.asarray(keep_ratio, jnp.float32) * jnp.asarray(total, jnp.float32)
               * (1 + jnp.float32(2.0**-20)))
    mask = global_budget_selection(first, cost, allowed).mask
  mask = [m | r for m, r in zip(mask, reserved)]
  held = _held_sets(resolved, scores, prefix_cost, allowed)
  return _group_selection(scores, mask, held)


def allocate(allocation: str, resolved: ResolvedGroups, scores: list[Array], keep_ratio: Any,
             budget: Budget, costs: list[float],
             fractions: Sequence[Array] | None = None) -> GroupSelection:
  """The kept groups under ``allocation``: one ranking of all groups (``"global"``,
  :func:`select_groups`, which takes ``fractions``) or the same fraction of every set
  (``"uniform"``, :func:`uniform_selection`)."""
  if allocation == "uniform":
    return uniform_selection(resolved, scores, keep_ratio, budget, costs)
  return select_groups(resolved, scores, keep_ratio, budget, costs, fractions=fractions)


def _best_in_set(scores: Array, count: int) -> Array:
  """The ``count`` best of one set's scores (NaN last, the earlier first on ties)."""
  if count == 0:
    return jnp.zeros(scores.shape, bool)
  if count == 1:
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
  groups exactly when the prefix that ends at its ``min_kept``-th best fits:
  one comparison of that group with every group, no second selection.
  """
  sizes = [g.size for g in resolved.groups]
  needing = [i for i, g in enumerate(resolved.groups) if g.min_kept > 0]
  held = jnp.zeros(len(sizes), bool)
  if not needing:
    return held
  dtype = jnp.result_type(*scores)
  flat = jnp.concatenate([s.astype(dtype) for s in scores])
  nan = jnp.isnan(flat)
  position = jnp.arange(flat.size)
  offsets = np.cumsum([0] + sizes)
  ends = []  # the global position of each needing set's min_kept-th best group
  for i in needing:
    s = scores[i]
    order = jnp.lexsort((-jnp.where(jnp.isnan(s), 0, s), jnp.isnan(s)))
    ends.append(offsets[i] + order[resolved.groups[i].min_kept - 1])
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
  of the whole cost.
  """
  sizes = np.array([g.size for g in resolved.groups])
  least = np.array([g.min_kept for g in resolved.groups])
  if budget == "groups":
    fraction = jnp.asarray(keep_ratio, jnp.float32)
  else:
    grid = jnp.linspace(0.0, 1.0, 1025)
    counts = jnp.maximum(jnp.floor(grid[:, None] * sizes[None, :] + 1e-6), least)
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
  for s, size, m in zip(scores, sizes, least):
    share = jnp.floor(fraction * size + 1e-6).astype(jnp.int32)
    masks.append(global_topk_selection([s], jnp.maximum(share, m)).mask[0])
    held.append(share < m)
  return _group_selection(scores, masks, jnp.stack(held))
