"""GSM beyond the paper: passive decay, averaged importance, an annealed keep ratio.

Each option is checked against the float64 NumPy reference written from its
equation (tests/reference.py), on random problems with fresh seeds.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gsm_optax
from tests.reference import FLOAT32_TIE_RTOL, gsm_reference, traced_keep_count
from tests.trees import assert_follows

SHAPES = [(12, 9), (9,), (3, 3, 4, 5), (5,), (40, 10), (10,)]
ELIGIBLE = [len(s) >= 2 for s in SHAPES]
N = sum(int(np.prod(s)) for s, e in zip(SHAPES, ELIGIBLE) if e)


def _problem(rng, steps):
  """A random quadratic whose curvature and target change every step."""
  w0 = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
  curv = [[rng.uniform(0.5, 2.0, s) for s in SHAPES] for _ in range(steps)]
  target = [[rng.standard_normal(s) for s in SHAPES] for _ in range(steps)]

  def grad_np(t, w):
    return [c * (x - y) for c, x, y in zip(curv[t], w, target[t])]

  def grad_jax(t, w):
    return [jnp.asarray(c, jnp.float32) * (x - jnp.asarray(y, jnp.float32))
            for c, x, y in zip(curv[t], w, target[t])]

  return w0, grad_np, grad_jax


def _cubic_q(final, begin, end):
  """Q_t of the cubic keep-ratio schedule, written in float64 from Zhu & Gupta's formula."""

  def q(t):
    frac = min(max((t - begin) / (end - begin), 0.0), 1.0)
    return traced_keep_count(final + (1.0 - final) * (1.0 - frac) ** 3, N)

  return q


VARIANTS = {
    "passive decay": dict(passive=2e-2),
    "passive decay schedule": dict(passive=lambda t: jnp.where(t >= 10, 1.0, 0.0),
                                   passive_np=lambda t: 0.0 if t < 10 else 1.0),
    "averaged importance": dict(ema=0.8),
    "all three, annealed keep ratio": dict(passive=5e-2, ema=0.5, anneal=(5, 25)),
    # The recommended recipe: magnitude ranking, annealed keep ratio, passive decay 100x eta.
    "recommended recipe": dict(passive=0.5, anneal=(0, 30), importance="magnitude"),
}


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_options_match_float64_reference(rng, variant, nesterov):
  v = VARIANTS[variant]
  steps, final, beta, eta = 40, 0.15, 0.9, 5e-3
  w0, grad_np, grad_jax = _problem(rng, steps)
  passive = v.get("passive", 0.0)
  passive_np = v.get("passive_np", lambda t: passive)
  keep_ratio, keep_np = final, final
  if "anneal" in v:
    begin, end = v["anneal"]
    keep_ratio = gsm_optax.cubic_keep_ratio_schedule(final, begin_step=begin, end_step=end)
    keep_np = _cubic_q(final, begin, end)
  tx = gsm_optax.gsm(0.03, keep_ratio, momentum=beta, weight_decay=eta, nesterov=nesterov,
                     passive_weight_decay=passive, importance_ema=v.get("ema", 0.0),
                     importance=v.get("importance", "taylor"))
  reference = gsm_reference(w0, ELIGIBLE, grad_np, lambda t: 0.03, keep_np, beta, eta, nesterov,
                            steps, passive_weight_decay=passive_np, ema=v.get("ema", 0.0),
                            importance=v.get("importance", "taylor"), tie_rtol=FLOAT32_TIE_RTOL)
  assert_follows(tx, [jnp.asarray(x) for x in w0], grad_jax, reference, steps)


