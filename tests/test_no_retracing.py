"""Long jitted runs compile the update once and never overflow the step counter."""

import chex
import jax
import jax.numpy as jnp
import optax

import gsm_optax


def _params(rng):
  return {"w1": jnp.asarray(rng.standard_normal((30, 20)), jnp.float32),
          "b1": jnp.asarray(rng.standard_normal(20), jnp.float32),
          "w2": jnp.asarray(rng.standard_normal((20, 5)), jnp.float32)}


def _grads(rng, params):
  return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)


def test_inject_hyperparams_gsm_under_jit(rng):
  """gsm() checks its arguments, but must accept the tracers inject_hyperparams passes."""
  params = _params(rng)
  tx = optax.inject_hyperparams(gsm_optax.gsm)(learning_rate=0.1, keep_ratio=0.5)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(_grads(rng, params), state, params)
  assert int(gsm_optax.selection_stats(state).keep_count) == 350
  chex.assert_tree_all_finite(updates)
