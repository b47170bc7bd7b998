"""The selection stage and gsm() inside optax's wrappers and combinators."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gsm_optax
from tests.reference import stable_topk_mask
from tests.trees import mlp_params, normal_like


def _params(rng):
  return mlp_params(rng, 20, 10, 5)  # 250 eligible weights


def _kept(updates, names=("w1", "w2")):
  return sum(int(jnp.sum(updates[n] != 0)) for n in names)


@pytest.mark.parametrize("jit", [False, True])
def test_chain_in_front_of_adam(rng, jit):
  params = _params(rng)
  tx = optax.chain(gsm_optax.keep_top_gradients(0.1), optax.scale_by_adam())
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  grads = normal_like(rng, params)
  updates, state = update(grads, state, params)
  assert _kept(updates) == 25
  # Adam's first moment saw only the kept gradients.
  mu = state[1].mu
  assert _kept(mu) == 25
  chex.assert_trees_all_close(mu["b1"], 0.1 * grads["b1"])


@pytest.mark.parametrize("jit", [False, True])
def test_inject_hyperparams_changes_lr_and_ratio_without_retracing(rng, jit):
  """Each step's updates are -lr * (B * g + eta * w) on the kernels and -lr * g on the bias
  (momentum 0), B the top-Q of |g * w| for that step's ratio and lr (float64 reference)."""
  params = _params(rng)
  eta = 5e-4
  tx = optax.inject_hyperparams(gsm_optax.gsm)(learning_rate=0.1, keep_ratio=0.1, momentum=0.0,
                                               weight_decay=eta)
  state = tx.init(params)
  traces = []

  def update(grads, state, params):
    traces.append(1)
    return tx.update(grads, state, params)

  update = jax.jit(update) if jit else update
  for lr, ratio, q in [(0.1, 0.1, 25), (0.05, 0.5, 125), (0.01, 0.2, 50)]:  # q = ratio * 250
    state.hyperparams["learning_rate"] = jnp.asarray(lr)
    state.hyperparams["keep_ratio"] = jnp.asarray(ratio)
    grads = normal_like(rng, params)
    updates, state = update(grads, state, params)
    g = {k: np.asarray(v, np.float64) for k, v in grads.items()}
    w = {k: np.asarray(v, np.float64) for k, v in params.items()}
    scores = np.concatenate([np.abs(np.asarray(grads[k] * params[k])).ravel()
                             for k in ("w1", "w2")])
    kept = stable_topk_mask(scores, q)
    b = {"w1": kept[:200].reshape(20, 10), "w2": kept[200:].reshape(10, 5)}
    want = {"b1": -lr * g["b1"], **{k: -lr * (b[k] * g[k] + eta * w[k]) for k in ("w1", "w2")}}
    chex.assert_trees_all_close(jax.tree.map(np.asarray, updates), want, rtol=1e-5, atol=1e-7)
    assert int(gsm_optax.selection_stats(state).keep_count) == q
  if jit:
    assert len(traces) == 1


def test_inject_hyperparams_selection_stage(rng):
  params = _params(rng)
  tx = optax.inject_hyperparams(gsm_optax.keep_top_gradients)(keep_ratio=0.2)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for ratio, q in [(0.2, 50), (0.6, 150), (1.0, 250)]:
    state.hyperparams["keep_ratio"] = jnp.asarray(ratio)
    updates, state = update(normal_like(rng, params), state, params)
    assert _kept(updates) == q


def test_multi_steps_accumulates_then_selects(rng):
  params = _params(rng)
  tx = optax.MultiSteps(gsm_optax.gsm(0.1, 0.1, momentum=0.9), every_k_schedule=3)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for i in range(6):
    updates, state = update(normal_like(rng, params), state, params)
    if i % 3 < 2:
      chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
    else:
      assert _kept(updates) == 250  # decay reaches every eligible weight
      params = optax.apply_updates(params, updates)
  assert int(gsm_optax.selection_stats(state).step) == 2


def test_multi_steps_selection_of_the_mean_gradient(rng):
  params = _params(rng)
  tx = optax.MultiSteps(gsm_optax.keep_top_gradients(0.1), every_k_schedule=2)
  state = tx.init(params)
  # Integer gradients: every way of averaging two of them is exact, so the
  # accumulated mean equals (g1 + g2) / 2 bit for bit.
  g1, g2 = (jax.tree.map(lambda p: jnp.asarray(rng.integers(-1000, 1000, p.shape), jnp.float32),
                         params) for _ in range(2))
  _, state = tx.update(g1, state, params)
  updates, state = tx.update(g2, state, params)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  direct, _ = gsm_optax.keep_top_gradients(0.1).update(
      mean, gsm_optax.keep_top_gradients(0.1).init(params), params)
  chex.assert_trees_all_equal(updates, direct)


def test_apply_if_finite_skips_bad_steps(rng):
  params = _params(rng)
  tx = optax.apply_if_finite(gsm_optax.gsm(0.1, 0.1, momentum=0.9), max_consecutive_errors=5)
  state = tx.init(params)
  update = jax.jit(tx.update)
  updates, state = update(normal_like(rng, params), state, params)
  params = optax.apply_updates(params, updates)
  inner_before = state.inner_state
  bad = normal_like(rng, params)
  bad["w1"] = bad["w1"].at[0, 0].set(jnp.nan)
  updates, state = update(bad, state, params)
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
  chex.assert_trees_all_equal(state.inner_state, inner_before)
  assert int(state.notfinite_count) == 1
  updates, state = update(normal_like(rng, params), state, params)
  assert int(gsm_optax.selection_stats(state).step) == 2
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("jit", [False, True])
def test_masked_selects_globally_over_its_leaves(rng, jit):
  params = _params(rng)
  mask = {"w1": True, "b1": False, "w2": False}
  tx = optax.masked(gsm_optax.keep_top_gradients(0.1), mask)
  state = tx.init(params)
  grads = normal_like(rng, params)
  update = jax.jit(tx.update) if jit else tx.update
  updates, _ = update(grads, state, params)
  assert int(jnp.sum(updates["w1"] != 0)) == 20  # 10% of w1 only
  chex.assert_trees_all_equal(updates["w2"], grads["w2"])
  chex.assert_trees_all_equal(updates["b1"], grads["b1"])


@pytest.mark.parametrize("jit", [False, True])
def test_partition_gsm_for_kernels_adam_for_the_rest(rng, jit):
  params = _params(rng)
  labels = {"w1": "prune", "b1": "dense", "w2": "prune"}
  tx = optax.partition({"prune": gsm_optax.gsm(0.1, 0.2, momentum=0.0, weight_decay=0.0),
                        "dense": optax.adam(1e-3)}, labels)
  state = tx.init(params)
  grads = normal_like(rng, params)
  update = jax.jit(tx.update) if jit else tx.update
  updates, state = update(grads, state, params)
  assert _kept(updates) == 50
  np.testing.assert_allclose(updates["b1"], -1e-3 * jnp.sign(grads["b1"]), rtol=1e-3)