@pytest.mark.parametrize("nesterov", [False, True])
def test_recommended_gsm_is_the_recipe_of_the_float64_reference(rng, nesterov):
  """recommended_gsm: magnitude ranking, keep ratio 1 -> Q by a cubic, passive decay 100 eta."""
  steps, final, beta, eta, anneal = 40, 0.15, 0.9, 5e-3, 25
  w0, grad_np, grad_jax = _problem(rng, steps)
  tx = gsm_optax.recommended_gsm(0.03, final, anneal_steps=anneal, momentum=beta,
                                 weight_decay=eta, nesterov=nesterov)
  reference = gsm_reference(w0, ELIGIBLE, grad_np, lambda t: 0.03, _cubic_q(final, 0, anneal),
                            beta, eta, nesterov, steps, passive_weight_decay=lambda t: 100 * eta,
                            importance="magnitude", tie_rtol=FLOAT32_TIE_RTOL)
  state, _ = assert_follows(tx, [jnp.asarray(x) for x in w0], grad_jax, reference, steps)
  assert int(gsm_optax.selection_stats(state).keep_count) == int(final * N)  # the anneal reached Q


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(keep_ratio=gsm_optax.cubic_keep_ratio_schedule(0.1, begin_step=0, end_step=9)),
     TypeError, r"builds the schedule itself.*gsm\(learning_rate, keep_ratio=schedule\)"),
    (dict(keep_ratio=1.5), ValueError, r"keep_ratio must be a float in \(0, 1\]; got"),
    (dict(anneal_steps=0), ValueError, r"anneal_steps must be an int in \[1, .*got anneal_steps=0"),
    (dict(anneal_steps=10.0), TypeError, r"anneal_steps must be an int"),
    (dict(weight_decay=-1.0), ValueError, r"weight_decay must be a finite number >= 0"),
    (dict(momentum=1.0), ValueError, r"momentum must be in \[0, 1\)"),
])
def test_recommended_gsm_rejects_bad_arguments_at_construction(kwargs, error, match):
  args = dict(keep_ratio=0.1, anneal_steps=10) | kwargs
  with pytest.raises(error, match=match):
    gsm_optax.recommended_gsm(0.01, args.pop("keep_ratio"), **args)


def test_passive_weight_decay_is_the_only_change_outside_the_top_q(rng):
  """keep_top_gradients returns B * g + eta_p * (1 - B) * w, exactly."""
  w = {"k": jnp.asarray(rng.standard_normal((20, 30)), jnp.float32),
       "b": jnp.asarray(rng.standard_normal(30), jnp.float32)}
  g = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), w)
  plain = gsm_optax.keep_top_gradients(0.1)
  passive = gsm_optax.keep_top_gradients(0.1, passive_weight_decay=0.25)
  out0, _ = plain.update(g, plain.init(w), w)
  out1, _ = passive.update(g, passive.init(w), w)
  kept = np.asarray(out0["k"]) != 0
  assert kept.sum() == int(0.1 * 600)
  np.testing.assert_array_equal(np.asarray(out1["k"])[kept], np.asarray(g["k"])[kept])
  np.testing.assert_array_equal(np.asarray(out1["k"])[~kept],
                                (np.float32(0.25) * np.asarray(w["k"]))[~kept])
  np.testing.assert_array_equal(out1["b"], g["b"])


def test_averaged_scores_live_in_the_state(rng):
  w = {"k": jnp.asarray(rng.standard_normal((8, 6)), jnp.float32), "b": jnp.zeros(6)}
  tx = gsm_optax.keep_top_gradients(0.25, importance_ema=0.75)
  state = tx.init(w)
  chex.assert_trees_all_equal_shapes(state.average_scores, w)
  g1 = {"k": jnp.asarray(rng.standard_normal((8, 6)), jnp.float32), "b": jnp.ones(6)}
  g2 = {"k": jnp.asarray(rng.standard_normal((8, 6)), jnp.float32), "b": jnp.ones(6)}
  _, state = tx.update(g1, state, w)
  _, state = tx.update(g2, state, w)
  t1 = np.abs(np.float64(g1["k"]) * np.float64(w["k"]))
  t2 = np.abs(np.float64(g2["k"]) * np.float64(w["k"]))
  np.testing.assert_allclose(state.average_scores["k"], 0.75 * 0.25 * t1 + 0.25 * t2, rtol=1e-6)
  np.testing.assert_array_equal(state.average_scores["b"], np.zeros(6))


def test_options_under_inject_hyperparams_and_schedules(rng):
  """Injected passive decay changes between steps without recompiling."""
  w = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in SHAPES]
  g = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in SHAPES]
  tx = optax.inject_hyperparams(gsm_optax.gsm, static_args=("importance_ema",))(
      learning_rate=0.1, keep_ratio=0.2, momentum=0.0, weight_decay=0.0,
      passive_weight_decay=0.0, importance_ema=0.5)
  state = tx.init(w)
  traces = []

  @jax.jit
  def step(state):
    traces.append(None)
    return tx.update(g, state, w)

  state.hyperparams["passive_weight_decay"] = jnp.asarray(0.0)
  upd0, state = step(state)
  state.hyperparams["passive_weight_decay"] = jnp.asarray(0.5)
  upd1, state = step(state)
  assert len(traces) == 1
  q = int(0.2 * N)
  # momentum 0, lr 0.1, no weight decay: the update is -0.1 * (B * g + eta_p * (1 - B) * w).
  zeros = sum(int((np.asarray(u) == 0).sum()) for u, e in zip(upd0, ELIGIBLE) if e)
  decayed = sum(int(np.isclose(np.asarray(u), -0.05 * np.asarray(p), rtol=1e-6, atol=0).sum())
                for u, p, e in zip(upd1, w, ELIGIBLE) if e)
  assert zeros == N - q
  assert decayed == N - q


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(passive_weight_decay=-1e-3), "passive_weight_decay"),
        (dict(passive_weight_decay=float("nan")), "passive_weight_decay"),
        (dict(passive_weight_decay="1e-3"), "passive_weight_decay"),
        (dict(importance_ema=1.0), "importance_ema"),
        (dict(importance_ema=-0.1), "importance_ema"),
    ],
)
def test_bad_options_fail_at_construction(kwargs, match):
  with pytest.raises((ValueError, TypeError), match=match):
    gsm_optax.gsm(0.1, 0.5, **kwargs)


