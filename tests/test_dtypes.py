"""float32, bfloat16 and float16 parameters, alone and mixed in one tree."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gsm_optax
from tests.reference import stable_topk_mask

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _exact_products(w, g):
  """|g * w| in float64: exact for two values of at most 24 significant bits."""
  return np.abs(np.asarray(w, np.float64) * np.asarray(g, np.float64))


def _random_values(rng, dtype, shape, low_exp, high_exp):
  """Values with random significands and exponents in [low_exp, high_exp)."""
  x = rng.uniform(1, 2, shape) * np.exp2(rng.integers(low_exp, high_exp, shape))
  x = x * rng.choice([-1, 1], shape)
  if dtype == "float16":
    x = np.clip(x, -65504, 65504)  # finite values only
  return np.asarray(x.astype(np.float32).astype(DTYPES[dtype]))


def test_float16_scores_are_exact_over_the_whole_range(rng):
  # Every float16, subnormals (2**-24) to the largest (65504): the product of two
  # 11-bit significands fits float32's 24, and 2**-48 .. 2**32 is float32-normal.
  w = _random_values(rng, "float16", 20_000, -24, 16)
  g = _random_values(rng, "float16", 20_000, -24, 16)
  w[:2], g[:2] = [65504, 2**-24], [65504, 2**-24]
  scores = np.asarray(gsm_optax.taylor(jnp.asarray(w), jnp.asarray(g)))
  assert scores.dtype == np.float32
  np.testing.assert_array_equal(scores.astype(np.float64), _exact_products(w, g))


def test_bfloat16_scores_are_exact_while_the_product_is_float32_normal(rng):
  # 8-bit significands: the product has at most 16 bits, exact in float32 as long
  # as it stays within float32's normal range [2**-126, 2**128).
  w = _random_values(rng, "bfloat16", 20_000, -62, 63)
  g = _random_values(rng, "bfloat16", 20_000, -62, 63)
  exact = _exact_products(w, g)
  assert exact.min() >= 2.0**-126 and exact.max() < 2.0**128
  scores = np.asarray(jax.jit(gsm_optax.taylor)(jnp.asarray(w), jnp.asarray(g)))
  np.testing.assert_array_equal(scores.astype(np.float64), exact)


def test_bfloat16_scores_outside_float32_range_saturate_as_documented():
  """bfloat16 has float32's exponent range, so |g * w| can leave it.

  Above 2**128 the score is inf (ranked first, ties with other infs); below
  2**-126 it is a float32 subnormal or 0. Neither happens for weights and
  gradients in any sane training run, but the claim "exact" holds only inside.
  """
  big = jnp.asarray([2.0**100, 2.0**90], jnp.bfloat16)
  tiny = jnp.asarray([2.0**-100, 2.0**-90], jnp.bfloat16)
  scores = np.asarray(gsm_optax.taylor(big, big))
  np.testing.assert_array_equal(scores, [np.inf, np.inf])  # 2**200 and 2**180 tie at inf
  scores = np.asarray(gsm_optax.taylor(tiny, tiny))
  assert np.all(scores < 2.0**-126)  # 2**-200 and 2**-180: 0 or subnormal, no longer exact


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_selection_ranks_low_precision_weights_by_their_true_scores(rng, dtype):
  # Products crowded into [1, 16): rounded to the parameters' own precision many
  # would tie (and be broken by position), so only true scores give this mask.
  low, high = 0, 2
  params = {"a": jnp.asarray(_random_values(rng, dtype, (40, 30), low, high)),
            "b": jnp.asarray(_random_values(rng, dtype, (30, 20), low, high))}
  grads = {k: jnp.asarray(_random_values(rng, dtype, v.shape, low, high))
           for k, v in params.items()}
  tx = gsm_optax.keep_top_gradients(0.07)
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  exact = np.concatenate([_exact_products(params[k], grads[k]).ravel() for k in ["a", "b"]])
  want = stable_topk_mask(exact, int(0.07 * exact.size))
  got = np.concatenate([np.asarray(out[k] != 0).ravel() for k in ["a", "b"]])
  np.testing.assert_array_equal(got, want)


def _mixed_params(rng):
  return {
      "f32": {"kernel": jnp.asarray(rng.standard_normal((12, 8)), jnp.float32),
              "bias": jnp.asarray(rng.standard_normal(8), jnp.float32)},
      "bf16": {"kernel": jnp.asarray(rng.standard_normal((8, 6)), jnp.bfloat16),
               "bias": jnp.asarray(rng.standard_normal(6), jnp.bfloat16)},
      "f16": {"kernel": jnp.asarray(rng.standard_normal((6, 4)), jnp.float16),
              "bias": jnp.asarray(rng.standard_normal(4), jnp.float16)},
  }


def _spec(tree):
  return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


@pytest.mark.parametrize("wrapper", ["plain", "inject_hyperparams", "apply_if_finite"])
def test_updates_keep_leaf_dtypes_and_state_dtypes_never_change(rng, wrapper):
  params = _mixed_params(rng)
  lr = optax.warmup_cosine_decay_schedule(0.0, 0.1, 3, 20)
  ratio = optax.linear_schedule(1.0, 0.2, 5)
  if wrapper == "inject_hyperparams":
    # optax stores injected values in the params' dtype: float32 values would
    # promote bfloat16 updates and momentum (as for optax.sgd), and optax cannot
    # pick one for bfloat16 + float16. So: a bfloat16 model, default dtype.
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    tx = optax.inject_hyperparams(gsm_optax.gsm)(
        learning_rate=0.05, keep_ratio=0.5, momentum=0.9)
  else:
    tx = gsm_optax.gsm(lr, ratio, momentum=0.9, nesterov=True)
    if wrapper == "apply_if_finite":
      tx = optax.apply_if_finite(tx, max_consecutive_errors=3)
  state = tx.init(params)
  before, param_spec = _spec(state), _spec(params)
  update = jax.jit(tx.update)
  for _ in range(6):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    updates, state = update(grads, state, params)
    chex.assert_trees_all_equal_dtypes(updates, params)
    chex.assert_trees_all_equal_shapes(updates, params)
    params = optax.apply_updates(params, updates)
    assert _spec(state) == before
  assert _spec(params) == param_spec


def _integer_problem(rng, steps):
  """Small integers: exactly representable in float32, bfloat16 and float16."""
  shapes = {"w1": (16, 12), "b1": (12,), "w2": (12, 6)}
  w0 = {k: rng.integers(-20, 21, s).astype(np.float32) for k, s in shapes.items()}
  grads = [{k: rng.integers(-3, 4, s).astype(np.float32) for k, s in shapes.items()}
           for _ in range(steps)]
  return w0, grads


def _run(w0, grads, dtypes):
  """A jitted GSM run whose every value stays exact in every dtype.

  momentum 0, weight decay 0 and a learning rate of 1/2: the weights stay
  multiples of 1/2 below 64, 8 significant bits at most.
  """
  cast = lambda tree: {k: jnp.asarray(v, dtypes[k]) for k, v in tree.items()}
  params = cast(w0)
  tx = gsm_optax.gsm(0.5, optax.linear_schedule(0.6, 0.1, 6), momentum=0.0, weight_decay=0.0)
  state = tx.init(params)
  update = jax.jit(tx.update)
  masks = []
  for g in grads:
    updates, state = update(cast(g), state, params)
    # No momentum, no decay: an eligible weight moves iff its gradient was kept.
    masks.append({k: np.asarray(updates[k] != 0) for k in ["w1", "w2"]})
    params = optax.apply_updates(params, updates)
  return masks, {k: np.asarray(v, np.float32) for k, v in params.items()}


def test_bf16_and_f16_runs_select_the_same_weights_as_float32(rng):
  w0, grads = _integer_problem(rng, 8)
  runs = {
      "float32": {k: jnp.float32 for k in w0},
      "bfloat16": {k: jnp.bfloat16 for k in w0},
      "float16": {k: jnp.float16 for k in w0},
      "mixed": {"w1": jnp.bfloat16, "b1": jnp.float32, "w2": jnp.float16},
  }
  results = {name: _run(w0, grads, dtypes) for name, dtypes in runs.items()}
  ref_masks, ref_params = results["float32"]
  assert sum(int(m["w1"].sum() + m["w2"].sum()) for m in ref_masks) > 0
  for name, (masks, params) in results.items():
    chex.assert_trees_all_equal(masks, ref_masks, custom_message=name)
    chex.assert_trees_all_equal(params, ref_params, custom_message=name)
  # The weights really are exact in bfloat16 (the test's premise).
  for v in ref_params.values():
    np.testing.assert_array_equal(v.astype(jnp.bfloat16).astype(np.float32), v)
