"""The GSM selection stage and the full GSM optimizer as optax transformations."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gsm_optax import _utils, eligibility
from gsm_optax import importance as importance_lib
from gsm_optax.selection import global_topk_selection

Array = jax.Array
PyTree = Any
KeepRatio = float | Array | optax.Schedule
ScalarOrSchedule = float | Array | optax.Schedule


class KeepTopGradientsState(NamedTuple):
  """State of :func:`keep_top_gradients`; read it with :func:`selection_stats`.

  Attributes:
    count: number of updates made so far (int32, saturating).
    keep_count: number of eligible gradients kept at the last update (int32;
      0 before the first update).
    threshold: the ranking score of the last kept weight at the last update
      (NaN before the first update).
    average_scores: the exponential moving average of the importance scores,
      shaped like params (zero for non-eligible leaves), when
      ``importance_ema > 0``; None otherwise.
  """

  count: Array
  keep_count: Array
  threshold: Array
  average_scores: PyTree = None


class SelectionStats(NamedTuple):
  """What a training loop logs about the selection; see :func:`selection_stats`."""

  step: Array
  keep_count: Array
  threshold: Array


def keep_count(keep_ratio: float | Array, num_eligible: int) -> int | Array:
  """Q = floor(keep_ratio * num_eligible), the number of weights kept.

  A Python float gives a Python int computed in float64, as the authors'
  ``int(keep_ratio * n)``. An array (a schedule's value, or a ratio injected
  with ``optax.inject_hyperparams``) gives a traced int32 computed in float32:
  a product within float32 rounding (2**-20 relative) of an integer is taken
  as that integer, so that a schedule's 0.09999996 for 0.1 (XLA computes
  ``count / T`` as ``count * (1 / T)``) still keeps 10% of the weights. The
  result is clipped to ``[1, num_eligible]``; NaN keeps every weight.

  Args:
    keep_ratio: fraction of eligible weights to keep.
    num_eligible: number of eligible weights.

  Returns:
    The keep count.
  """
  if _utils.is_concrete_number(keep_ratio) and not isinstance(keep_ratio, jax.Array):
    return int(math.floor(float(keep_ratio) * num_eligible))
  product = jnp.asarray(keep_ratio, jnp.float32) * jnp.float32(num_eligible)
  nearest = jnp.round(product)
  k = jnp.where(jnp.abs(product - nearest) <= product * 2.0**-20, nearest, jnp.floor(product))
  k = jnp.where(jnp.isnan(k), num_eligible, k)
  return jnp.clip(k, 1, num_eligible).astype(jnp.int32)


def _check_init_keep_count(keep_ratio: KeepRatio, num_eligible: int) -> None:
  ratio = keep_ratio(0) if callable(keep_ratio) else keep_ratio
  name = "keep_ratio(0)" if callable(keep_ratio) else "keep_ratio"
  if isinstance(ratio, jax.core.Tracer):
    return
  _utils.check_keep_ratio(ratio, name)
  if math.floor(float(ratio) * num_eligible) < 1:
    raise ValueError(
        f"{name}={float(ratio)!r} keeps floor({float(ratio)!r} * {num_eligible})"
        f" = 0 of the {num_eligible} eligible weights; it must keep at least"
        f" one (keep_ratio >= {1 / num_eligible:.3g})."
    )


def _is_zero(value: Any) -> bool:
  """True for a concrete 0 (the option is off), False for anything else."""
  return _utils.is_concrete_number(value) and float(value) == 0.0


def _value_at(value: ScalarOrSchedule, count: Array) -> Any:
  return value(count) if callable(value) else value


def keep_top_gradients(
    keep_ratio: KeepRatio,
    *,
    importance: importance_lib.Importance = "taylor",
    eligible: eligibility.Eligible = None,
    passive_decay: ScalarOrSchedule = 0.0,
    importance_ema: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  """Keeps the gradients of the globally most important weights only.

  Every update scores every eligible weight (by default ``|g * w|``), keeps the
  gradient of the ``Q = floor(keep_ratio * n)`` highest-scoring of the ``n``
  eligible weights of the whole model together, sets every other eligible
  gradient to zero, and passes non-eligible leaves (biases, norms) through
  untouched. This is the selection of Global Sparse Momentum SGD; put it in
  front of any optimizer. Exactly Q gradients survive, ties broken as in
  :func:`gsm_optax.global_topk_mask`.

  Non-finite gradients are never hidden: a NaN score ranks below every other
  score, so it cannot displace a finite weight from the top-Q, and every
  non-finite gradient is passed on unmasked, so that NaN shows up in training
  as it would without this stage and ``optax.apply_if_finite`` still skips the
  step.

  Two options go beyond the paper (both off by default, and then the stage is
  exactly the paper's mask ``B``):

  - ``passive_decay`` (``eta_p``) gives the eligible weights outside the
    top-Q an update of ``eta_p * w`` instead of 0, so the stage returns
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
    eligible: which parameters are prunable: None for every array of rank >= 2,
      or a pytree of bools / a callable ``params -> pytree of bools``, as
      ``optax.masked``'s ``mask``.
    passive_decay: ``eta_p >= 0``, a float or a schedule ``step -> eta_p``:
      the update given to the eligible weights outside the top-Q, per unit of
      their value. 0 (the paper) zeroes their gradient.
    importance_ema: ``r`` in [0, 1): the rate of the moving average of the
      scores used for ranking. 0 (the paper) ranks by the current scores; the
      average is kept in the state (one float32 array per parameter) when the
      rate is not 0 at ``init``, so an injected rate must start non-zero.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its ``update`` needs
    ``params``.

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
  _utils.check_keep_ratio(keep_ratio)
  _utils.check_number("passive_decay", passive_decay, lambda x: 0 <= x < math.inf,
                      "a finite number >= 0 or a schedule", allow_schedule=True)
  _utils.check_number("importance_ema", importance_ema, lambda x: 0 <= x < 1, "in [0, 1)")
  averaging = isinstance(importance_ema, jax.core.Tracer) or float(importance_ema) > 0
  score_fn = importance_lib.resolve_importance(importance)

  def init_fn(params):
    float_dtype = jnp.float32
    if not _utils.has_no_leaves(params):  # optax.tree_map_params passes a placeholder
      flags, num_eligible = eligibility.eligible_leaves(eligible, params)
      _check_init_keep_count(keep_ratio, num_eligible)
      leaves = jax.tree_util.tree_leaves(params)
      dtypes = [jnp.result_type(p) for p, f in zip(leaves, flags) if f]
      float_dtype = jnp.float64 if jnp.float64 in dtypes else jnp.float32
    average_scores = None
    if averaging:
      average_scores = jax.tree_util.tree_map(
          lambda p: jnp.zeros(jnp.shape(p), importance_lib.score_dtype(p)), params)
    return KeepTopGradientsState(
        count=jnp.zeros([], jnp.int32),
        keep_count=jnp.zeros([], jnp.int32),
        threshold=jnp.full([], jnp.nan, float_dtype),
        average_scores=average_scores,
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise _utils.missing_params_error("keep_top_gradients", "ranks weights by importance")
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    param_leaves = _utils.check_params_structure(treedef, params)
    flags, num_eligible = eligibility.eligible_leaves(eligible, params)
    scores = treedef.flatten_up_to(score_fn(params, updates))
    average_scores = state.average_scores
    # Whether averages are kept was settled by init (a concrete 0 keeps none), so that an
    # importance_ema injected by optax.inject_hyperparams (traced here) keeps the state's shape.
    if average_scores is not None:
      rate = jnp.asarray(importance_ema, jnp.float32)
      previous = treedef.flatten_up_to(state.average_scores)
      scores = [
          (rate * a + (1 - rate) * s).astype(a.dtype) if f else a
          for a, s, f in zip(previous, scores, flags)
      ]
      average_scores = jax.tree_util.tree_unflatten(treedef, scores)
    eligible_scores = [s for s, f in zip(scores, flags) if f]

    k = keep_count(_value_at(keep_ratio, state.count), num_eligible)
    selection = global_topk_selection(eligible_scores, k)
    eta_p = _value_at(passive_decay, state.count)

    masks = iter(selection.mask)
    new_leaves = []
    for g, w, f in zip(leaves, param_leaves, flags):
      if f:
        keep = next(masks) | ~jnp.isfinite(g)
        passive = (jnp.zeros((), g.dtype) if _is_zero(passive_decay)
                   else (eta_p * w).astype(g.dtype))
        g = jnp.where(keep, g, passive)
      new_leaves.append(g)
    new_state = KeepTopGradientsState(
        count=optax.safe_increment(state.count),
        keep_count=jnp.asarray(k, jnp.int32),
        threshold=selection.threshold.astype(state.threshold.dtype),
        average_scores=average_scores,
    )
    return jax.tree_util.tree_unflatten(treedef, new_leaves), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def gsm(
    learning_rate: optax.ScalarOrSchedule,
    keep_ratio: KeepRatio,
    *,
    momentum: float = 0.99,
    weight_decay: float = 5e-4,
    nesterov: bool = False,
    importance: importance_lib.Importance = "taylor",
    eligible: eligibility.Eligible = None,
    passive_weight_decay: ScalarOrSchedule = 0.0,
    importance_ema: float = 0.0,
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
  ``optax.chain(keep_top_gradients(keep_ratio, importance=importance,
  eligible=eligible), optax.add_decayed_weights(weight_decay, mask=eligible),
  optax.trace(momentum, nesterov=nesterov),
  optax.scale_by_learning_rate(learning_rate))``.

  With its defaults this is the paper's update. Two options (passed on to
  :func:`keep_top_gradients`) make the final prune free where the paper's
  update leaves weights beyond Q that still matter (see the README's
  recommended recipe): ``passive_weight_decay`` adds a term
  ``eta_p (1 - B) W`` to the update of ``Z``, so only the weights outside the
  top-Q decay harder, and ``importance_ema`` ranks by a moving average of the
  importance. A ``keep_ratio`` schedule such as
  :func:`gsm_optax.cubic_keep_ratio_schedule` goes from dense to Q.

  Args:
    learning_rate: ``alpha``, a float or an optax schedule.
    keep_ratio: fraction of eligible weights to keep, in (0, 1]; a float or a
      schedule. See :func:`keep_top_gradients`.
    momentum: ``beta``, in [0, 1).
    weight_decay: ``eta``, >= 0, applied to eligible weights only.
    nesterov: use Nesterov momentum (the authors' LeNet runs do).
    importance: ``"taylor"``, ``"magnitude"`` or a callable; see
      :func:`keep_top_gradients`.
    eligible: which parameters are prunable; see :func:`keep_top_gradients`.
    passive_weight_decay: ``eta_p >= 0``, a float or a schedule: extra decay
      of the eligible weights outside the top-Q at each step, on top of
      ``weight_decay``. 0 is the paper.
    importance_ema: rate in [0, 1) of the moving average of the importance
      used for ranking; 0 (the paper) ranks by the current minibatch's scores.

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
  _utils.check_number("learning_rate", learning_rate, lambda x: x > 0,
                      "a positive float or a schedule", allow_schedule=True)
  _utils.check_number("momentum", momentum, lambda x: 0 <= x < 1, "in [0, 1)")
  _utils.check_number("weight_decay", weight_decay, lambda x: 0 <= x < math.inf,
                      "a finite number >= 0")
  return optax.chain(
      keep_top_gradients(keep_ratio, importance=importance, eligible=eligible,
                         passive_decay=passive_weight_decay, importance_ema=importance_ema),
      optax.add_decayed_weights(
          weight_decay, mask=lambda p: eligibility.resolve_eligible(eligible, p)
      ),
      optax.trace(decay=momentum, nesterov=nesterov),
      optax.scale_by_learning_rate(learning_rate),
  )


def selection_stats(opt_state: Any) -> SelectionStats:
  """Reads the selection's step, keep count and threshold from any optimizer state.

  Works on the state of :func:`gsm`, :func:`keep_top_gradients`, or any chain,
  ``inject_hyperparams``, ``MultiSteps`` or ``apply_if_finite`` wrapping them;
  the first selection stage found is reported. Jit-friendly.

  Args:
    opt_state: an optax optimizer state.

  Returns:
    A :class:`SelectionStats` of ``step`` (updates made), ``keep_count`` (Q at
    the last update) and ``threshold`` (the importance of the last kept
    weight at the last update).

  Raises:
    ValueError: if the state holds no selection stage.
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
  return SelectionStats(step=s.count, keep_count=s.keep_count, threshold=s.threshold)
