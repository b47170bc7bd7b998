"""The authors' learning-rate schedule, and how far it lets weight decay shrink a weight.

GSM prunes by letting the weights outside the global top-Q decay towards zero:
they get no loss gradient, only weight decay through momentum. Whether they
get small enough before the final :func:`gsm_optax.prune` depends on the whole
learning-rate schedule; :func:`decay_shrink_factor` estimates it in closed form,
:func:`simulate_decay_shrink` computes it exactly, and :func:`shrink_warning`
says when it is too little.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gsm_optax import _utils

_CHUNK = 1 << 16  # steps reduced at a time by simulate_decay_shrink


def warmup_piecewise_schedule(
    peak_value: float,
    *,
    warmup_steps: int,
    boundaries: Sequence[int],
    factor: float = 0.1,
) -> optax.Schedule:
  """Linear warm-up from 0, then a step decay at fixed steps: the authors' schedule.

  ``lr(t) = peak_value * min(1, t / warmup_steps) * factor ** j`` where ``j`` is
  the number of boundaries ``<= t``: the warm-up goes up every step, from 0 at
  step 0 to ``peak_value`` at ``warmup_steps``, and the rate is multiplied by
  ``factor`` at each boundary. Steps are counted from 0, warm-up included.

  Args:
    peak_value: the rate after warm-up, > 0.
    warmup_steps: length of the warm-up, >= 0 (0: none).
    boundaries: the steps at which the rate is multiplied by ``factor``,
      strictly increasing non-negative ints (e.g. ``epoch * steps_per_epoch``).
    factor: the multiplier at each boundary, > 0.

  Returns:
    An ``optax.Schedule``: ``step -> rate`` (float32), for a scalar or an array
    of steps.

  Example:
    >>> from gsm_optax.schedules import warmup_piecewise_schedule
    >>> lr = warmup_piecewise_schedule(0.1, warmup_steps=10, boundaries=[100, 150])
    >>> [round(float(lr(t)), 6) for t in (0, 5, 10, 99, 100, 150)]
    [0.0, 0.05, 0.1, 0.1, 0.01, 0.001]
  """
  _utils.check_number("peak_value", peak_value, lambda x: 0 < x < math.inf, "a finite number > 0")
  _utils.check_number("factor", factor, lambda x: 0 < x < math.inf, "a finite number > 0")
  _utils.check_int("warmup_steps", warmup_steps, 0)
  boundaries = list(boundaries)
  for i, b in enumerate(boundaries):
    _utils.check_int(f"boundaries[{i}]", b, 0)
  if any(b >= c for b, c in zip(boundaries, boundaries[1:])):
    raise ValueError(f"boundaries must be strictly increasing; got boundaries={boundaries!r}.")
  # The step decay is optax's own (it scales at every count >= a boundary). The warm-up ramp is
  # written out: optax.linear_schedule computes 1 - (1 - t / T), which loses bits near t = 0.
  steps = optax.piecewise_constant_schedule(
      float(peak_value), {int(b): float(factor) for b in boundaries})

  def schedule(count):
    rate = jnp.asarray(steps(count), jnp.float32)
    if warmup_steps:
      count = jnp.asarray(count)
      rate = rate * jnp.minimum(count.astype(jnp.float32) / jnp.float32(warmup_steps), 1.0)
    return rate

  return schedule


def cubic_keep_ratio_schedule(
    final_keep_ratio: float,
    *,
    begin_step: int,
    end_step: int,
    initial_keep_ratio: float = 1.0,
) -> optax.Schedule:
  r"""A keep ratio that falls from ``initial_keep_ratio`` to ``final_keep_ratio`` by a cubic.

  .. math::
    r_t = r_f + (r_i - r_f) \left(1 - \mathrm{clip}\left(
      \frac{t - t_b}{t_e - t_b}, 0, 1\right)\right)^3

  Zhu & Gupta's gradual-pruning schedule written as a keep ratio: flat at
  ``r_i`` up to ``begin_step``, steep at first and flat at the end, ``r_f``
  from ``end_step`` on. Give it to :func:`gsm_optax.gsm` or
  :func:`gsm_optax.keep_top_gradients` as ``keep_ratio`` to let GSM go from a
  dense model to Q weights over a schedule rather than in one step.

  Args:
    final_keep_ratio: ``r_f`` in (0, 1], at most ``initial_keep_ratio``.
    begin_step: ``t_b >= 0``.
    end_step: ``t_e > t_b``.
    initial_keep_ratio: ``r_i`` in (0, 1].

  Returns:
    An ``optax.Schedule``, ``step -> ratio`` in float32.

  References:
    Zhu & Gupta, `To prune, or not to prune: exploring the efficacy of pruning
    for model compression <https://arxiv.org/abs/1710.01878>`_, 2017.

  Example:
    >>> from gsm_optax import cubic_keep_ratio_schedule
    >>> ratio = cubic_keep_ratio_schedule(0.1, begin_step=0, end_step=100)
    >>> [round(float(ratio(t)), 4) for t in (0, 50, 100, 200)]
    [1.0, 0.2125, 0.1, 0.1]
  """
  for name, value in (("final_keep_ratio", final_keep_ratio),
                      ("initial_keep_ratio", initial_keep_ratio)):
    _utils.check_number(name, value, lambda x: 0 < x <= 1, "a float in (0, 1]")
  _utils.check_int("begin_step", begin_step, 0)
  _utils.check_int("end_step", end_step, 0)
  if end_step <= begin_step:
    raise ValueError(
        f"end_step must be greater than begin_step; got begin_step={begin_step},"
        f" end_step={end_step}."
    )
  concrete = not any(isinstance(r, jax.core.Tracer) for r in (final_keep_ratio, initial_keep_ratio))
  if concrete and float(final_keep_ratio) > float(initial_keep_ratio):
    raise ValueError(
        "final_keep_ratio must be at most initial_keep_ratio; got"
        f" final_keep_ratio={final_keep_ratio!r}, initial_keep_ratio={initial_keep_ratio!r}."
    )
  span = end_step - begin_step

  def schedule(count):
    done = jnp.clip(jnp.asarray(count) - begin_step, 0, span)
    remaining = (span - done).astype(jnp.float32) / jnp.float32(span)
    final = jnp.asarray(final_keep_ratio, jnp.float32)
    initial = jnp.asarray(initial_keep_ratio, jnp.float32)
    return final + (initial - final) * remaining**3

  return schedule


def _check_decay_args(learning_rate, num_steps, momentum, weight_decay) -> None:
  _utils.check_number("learning_rate", learning_rate, lambda x: 0 < x < math.inf,
                      "a finite number > 0 or a schedule", allow_schedule=True)
  _utils.check_int("num_steps", num_steps, 0)
  _utils.check_number("momentum", momentum, lambda x: 0 <= x < 1, "in [0, 1)")
  _utils.check_number("weight_decay", weight_decay, lambda x: 0 <= x < math.inf,
                      "a finite number >= 0 or a schedule", allow_schedule=True)


def _rates(learning_rate: float | optax.Schedule, num_steps: int) -> np.ndarray:
  """``lr_t`` for ``t = 0 .. num_steps - 1``, float64 (any schedule: a decay's too)."""
  if not callable(learning_rate):
    return np.full(num_steps, float(learning_rate), np.float64)
  if num_steps == 0:
    return np.zeros(0, np.float64)
  # Fixed-size blocks of steps: one shape whatever num_steps, so JAX compiles
  # the schedule's operations once per process, not once per call.
  evaluate = jax.vmap(learning_rate)
  blocks = [
      np.asarray(evaluate(jnp.arange(start, start + _CHUNK, dtype=jnp.int32)), np.float64)
      for start in range(0, num_steps, _CHUNK)
  ]
  return np.concatenate(blocks).reshape(-1)[:num_steps]


def decay_shrink_factor(
    learning_rate: float | optax.Schedule,
    num_steps: int,
    *,
    momentum: float,
    weight_decay: float | optax.Schedule,
    nesterov: bool = False,
) -> float:
  r"""The envelope of a weight with no gradient: how far it has shrunk after a run.

  A weight outside the GSM top-Q gets only weight decay, through momentum:
  ``Z <- m Z + eta W; W <- W - lr_t Z``, a linear recurrence on ``(W, Z)`` whose
  step matrix ``M_t`` has eigenvalues ``lambda_t``. Each step multiplies the
  envelope by the spectral radius ``rho_t = max |lambda_t|``:

  .. math::
    \frac{|W_T|}{|W_0|} \lesssim \prod_{t<T} \rho_t .

  While ``lr_t eta < (1 - sqrt(m))**2`` the weight is over-damped: it decays
  without changing sign, at ``rho_t ~ 1 - lr_t eta / (1 - m)``, so the product
  is close to ``exp(-eta / (1 - m) * sum lr_t)``, the value itself. Above that
  it is under-damped: it oscillates around zero, and its amplitude falls by
  ``rho_t = sqrt(det M_t) = sqrt(m)`` a step whatever the decay (``sqrt(m (1 -
  lr_t eta))`` with Nesterov), so a larger decay does not shrink the envelope
  faster; it brings the weight to zero sooner. :func:`simulate_decay_shrink`
  gives the exact value, which the envelope bounds up to a constant.

  Args:
    learning_rate: a float or an optax schedule (``step -> rate``, traceable).
    num_steps: number of steps ``T``, >= 0.
    momentum: ``m``, in [0, 1).
    weight_decay: ``eta``, >= 0: a float, or a schedule (a passive decay that
      starts part of the way, say).
    nesterov: Nesterov momentum, as ``optax.trace(nesterov=True)``.

  Returns:
    The envelope's factor over the run, a Python float >= 0 (above 1 if the
    schedule is unstable).

  Example:
    >>> from gsm_optax.schedules import decay_shrink_factor
    >>> round(decay_shrink_factor(1e-2, 10_000, momentum=0.99, weight_decay=5e-4), 5)
    0.00511
  """
  _check_decay_args(learning_rate, num_steps, momentum, weight_decay)
  if num_steps == 0:
    return 1.0
  mats = _step_matrices(_rates(learning_rate, num_steps), float(momentum),
                        _rates(weight_decay, num_steps), nesterov)
  trace = mats[:, 0, 0] + mats[:, 1, 1]
  det = mats[:, 0, 0] * mats[:, 1, 1] - mats[:, 0, 1] * mats[:, 1, 0]
  disc = trace * trace - 4.0 * det
  root = np.sqrt(np.maximum(disc, 0.0))
  real = np.maximum(np.abs(trace + root), np.abs(trace - root)) / 2.0
  radius = np.where(disc >= 0, real, np.sqrt(np.maximum(det, 0.0)))
  with np.errstate(divide="ignore"):
    return float(np.exp(math.fsum(np.log(radius))))


def _step_matrices(rates: np.ndarray, m: float, eta: float | np.ndarray,
                   nesterov: bool) -> np.ndarray:
  """One 2x2 matrix per step, acting on the column ``(W, Z)``."""
  mats = np.empty((rates.size, 2, 2), np.float64)
  if nesterov:  # Z' = m Z + eta W;  W' = W - lr (m Z' + eta W)
    mats[:, 0, 0] = 1.0 - rates * eta * (1.0 + m)
    mats[:, 0, 1] = -rates * m * m
  else:  # Z' = m Z + eta W;  W' = W - lr Z'
    mats[:, 0, 0] = 1.0 - rates * eta
    mats[:, 0, 1] = -rates * m
  mats[:, 1, 0] = eta
  mats[:, 1, 1] = m
  return mats


def _product(mats: np.ndarray) -> np.ndarray:
  """``mats[-1] @ ... @ mats[0]`` by a balanced tree of batched products."""
  while len(mats) > 1:
    if len(mats) % 2:
      mats = np.concatenate([mats, np.eye(2)[None]])
    mats = mats[1::2] @ mats[0::2]
  return mats[0] if len(mats) else np.eye(2)


def simulate_decay_shrink(
    learning_rate: float | optax.Schedule,
    num_steps: int,
    *,
    momentum: float,
    weight_decay: float | optax.Schedule,
    nesterov: bool = False,
) -> float:
  """Exact factor by which a weight with no gradient shrinks over a run.

  Runs the linear recurrence of SGD with momentum and weight decay on one
  weight that never gets a loss gradient, from ``W_0 = 1`` and ``Z_0 = 0``, in
  float64: ``Z <- m Z + eta W`` then ``W <- W - lr_t Z`` (Nesterov, as
  ``optax.trace(nesterov=True)`` and PyTorch: ``W <- W - lr_t (m Z + eta W)``
  with the new ``Z``). The steps are composed as 2x2 matrices, multiplied
  pairwise in batches, so a million steps take well under a second.

  Args:
    learning_rate: a float or an optax schedule (``step -> rate``, traceable).
    num_steps: number of steps ``T``, >= 0.
    momentum: ``m``, in [0, 1).
    weight_decay: ``eta``, >= 0: a float or a schedule.
    nesterov: Nesterov momentum.

  Returns:
    ``W_T / W_0``, a Python float (negative if the schedule is so aggressive
    that the weight overshoots zero).

  Example:
    >>> from gsm_optax.schedules import simulate_decay_shrink
    >>> round(simulate_decay_shrink(1e-2, 10_000, momentum=0.99, weight_decay=5e-4), 5)
    0.00541
  """
  _check_decay_args(learning_rate, num_steps, momentum, weight_decay)
  rates = _rates(learning_rate, num_steps)
  m, eta = float(momentum), _rates(weight_decay, num_steps)
  state = np.array([1.0, 0.0])
  for start in range(0, num_steps, _CHUNK):
    chunk = slice(start, start + _CHUNK)
    state = _product(_step_matrices(rates[chunk], m, eta[chunk], nesterov)) @ state
  return float(state[0])


def shrink_warning(factor: float, threshold: float = 1e-3) -> str | None:
  """A warning when weights outside the top-Q do not shrink below ``threshold``.

  Args:
    factor: the shrink factor, from :func:`decay_shrink_factor` or
      :func:`simulate_decay_shrink`.
    threshold: the largest acceptable factor, in (0, 1).

  Returns:
    A human-readable warning if ``|factor| > threshold``, else None.

  Example:
    >>> from gsm_optax.schedules import shrink_warning
    >>> shrink_warning(1e-6) is None
    True
  """
  _utils.check_number("factor", factor, lambda x: math.isfinite(x), "a finite number")
  _utils.check_number("threshold", threshold, lambda x: 0 < x < 1, "in (0, 1)")
  if abs(float(factor)) <= float(threshold):
    return None
  return (
      f"weights outside the top-Q only shrink to {float(factor):.3g} of their size over"
      " this schedule (the threshold is"
      f" {float(threshold):.3g}): the final prune will remove weights that still"
      " matter; train longer or raise weight_decay (a weight shrinks at most by"
      " sqrt(momentum) per step: for a short run, lower the momentum)."
  )
