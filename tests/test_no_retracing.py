"""Long jitted runs compile the update once and never overflow the step counter."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

import gsm_optax
from tests.reference import traced_keep_count
from tests.trees import counting_step, mlp_params, normal_like


def _params(rng):
  return mlp_params(rng, 30, 20, 5)  # 700 eligible weights


def test_inject_hyperparams_gsm_under_jit(rng):
  """gsm() checks its arguments, but must accept the tracers inject_hyperparams passes."""
  params = _params(rng)
  tx = optax.inject_hyperparams(gsm_optax.gsm)(learning_rate=0.1, keep_ratio=0.5)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(normal_like(rng, params), state, params)
  assert int(gsm_optax.selection_stats(state).keep_count) == 350
  chex.assert_tree_all_finite(updates)


def test_200_steps_with_keep_ratio_and_lr_schedules_compile_once(rng):
  params = _params(rng)
  tx = gsm_optax.gsm(optax.warmup_cosine_decay_schedule(0.0, 0.1, 20, 200),
                     optax.linear_schedule(1.0, 0.05, 150), momentum=0.9, nesterov=True)
  traces = []
  step = counting_step(tx, traces)

  state = tx.init(params)
  kept = []
  for _ in range(200):
    params, state = step(params, state, normal_like(rng, params))
    kept.append(int(gsm_optax.selection_stats(state).keep_count))
  assert len(traces) == 1
  assert step._cache_size() == 1
  assert int(gsm_optax.selection_stats(state).step) == 200
  # The schedule ran to its end, 0.05 * 700 = 35. (Under jit XLA turns optax's
  # count / 150 into count * (1 / 150) and the ratio lands just below 0.05;
  # keep_count forgives that float32 rounding.)
  assert kept[0] == 700 and kept[-1] == 35 and len(set(kept)) > 100


def test_inject_hyperparams_changing_lr_and_keep_ratio_compile_once(rng):
  params = _params(rng)
  tx = optax.inject_hyperparams(gsm_optax.gsm)(learning_rate=0.1, keep_ratio=1.0, momentum=0.9)
  traces = []
  step = counting_step(tx, traces)

  state = tx.init(params)
  for t in range(200):
    ratio, lr = 1.0 - 0.9 * t / 199, 0.1 / (1 + t)
    hp = dict(state.hyperparams)
    hp["keep_ratio"] = jnp.asarray(ratio, hp["keep_ratio"].dtype)
    hp["learning_rate"] = jnp.asarray(lr, hp["learning_rate"].dtype)
    state = state._replace(hyperparams=hp)
    params, state = step(params, state, normal_like(rng, params))
    q = int(gsm_optax.selection_stats(state).keep_count)
    assert q == traced_keep_count(ratio, 700), t
  assert len(traces) == 1
  assert step._cache_size() == 1


def test_step_counters_saturate_at_int32_max(rng):
  params = _params(rng)
  tx = gsm_optax.gsm(optax.linear_schedule(0.1, 0.01, 1000), optax.linear_schedule(1.0, 0.1, 1000))
  top = np.iinfo(np.int32).max
  selection, masked, trace, lr_state = tx.init(params)
  state = (selection._replace(count=jnp.int32(top - 2)), masked, trace,
           lr_state._replace(count=jnp.int32(top - 2)))
  update = jax.jit(tx.update)
  counts = []
  for _ in range(5):
    updates, state = update(normal_like(rng, params), state, params)
    chex.assert_tree_all_finite(updates)
    counts.append((int(state[0].count), int(state[3].count)))
  # top - 1, top, then it stays at top: never wraps to a negative step.
  assert counts == [(top - 1, top - 1)] + [(top, top)] * 4
  # The schedule's end value, 0.1 * 700 (69 under jit, see above), not step 0's 700.
  assert int(gsm_optax.selection_stats(state).keep_count) in (69, 70)