def test_cubic_keep_ratio_schedule_values():
  sched = gsm_optax.cubic_keep_ratio_schedule(0.05, begin_step=10, end_step=110,
                                              initial_keep_ratio=0.8)
  for t in [0, 10, 11, 37, 60, 109, 110, 500]:
    frac = min(max((t - 10) / 100, 0.0), 1.0)
    want = 0.05 + (0.8 - 0.05) * (1 - frac) ** 3
    np.testing.assert_allclose(float(sched(t)), want, rtol=1e-6)
  with pytest.raises(ValueError, match="end_step"):
    gsm_optax.cubic_keep_ratio_schedule(0.1, begin_step=5, end_step=5)
  with pytest.raises(ValueError, match="final_keep_ratio"):
    gsm_optax.cubic_keep_ratio_schedule(0.9, begin_step=0, end_step=5, initial_keep_ratio=0.5)
  with pytest.raises(ValueError, match="final_keep_ratio"):
    gsm_optax.cubic_keep_ratio_schedule(0.0, begin_step=0, end_step=5)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_tree_map_params_builds_shardings_for_the_state(ema):
  """optax's documented way to shard an optimizer state works on gsm's state."""
  params = {"dense": {"kernel": jnp.ones((16, 8)), "bias": jnp.zeros(8)},
            "out": {"kernel": jnp.ones((8, 4)), "bias": jnp.zeros(4)}}
  tx = gsm_optax.gsm(0.1, 0.25, importance_ema=ema)
  state = tx.init(params)
  mesh = jax.make_mesh((1,), ("model",))
  spec = {"dense": {"kernel": jax.sharding.PartitionSpec(None, "model"),
                    "bias": jax.sharding.PartitionSpec()},
          "out": {"kernel": jax.sharding.PartitionSpec("model", None),
                  "bias": jax.sharding.PartitionSpec()}}
  shardings = optax.tree_map_params(
      tx, lambda _, s: jax.sharding.NamedSharding(mesh, s), state, spec,
      transform_non_params=lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  placed = jax.device_put(state, shardings)
  trace = placed[2].trace
  assert trace["dense"]["kernel"].sharding.spec == spec["dense"]["kernel"]
  assert trace["out"]["kernel"].sharding.spec == spec["out"]["kernel"]
  if ema:
    assert placed[0].average_scores["dense"]["kernel"].sharding.spec == spec["dense"]["kernel"]
  else:
    assert placed[0].average_scores is None


@pytest.mark.parametrize("make", [
    lambda p: gsm_optax.gsm(0.1, 0.25, importance_ema=0.5),
    lambda p: gsm_optax.keep_top_gradients(0.25, importance_ema=0.9),
    lambda p: gsm_optax.hold_mask(optax.sgd(0.1, 0.9), gsm_optax.prune_mask(p, 0.25)),
    lambda p: gsm_optax.gradual_magnitude_pruning(optax.sgd(0.1), 0.25, begin_step=0,
                                                  end_step=10, update_every=2),
])
def test_init_under_eval_shape_and_with_placeholders(make):
  params = {"k": jnp.ones((6, 5)), "b": jnp.zeros(5)}
  tx = make(params)
  abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  shapes = jax.eval_shape(tx.init, abstract)
  chex.assert_trees_all_equal_shapes_and_dtypes(shapes, tx.init(params))
  mapped = optax.tree_map_params(tx, lambda p: f"param {p.shape}", tx.init(params),
                                 transform_non_params=lambda _: None)
  assert "param (6, 5)" in jax.tree_util.tree_leaves(mapped)


def test_placeholder_init_does_not_hide_errors_from_real_params():
  with pytest.raises(ValueError, match="no eligible weights"):
    gsm_optax.gsm(0.1, 0.5).init({"b": jnp.zeros(3)})
