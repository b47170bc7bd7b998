"""The recommended GSM recipe in one call: what to use when the final prune must be free."""

from __future__ import annotations

import math
from typing import Any

import optax

from gsm_optax import _utils, eligibility, grouping
from gsm_optax.schedules import cubic_keep_ratio_schedule
from gsm_optax.transform import gsm

# The recipe the robustness sweep chose (gsm_optax.experiments.config.RECIPES["recommended"]).
PASSIVE_DECAY_FACTOR = 100.0
# With groups, how the budget is split between the group sets: the structured sweep's choice
# (docs/RESULTS.md, "Structured GSM"); prune with the same.
STRUCTURED_ALLOCATION = "uniform"


def recommended_gsm(
    learning_rate: optax.ScalarOrSchedule,
    keep_ratio: float,
    *,
    anneal_steps: int,
    momentum: float = 0.99,
    weight_decay: float = 5e-4,
    nesterov: bool = False,
    eligible: eligibility.Eligible = None,
    groups: grouping.GroupSpec | None = None,
    budget: grouping.Budget = "groups",
) -> optax.GradientTransformationExtraArgs:
  r"""GSM with the recommended recipe, so that the final :func:`gsm_optax.prune` is free.

  The paper's update (:func:`gsm_optax.gsm` with its defaults) ranks weights by
  the minibatch Taylor score ``|g * w|`` and masks to Q from the first step; on
  a short schedule the weights outside the top-Q are then still far from 0 when
  the prune comes, and it costs accuracy. This recipe changes three things:

  - weights are ranked by magnitude ``|w|``, the score the final prune uses;
  - the keep ratio falls from 1 (dense) to ``keep_ratio`` by a cubic
    (:func:`gsm_optax.cubic_keep_ratio_schedule`) over the first
    ``anneal_steps`` steps: give it the step of your learning rate's first drop;
  - the weights outside the top-Q decay 100 times harder than the others
    (``passive_weight_decay = 100 * weight_decay``).

  It is exactly ``gsm(learning_rate, cubic_keep_ratio_schedule(keep_ratio,
  begin_step=0, end_step=anneal_steps), momentum=momentum,
  weight_decay=weight_decay, nesterov=nesterov, importance="magnitude",
  eligible=eligible, passive_weight_decay=100 * weight_decay)``.

  With ``groups`` (structured GSM) the magnitude of a group is the RMS of its
  weights (``importance="group_rms"``), and every set of groups keeps the same
  fraction of its groups, its best by that score (``allocation="uniform"``,
  as structured gradual pruning does): the choice of the structured cells of
  the recipe sweep (ResNet-20, a ViT, LeNet-300-100, LeNet-5), where one
  ranking of all groups gave widths that cost up to 0.5 points, and on LeNet-5
  at a budget of MACs half the accuracy (docs/RESULTS.md). Prune with the
  same ``groups``, ``budget`` and ``allocation=STRUCTURED_ALLOCATION``.

  Learning rates: momentum ``beta`` multiplies the step a steady gradient gives
  by ``1 / (1 - beta)``: 100 at the default 0.99, against 10 at the usual 0.9.
  Coming from SGD with momentum 0.9, start from a tenth of its learning rate.

  Short runs: a weight outside the top-Q shrinks at most by ``sqrt(beta)`` per
  step, so under momentum 0.99 it needs thousands of steps after the anneal to
  vanish (the authors' LeNet schedules have them). With a few hundred, use
  momentum 0.9 and a larger ``weight_decay``, and check the factor with
  :func:`gsm_optax.simulate_decay_shrink`.

  Args:
    learning_rate: ``alpha``, a float or an optax schedule.
    keep_ratio: the final fraction of eligible weights kept, a float in (0, 1];
      the recipe builds the schedule that reaches it.
    anneal_steps: steps over which the keep ratio falls from 1 to
      ``keep_ratio``, >= 1: the step of the learning rate's first drop (the
      sweep's choice; docs/RESULTS.md), or the whole run without drops.
    momentum: ``beta``, in [0, 1).
    weight_decay: ``eta``, >= 0, on eligible weights; the weights outside the
      top-Q get 100 times more on top.
    nesterov: use Nesterov momentum (the authors' LeNet runs do).
    eligible: which parameters are prunable; see
      :func:`gsm_optax.keep_top_gradients`. None with ``groups``.
    groups: rank groups of weights (neurons, filters, heads) instead of
      weights; see :func:`gsm_optax.keep_top_groups`.
    budget: with ``groups``, what ``keep_ratio`` counts: ``"groups"``,
      ``"weights"``, ``"cost"`` or :func:`gsm_optax.mac_costs`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its ``update`` needs
    ``params``.

  References:
    Ding et al., `Global Sparse Momentum SGD for Pruning Very Deep Neural
    Networks <https://arxiv.org/abs/1909.12778>`_, NeurIPS 2019.

    Zhu & Gupta, `To prune, or not to prune: exploring the efficacy of pruning
    for model compression <https://arxiv.org/abs/1710.01878>`_, 2017.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import gsm_optax
    >>> tx = gsm_optax.recommended_gsm(1e-3, keep_ratio=0.1, anneal_steps=300)
    >>> params = {"w": jnp.ones((10, 10)), "b": jnp.zeros(10)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update(params, state, params)
    >>> int(gsm_optax.selection_stats(state).keep_count)  # dense at the first step
    100
  """
  if callable(keep_ratio):
    raise TypeError(
        "recommended_gsm needs keep_ratio as a float in (0, 1], the ratio to end at: it builds"
        " the schedule itself from anneal_steps (for a schedule of your own, use"
        f" gsm(learning_rate, keep_ratio=schedule)); got keep_ratio={keep_ratio!r}.")
  _utils.check_number("keep_ratio", keep_ratio, lambda x: 0 < x <= 1, "a float in (0, 1]")
  _utils.check_int("anneal_steps", anneal_steps, 1, _utils.INT32_MAX)
  _utils.check_number("weight_decay", weight_decay, lambda x: 0 <= x < math.inf,
                      "a finite number >= 0")
  schedule = cubic_keep_ratio_schedule(keep_ratio, begin_step=0, end_step=anneal_steps)
  if groups is None:
    ranking: dict[str, Any] = dict(importance="magnitude", budget=budget)
  else:
    ranking = dict(importance="group_rms", groups=groups, budget=budget,
                   allocation=STRUCTURED_ALLOCATION)
  return gsm(learning_rate, schedule, momentum=momentum, weight_decay=weight_decay,
             nesterov=nesterov, eligible=eligible,
             passive_weight_decay=PASSIVE_DECAY_FACTOR * weight_decay, **ranking)
