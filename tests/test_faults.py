"""NaN and inf gradients, with and without optax.apply_if_finite."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

import gsm_optax
from tests.reference import stable_topk_mask


def _params(rng):
  return {"w1": jnp.asarray(rng.standard_normal((20, 15)), jnp.float32),
          "b1": jnp.asarray(rng.standard_normal(15), jnp.float32),
          "w2": jnp.asarray(rng.standard_normal((15, 6)), jnp.float32)}


def _gsm():
  return gsm_optax.gsm(optax.linear_schedule(0.05, 0.01, 10), optax.linear_schedule(0.8, 0.2, 8),
                       momentum=0.9, nesterov=True)


def _poison(grads, leaf, index, value):
  return dict(grads, **{leaf: grads[leaf].at[index].set(value)})


def test_apply_if_finite_skips_bad_steps_and_training_continues_identically(rng):
  params0 = _params(rng)
  clean = [jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params0)
           for _ in range(6)]
  bad = {2: _poison(clean[2], "w1", (3, 4), jnp.nan),
         4: _poison(clean[4], "b1", 7, jnp.inf),
         5: _poison(clean[5], "w2", (0, 0), -jnp.inf)}
  tx = optax.apply_if_finite(_gsm(), max_consecutive_errors=5)
  update = jax.jit(tx.update)

  # Reference: the same optimizer fed only the finite gradients.
  ref_params, ref_state = params0, tx.init(params0)
  for t, g in enumerate(clean):
    if t in bad:
      continue
    updates, ref_state = update(g, ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, updates)

  params, state = params0, tx.init(params0)
  for t, g in enumerate(clean):
    g = bad.get(t, g)
    before_params, before_inner = params, state.inner_state
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    if t in bad:
      # Params and the whole GSM state (selection counter, keep count,
      # threshold, momentum, lr schedule counter) are untouched.
      chex.assert_trees_all_equal(params, before_params)
      chex.assert_trees_all_equal(state.inner_state, before_inner)
      assert not bool(state.last_finite)
  assert int(state.total_notfinite) == 3
  assert int(gsm_optax.selection_stats(state).step) == 3
  # Training went on as if the bad steps had never happened, bit for bit.
  chex.assert_trees_all_equal(params, ref_params)
  chex.assert_trees_all_equal(state.inner_state, ref_state.inner_state)


def test_without_apply_if_finite_non_finite_gradients_pass_and_nan_ranks_last(rng):
  params = _params(rng)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
  nan_at = [(0, 0), (5, 9), (19, 14)]
  bad = grads
  for index in nan_at:
    grads = _poison(grads, "w1", index, 0.0)  # the clean step: 0 there, never selected
    bad = _poison(bad, "w1", index, jnp.nan)
  bad = _poison(bad, "b1", 2, jnp.inf)  # not eligible: passes through anyway
  tx = gsm_optax.keep_top_gradients(0.1)
  state = tx.init(params)
  kept_clean, state_clean = jax.jit(tx.update)(grads, state, params)
  kept, state_bad = jax.jit(tx.update)(bad, state, params)

  # The non-finite gradients reach the next stage unmasked: nothing is hidden.
  for index in nan_at:
    assert np.isnan(kept["w1"][index])
  assert kept["b1"][2] == np.inf
  # NaN scores rank below every other, so the selection among the finite
  # entries is the brute-force top-Q with NaN last: here the clean one.
  scores = np.concatenate([np.abs(np.asarray(bad[k]) * np.asarray(params[k])).ravel()
                           for k in ["w1", "w2"]])
  want = stable_topk_mask(scores, int(0.1 * scores.size))
  finite = np.isfinite(scores)
  got = np.concatenate([np.asarray(kept[k] != 0).ravel() for k in ["w1", "w2"]])
  np.testing.assert_array_equal(got[finite], want[finite])
  # ...which is the clean step's selection: a NaN takes no finite weight's place.
  got_clean = np.concatenate([np.asarray(kept_clean[k] != 0).ravel() for k in ["w1", "w2"]])
  np.testing.assert_array_equal(got[finite], got_clean[finite])
  chex.assert_trees_all_equal(state_bad, state_clean)  # same Q, same threshold


def test_without_apply_if_finite_a_nan_poisons_only_its_own_weight(rng):
  params = _params(rng)
  tx = _gsm()
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
  grads = _poison(grads, "w1", (2, 3), jnp.nan)
  updates, state = jax.jit(tx.update)(grads, state, params)
  params = optax.apply_updates(params, updates)
  nan_w1 = np.isnan(np.asarray(params["w1"]))
  assert nan_w1[2, 3] and nan_w1.sum() == 1
  chex.assert_tree_all_finite({"b1": params["b1"], "w2": params["w2"]})
  assert np.isfinite(float(gsm_optax.selection_stats(state).threshold))
  # The next step still selects Q finite weights; the NaN weight scores NaN, ranks last.
  grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
  _, state = jax.jit(tx.update)(grads, state, params)
  scores = np.concatenate([np.abs(np.asarray(grads[k] * params[k])).ravel() for k in ("w1", "w2")])
  q = int(np.floor(0.725 * scores.size))  # the keep ratio schedule at the second update
  finite = np.sort(scores[np.isfinite(scores)])[::-1]
  stats = gsm_optax.selection_stats(state)
  assert int(stats.keep_count) == q
  assert float(stats.threshold) == finite[q - 1]  # the Q-th largest finite score
