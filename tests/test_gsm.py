"""gsm() against a float64 NumPy implementation of the paper's equations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gsm_optax
from tests.reference import FLOAT32_TIE_RTOL, gsm_reference, stable_topk_mask
from tests.trees import assert_follows

SHAPES = [(12, 9), (9,), (3, 3, 4, 5), (5,), (40, 10), (10,)]


def _problem(rng, steps):
  """A random quadratic whose curvature and target change every step."""
  w0 = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
  curv = [[rng.uniform(0.5, 2.0, s) for s in SHAPES] for _ in range(steps)]
  target = [[rng.standard_normal(s) for s in SHAPES] for _ in range(steps)]

  def grad_np(t, w):  # d/dw of 0.5 * c * (w - target)^2, float64
    return [c * (x - y) for c, x, y in zip(curv[t], w, target[t])]

  def grad_jax(t, w):
    return [jnp.asarray(c, jnp.float32) * (x - jnp.asarray(y, jnp.float32))
            for c, x, y in zip(curv[t], w, target[t])]

  return w0, grad_np, grad_jax


@pytest.mark.parametrize("nesterov", [False, True])
def test_matches_float64_reference_of_the_paper(rng, nesterov):
  steps, keep_ratio, beta, eta = 40, 0.15, 0.9, 5e-3
  w0, grad_np, grad_jax = _problem(rng, steps)
  eligible = [len(s) >= 2 for s in SHAPES]
  schedule = optax.linear_schedule(0.01, 0.05, transition_steps=20)

  def lr_np(t):
    return 0.01 + 0.04 * min(t, 20) / 20

  tx = gsm_optax.gsm(schedule, keep_ratio, momentum=beta, weight_decay=eta, nesterov=nesterov)
  reference = gsm_reference(w0, eligible, grad_np, lr_np, keep_ratio, beta, eta, nesterov, steps,
                            tie_rtol=FLOAT32_TIE_RTOL)  # ends early at a float32 near-tie
  n = sum(int(np.prod(s)) for s, e in zip(SHAPES, eligible) if e)
  _, masks = assert_follows(tx, [jnp.asarray(x) for x in w0], grad_jax, reference, steps)
  assert all(mask.sum() == int(keep_ratio * n) for mask in masks)


def test_exactly_q_gradients_survive_and_biases_are_untouched(rng):
  params = {"dense": {"kernel": jnp.asarray(rng.standard_normal((30, 20)), jnp.float32),
                      "bias": jnp.asarray(rng.standard_normal(20), jnp.float32)},
            "conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 4, 8)), jnp.float32),
                     "bias": jnp.asarray(rng.standard_normal(8), jnp.float32)}}
  n = 30 * 20 + 3 * 3 * 4 * 8
  tx = gsm_optax.keep_top_gradients(0.1)
  state = tx.init(params)
  for _ in range(5):
    # Small integers: many exact ties in |g * w|, so the tie rule is exercised.
    grads = jax.tree.map(lambda p: jnp.asarray(rng.integers(-2, 3, p.shape), jnp.float32),
                         params)
    out, state = jax.jit(tx.update)(grads, state, params)
    chex.assert_trees_all_equal(out["dense"]["bias"], grads["dense"]["bias"])
    chex.assert_trees_all_equal(out["conv"]["bias"], grads["conv"]["bias"])
    kept = sum(int(jnp.sum(out[m]["kernel"] == grads[m]["kernel"]) - jnp.sum(grads[m]["kernel"]
               == 0)) for m in params)
    zeroed = [out[m]["kernel"][grads[m]["kernel"] != out[m]["kernel"]] for m in params]
    assert all(bool(jnp.all(z == 0)) for z in zeroed)
    # The surviving set is exactly the reference top-Q of |g * w|.
    scores = np.concatenate([np.abs(np.asarray(grads[m]["kernel"] * params[m]["kernel"])).ravel()
                             for m in ["conv", "dense"]])
    ref = stable_topk_mask(scores, int(0.1 * n))
    got = np.concatenate([(np.asarray(out[m]["kernel"]) != 0).ravel() for m in ["conv", "dense"]])
    nonzero_grad = np.concatenate([np.asarray(grads[m]["kernel"] != 0).ravel()
                                   for m in ["conv", "dense"]])
    np.testing.assert_array_equal(got, ref & nonzero_grad)
    assert kept <= int(0.1 * n)
    assert int(gsm_optax.selection_stats(state).keep_count) == int(0.1 * n)


def test_decay_reaches_eligible_weights_only():
  params = {"w": jnp.full((4, 4), 2.0), "b": jnp.full((4,), 2.0)}
  tx = gsm_optax.gsm(0.1, 0.25, momentum=0.0, weight_decay=0.5)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, state, params)
  np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * 2.0)
  np.testing.assert_allclose(updates["b"], 0.0)


def test_keep_ratio_schedule_changes_q(rng):
  params = [jnp.asarray(rng.standard_normal((50, 20)), jnp.float32)]
  schedule = optax.linear_schedule(1.0, 0.1, transition_steps=10)
  tx = gsm_optax.keep_top_gradients(schedule)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for t in range(12):
    grads = [jnp.asarray(rng.standard_normal((50, 20)), jnp.float32)]
    out, state = update(grads, state, params)
    q = int(gsm_optax.selection_stats(state).keep_count)
    assert int(jnp.sum(out[0] != 0)) == q
    # Traced ratios are float32: Q is floor(ratio * n) up to float32 rounding.
    exact = (1.0 - 0.9 * min(t, 10) / 10) * 1000
    assert np.floor(exact - 1e-3) <= q <= np.floor(exact + 1e-3)


def test_traced_keep_count_forgives_float32_rounding():
  # XLA computes a schedule's count / T as count * (1 / T): 0.1 became 0.09999996.
  ratio = jnp.float32(0.09999996)
  assert int(jax.jit(gsm_optax.keep_count, static_argnums=1)(ratio, 700)) == 70
  assert int(jax.jit(gsm_optax.keep_count, static_argnums=1)(jnp.float32(0.0995), 700)) == 69
  assert int(jax.jit(gsm_optax.keep_count, static_argnums=1)(jnp.float32(jnp.nan), 700)) == 700
  assert int(jax.jit(gsm_optax.keep_count, static_argnums=1)(jnp.float32(0.0), 700)) == 1
  assert gsm_optax.keep_count(0.1, 700) == 70


def test_python_keep_count_is_clipped_like_the_traced_one(rng):
  # The documented rule for a Python float: floor(ratio * n) clipped to [1, n]; NaN keeps n.
  n = int(rng.integers(1, 5000))
  ratios = [0.0, -0.5, 1e-9, 1.0, 1.7, float("inf"), float("nan")] + list(rng.uniform(0, 1, 20))
  for ratio in ratios:
    want = n if np.isnan(ratio) else int(np.clip(np.floor(np.float64(ratio) * n), 1, n))
    assert gsm_optax.keep_count(ratio, n) == want, ratio
  # Where float32 rounding plays no part, both paths give the same count.
  for ratio in [0.0, -0.5, 1.7, float("nan")]:
    assert int(jax.jit(gsm_optax.keep_count, static_argnums=1)(jnp.float32(ratio), n)) == (
        gsm_optax.keep_count(ratio, n))


def test_magnitude_and_custom_importance(rng):
  w = jnp.asarray(rng.standard_normal((10, 10)), jnp.float32)
  g = jnp.asarray(rng.standard_normal((10, 10)), jnp.float32)
  out, _ = gsm_optax.keep_top_gradients(0.2, importance="magnitude").update(
      [g], gsm_optax.keep_top_gradients(0.2).init([w]), [w])
  np.testing.assert_array_equal(np.asarray(out[0] != 0).ravel(),
                                stable_topk_mask(np.abs(np.asarray(w)).ravel(), 20))
  tx = gsm_optax.keep_top_gradients(0.2, importance=lambda p, g: jax.tree.map(jnp.abs, g))
  out, _ = tx.update([g], tx.init([w]), [w])
  np.testing.assert_array_equal(np.asarray(out[0] != 0).ravel(),
                                stable_topk_mask(np.abs(np.asarray(g)).ravel(), 20))


def test_non_finite_gradients_do_not_corrupt_the_selection(rng):
  w = jnp.asarray(rng.uniform(1, 2, (20, 10)), jnp.float32)
  g = np.asarray(rng.standard_normal((20, 10)), np.float32)
  bad = g.copy()
  bad[0, :3] = [np.nan, np.inf, -np.inf]
  tx = gsm_optax.keep_top_gradients(0.1)
  state = tx.init([w])
  clean, _ = tx.update([jnp.asarray(np.where(np.isfinite(bad), bad, 0))], state, [w])
  out, _ = tx.update([jnp.asarray(bad)], state, [w])
  out = np.asarray(out[0])
  # Non-finite gradients pass through, so NaN is never hidden...
  assert np.isnan(out[0, 0]) and out[0, 1] == np.inf and out[0, 2] == -np.inf
  # ...NaN ranks last, inf first: the finite entries kept are the clean top-Q less
  # the two slots the infinities took.
  finite_scores = np.abs(np.where(np.isfinite(bad), bad, 0) * np.asarray(w)).ravel()
  finite_scores[:3] = -1
  expected = stable_topk_mask(finite_scores, 20 - 2).reshape(20, 10)
  np.testing.assert_array_equal(np.isfinite(out) & (out != 0), expected & (bad != 0))
  assert np.asarray(clean[0] != 0).sum() == 20


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_bad_keep_ratio_at_construction(ratio):
  with pytest.raises(ValueError, match=f"keep_ratio.*{ratio}"):
    gsm_optax.gsm(0.1, ratio)
  with pytest.raises(ValueError, match="keep_ratio"):
    gsm_optax.prune({"w": jnp.ones((2, 2))}, ratio)


def test_bad_inputs_get_clear_errors():
  params = {"w": jnp.ones((10, 10)), "b": jnp.ones(10)}
  with pytest.raises(ValueError, match=r"keep_ratio=0.001 keeps floor.*= 0 of the 100"):
    gsm_optax.gsm(0.1, 0.001).init(params)
  with pytest.raises(ValueError, match=r"keep_ratio\(0\)"):
    gsm_optax.gsm(0.1, lambda step: 0.0).init(params)
  with pytest.raises(TypeError, match="keep_ratio"):
    gsm_optax.gsm(0.1, "half")
  with pytest.raises(ValueError, match="no eligible weights"):
    gsm_optax.gsm(0.1, 0.5).init({"b": jnp.ones(3)})
  with pytest.raises(ValueError, match="no eligible weights.*floating point"):
    gsm_optax.gsm(0.1, 0.5).init({"w": jnp.ones((3, 3), jnp.int32)})  # not prunable
  with pytest.raises(TypeError, match=r"\['w'\].*int32"):
    gsm_optax.gsm(0.1, 0.5, eligible={"w": True}).init({"w": jnp.ones((3, 3), jnp.int32)})
  with pytest.raises(ValueError, match="needs the parameters"):
    tx = gsm_optax.gsm(0.1, 0.5)
    tx.update(params, tx.init(params))
  with pytest.raises(ValueError, match="eligible must be a pytree of bools"):
    gsm_optax.gsm(0.1, 0.5, eligible={"w": True}).init(params)
  with pytest.raises(ValueError, match="eligible must hold Python bools"):
    gsm_optax.gsm(0.1, 0.5, eligible={"w": "yes", "b": False}).init(params)
  with pytest.raises(ValueError, match="importance.*'fisher'"):
    gsm_optax.gsm(0.1, 0.5, importance="fisher")
  with pytest.raises(ValueError, match="learning_rate=-1"):
    gsm_optax.gsm(-1, 0.5)
  with pytest.raises(ValueError, match="momentum=1.0"):
    gsm_optax.gsm(0.1, 0.5, momentum=1.0)
  with pytest.raises(ValueError, match="weight_decay=-0.1"):
    gsm_optax.gsm(0.1, 0.5, weight_decay=-0.1)
  with pytest.raises(ValueError, match="no keep_top_gradients state"):
    gsm_optax.selection_stats(optax.sgd(0.1).init(params))


def test_eligible_as_tree_and_callable():
  params = {"w": jnp.ones((4, 4)), "v": jnp.ones((4, 4)), "b": jnp.ones(4)}
  grads = jax.tree.map(lambda p: jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape), params)
  for eligible in [{"w": True, "v": False, "b": False}, lambda p: {"w": True, "v": False,
                                                                   "b": False}]:
    tx = gsm_optax.keep_top_gradients(0.25, eligible=eligible)
    out, _ = tx.update(grads, tx.init(params), params)
    assert int(jnp.sum(out["w"] != 0)) == 4
    chex.assert_trees_all_equal(out["v"], grads["v"])
    chex.assert_trees_all_equal(out["b"], grads["b"])


def test_state_structure_and_dtypes_never_change(rng):
  params = {"w": jnp.ones((8, 8)), "b": jnp.ones(8)}
  tx = gsm_optax.gsm(0.1, optax.linear_schedule(1.0, 0.2, 5))
  state = tx.init(params)
  before = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  for _ in range(3):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
    _, state = jax.jit(tx.update)(grads, state, params)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == before
