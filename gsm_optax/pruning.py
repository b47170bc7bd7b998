"""The final step of GSM: one global magnitude prune."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from gsm_optax import _utils, eligibility, group_selection, grouping
from gsm_optax.importance import magnitude
from gsm_optax.selection import global_topk_mask, keep_count

PyTree = Any


def _keeps_none(keep_ratio: Any, n: int) -> bool:
  """Whether a concrete ``keep_ratio`` keeps ``floor(keep_ratio * n) = 0`` of
  ``n`` (``keep_count`` clips that to 1; pruning to one weight is refused)."""
  return _utils.is_concrete_number(keep_ratio) and math.floor(float(keep_ratio) * n) < 1


def prune_mask(
    params: PyTree,
    keep_ratio: float,
    *,
    eligible: eligibility.Eligible = None,
    groups: grouping.GroupSpec | None = None,
    budget: grouping.Budget = "groups",
    allocation: str = "global",
) -> PyTree:
  """Which weights :func:`prune` keeps: True for every non-eligible leaf entry.

  Args:
    params: the parameters.
    keep_ratio: fraction of eligible weights (or of groups, or of the groups'
      cost) to keep, in (0, 1].
    eligible: which parameters are prunable (see :func:`keep_top_gradients`).
    groups: prune whole groups, ranked by their RMS (L2 norm per weight,
      ``"group_rms"`` of :func:`gsm_optax.keep_top_groups`).
    budget: with ``groups``: ``"groups"``, ``"weights"``, ``"cost"`` or
      :func:`gsm_optax.mac_costs`.
    allocation: with ``groups``, ``"global"``, ``"uniform"`` (the same
      fraction of every set) or ``"normalized"`` (one ranking of all groups,
      each set's RMS divided by the root mean square of that set's RMS; see
      :func:`gsm_optax.keep_top_groups`).

  Returns:
    A pytree of bool arrays shaped like ``params``. With ``groups``, every set
    keeps at least its ``min_kept`` best groups (see :class:`gsm_optax.Groups`);
    where the budget alone would have kept fewer, a ``UserWarning`` names the
    sets (outside ``jit``; under ``jit``, :func:`gsm_optax.prune_readiness`'s
    ``held_sets`` counts them).

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import prune_mask
    >>> prune_mask({"w": jnp.array([[1., -3.], [2., 0.5]]), "b": jnp.zeros(2)}, 0.5)
    {'b': Array([ True,  True], dtype=bool), 'w': Array([[False,  True],
           [ True, False]], dtype=bool)}
  """
  _utils.check_keep_ratio(keep_ratio, once="prune_mask")
  grouping.check_group_options(groups, budget, allocation, eligible)
  if groups is not None:
    leaves, treedef = jax.tree_util.tree_flatten(params)
    resolved = grouping.resolve_groups(groups, params)
    if budget == "groups" and _keeps_none(keep_ratio, resolved.num_groups):
      raise ValueError(f"keep_ratio={keep_ratio!r} keeps none of the {resolved.num_groups}"
                       " groups.")
    selection, masks = group_selection.magnitude_selection(
        leaves, keep_ratio, resolved=resolved, budget=budget, allocation=allocation)
    group_selection.warn_if_held(selection, resolved, "prune")
    masks = [jnp.ones(jnp.shape(p), bool) if m is None else m for p, m in zip(leaves, masks)]
    return jax.tree_util.tree_unflatten(treedef, masks)
  flags, num_eligible = eligibility.eligible_leaves(eligible, params)
  k = keep_count(keep_ratio, num_eligible)
  if _keeps_none(keep_ratio, num_eligible):
    raise ValueError(
        f"keep_ratio={keep_ratio!r} keeps none of the {num_eligible} eligible weights."
    )
  leaves, treedef = jax.tree_util.tree_flatten(params)
  scores = [s for s, f in zip(magnitude(leaves, None), flags) if f]
  kept = iter(global_topk_mask(scores, k))
  masks = [next(kept) if f else jnp.ones(jnp.shape(p), bool) for p, f in zip(leaves, flags)]
  return jax.tree_util.tree_unflatten(treedef, masks)


def prune(
    params: PyTree,
    keep_ratio: float,
    *,
    eligible: eligibility.Eligible = None,
    groups: grouping.GroupSpec | None = None,
    budget: grouping.Budget = "groups",
    allocation: str = "global",
) -> PyTree:
  """Keeps the Q largest-magnitude eligible weights and zeroes the rest.

  ``Q = floor(keep_ratio * n)`` over the ``n`` eligible weights of all leaves
  together (one global threshold, as in the authors' code); ties are broken as
  in :func:`gsm_optax.global_topk_mask`. Non-eligible leaves are returned
  unchanged, and every leaf keeps its dtype. After GSM training this needs no
  fine-tuning.

  With ``groups`` whole groups are kept or zeroed (every member entry,
  biases included), ranked by their RMS (L2 norm per weight, ``"group_rms"``): after
  structured GSM the result is ready for :func:`gsm_optax.narrow`.

  Args:
    params: the parameters.
    keep_ratio: fraction of eligible weights to keep, in (0, 1] (with
      ``groups``, the fraction of groups, or of their cost; see ``budget``).
    eligible: which parameters are prunable (see :func:`keep_top_gradients`).
    groups: prune whole groups (see :func:`gsm_optax.keep_top_groups`).
    budget: with ``groups``, ``"groups"``, ``"weights"``, ``"cost"`` or
      :func:`gsm_optax.mac_costs` (see :func:`gsm_optax.keep_top_groups`;
      groups are ranked by their RMS, the L2 norm per weight: ``"group_rms"``).
    allocation: with ``groups``, ``"global"``, ``"uniform"`` or
      ``"normalized"`` (see :func:`gsm_optax.keep_top_groups`).

  Returns:
    Parameters with exactly Q non-zero-able eligible entries kept (entries that
    are already 0 stay 0) and every other eligible entry set to 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import prune
    >>> prune({"w": jnp.array([[1., -3.], [2., 0.5]])}, 0.5)
    {'w': Array([[ 0., -3.],
           [ 2.,  0.]], dtype=float32)}
  """
  _utils.check_keep_ratio(keep_ratio, once="prune")
  masks = prune_mask(params, keep_ratio, eligible=eligible, groups=groups, budget=budget,
                     allocation=allocation)
  return jax.tree_util.tree_map(
      lambda p, m: jnp.where(m, p, jnp.zeros((), jnp.result_type(p))), params, masks
  )
