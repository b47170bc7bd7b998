"""Small random parameter and gradient pytrees, a trace-counting step, and a run of an optimizer
beside a float64 reference, shared by the tests."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gsm_optax


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


def assert_follows(tx, params, grad_fn, reference, steps):
  """Runs ``tx`` jitted from ``params`` for ``steps`` steps beside a float64 reference.

  ``grad_fn(t, params)`` gives step ``t``'s gradients, shaped like ``params``; ``reference``
  yields, step by step, the parameters' leaves and the selection's mask. Every step the
  reference yields is checked: the leaves to float32 accuracy, and the optimizer's keep count
  to the mask's. A reference may end early (``gsm_reference``'s ``tie_rtol``); the steps after
  it run unchecked. Returns the last state and the masks checked.
  """
  state = tx.init(params)
  update = jax.jit(tx.update)
  reference = iter(reference)
  masks = []
  for t in range(steps):
    updates, state = update(grad_fn(t, params), state, params)
    params = optax.apply_updates(params, updates)
    w_ref, mask_ref = next(reference, (None, None))
    if w_ref is None:
      continue
    for got, want in zip(jax.tree.leaves(params), w_ref):
      np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=f"step {t}")
    assert int(gsm_optax.selection_stats(state).keep_count) == int(mask_ref.sum())
    masks.append(mask_ref)
  return state, masks
