"""Small random parameter and gradient pytrees, and a trace-counting step, shared by the tests."""

import jax
import jax.numpy as jnp
import optax


def mlp_params(rng, inputs, hidden, outputs):
  """Two kernels (eligible) and a bias (not), float32."""
  return {"w1": jnp.asarray(rng.standard_normal((inputs, hidden)), jnp.float32),
          "b1": jnp.asarray(rng.standard_normal(hidden), jnp.float32),
          "w2": jnp.asarray(rng.standard_normal((hidden, outputs)), jnp.float32)}


def normal_like(rng, params):
  """Standard normal values shaped and typed like ``params``."""
  return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)


def counting_step(tx, traces):
  """A jitted train step that appends to ``traces`` each time it is traced."""

  @jax.jit
  def step(params, state, grads):
    traces.append(1)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step
