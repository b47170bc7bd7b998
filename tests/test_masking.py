"""hold_mask and gradual_magnitude_pruning, against NumPy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gsm_optax.masking import GradualPruningState, gradual_magnitude_pruning, hold_mask
from tests.reference import stable_topk_mask
from tests.trees import counting_step, mlp_params, normal_like


def _recorder():
  """Passes updates through and keeps the last ones in its state."""
  return optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params),
      lambda updates, state, params=None: (updates, updates),
  )


def _np(tree):
  return jax.tree.map(np.asarray, tree)


# ----------------------------------------------------------------------------
# gradual_magnitude_pruning


def _reference_keep_ratio(t, final, initial, begin, end):
  """Zhu & Gupta's cubic schedule, float64."""
  progress = min(max((t - begin) / (end - begin), 0.0), 1.0)
  return final + (initial - final) * (1.0 - progress) ** 3


def _reference_is_update(t, begin, end, every):
  return begin <= t <= end and ((t - begin) % every == 0 or t == end)


def _recording_sgd():
  """SGD with momentum, recording the gradient it gets and the update it makes."""
  return optax.chain(_recorder(), optax.sgd(0.05, momentum=0.9), _recorder())


# One optimizer and one compiled step shared by several tests: compiling the
# global top-k takes a second or two, every time.
_GMP_KWARGS = dict(final_keep_ratio=0.1, begin_step=4, end_step=20, update_every=4)
_GMP = gradual_magnitude_pruning(_recording_sgd(), **_GMP_KWARGS)
_GMP_TRACES = []
_GMP_STEP = counting_step(_GMP, _GMP_TRACES)

GMP_CONFIGS = {
    # name: (kwargs, eligible keys)
    "shared": (_GMP_KWARGS, None),
    "off_grid_w1_only": (
        dict(final_keep_ratio=0.05, begin_step=3, end_step=40, update_every=7,
             initial_keep_ratio=0.6, eligible={"b1": False, "w1": True, "w2": False}),
        ("w1",)),
}


@pytest.mark.parametrize("config", sorted(GMP_CONFIGS))
def test_gradual_pruning_matches_reference_step_by_step(rng, config):
  kwargs, only = GMP_CONFIGS[config]
  kwargs = dict(kwargs)
  eligible_keys = only or ("w1", "w2")
  params = mlp_params(rng, 30, 20, 5)  # w1 600, b1 20, w2 100
  n = sum(params[k].size for k in eligible_keys)
  final, initial = kwargs["final_keep_ratio"], kwargs.get("initial_keep_ratio", 1.0)
  begin, end, every = kwargs["begin_step"], kwargs["end_step"], kwargs["update_every"]
  if config == "shared":
    tx, traces, step = _GMP, _GMP_TRACES, _GMP_STEP
  else:
    tx = gradual_magnitude_pruning(_recording_sgd(), **kwargs)
    traces = []
    step = counting_step(tx, traces)
  state = tx.init(params)
  keys = sorted(params)  # flattening order
  mask = {k: np.ones(params[k].shape, bool) for k in eligible_keys}
  dead = {k: np.zeros(params[k].shape, bool) for k in eligible_keys}
  q_final = math.floor(final * n)
  updates_seen = []
  for t in range(60):
    grads = normal_like(rng, params)
    p_old = _np(params)
    params, state = step(params, state, grads)
    assert isinstance(state, GradualPruningState)
    p_new, grads = _np(params), _np(grads)
    fed, u = _np(state.inner_state[0]), _np(state.inner_state[2])  # into / out of sgd
    for k in keys:  # sgd saw the gradient inside the mask only; biases untouched
      expected = np.where(mask[k], grads[k], 0) if k in mask else grads[k]
      np.testing.assert_array_equal(fed[k], expected)
    if _reference_is_update(t, begin, end, every):
      updates_seen.append(t)
      q = math.floor(_reference_keep_ratio(t, final, initial, begin, end) * n)
      scores = np.concatenate([
          np.where(mask[k], np.abs(p_old[k] + u[k]), -1.0).ravel() for k in keys if k in mask])
      expected = stable_topk_mask(scores, q)
      got = np.concatenate([np.asarray(state.mask[k]).ravel() for k in keys if k in mask])
      assert got.sum() == q, t
      # XLA may fuse p + u into one rounding where NumPy rounds twice: a score
      # within an ulp or two of the threshold may fall either way, no other.
      differ = got != expected
      threshold = np.sort(scores)[-q]
      assert np.all(np.abs(scores[differ] - threshold) <= 1e-6 * threshold), (t, differ.sum())
      offset = 0
      for k in keys:
        if k in mask:
          mask[k] = got[offset:offset + mask[k].size].reshape(mask[k].shape)
          offset += mask[k].size
    for k in keys:
      close = dict(rtol=1e-6, atol=1e-7, err_msg=f"{t} {k}")  # the same fused add
      if k in mask:
        np.testing.assert_array_equal(np.asarray(state.mask[k]), mask[k], err_msg=f"{t} {k}")
        np.testing.assert_allclose(p_new[k], np.where(mask[k], p_old[k] + u[k], 0), **close)
        dead[k] |= ~mask[k]
        assert np.all(p_new[k][dead[k]] == 0), (t, k)  # once pruned, exactly 0 for good
      else:
        assert isinstance(state.mask[k], optax.MaskedNode)
        np.testing.assert_allclose(p_new[k], p_old[k] + u[k], **close)  # never masked
    nonzero = sum(int(np.count_nonzero(p_new[k])) for k in mask)
    if t >= end:
      assert nonzero == q_final, t
    elif t < begin or (t == begin and initial == 1.0):
      assert nonzero == n
  expected_updates = [t for t in range(begin, end + 1) if (t - begin) % every == 0]
  assert updates_seen == sorted(set(expected_updates) | {end})
  assert int(state.count) == 60
  assert len(traces) == 1 and step._cache_size() == 1  # one compile for all 60 steps


def _gmp(final=0.1):
  return gradual_magnitude_pruning(
      optax.sgd(0.05, momentum=0.9), final, begin_step=4, end_step=20, update_every=4)


@pytest.fixture(scope="module")
def gmp_run():
  """30 jitted steps of _GMP on fresh random data.

  Returns (params0, grads, final params, final state, mask after every step).
  """
  seed = np.random.SeedSequence().entropy % (2**32)
  print(f"gmp_run seed={seed}")
  rng = np.random.default_rng(seed)
  params = mlp_params(rng, 30, 20, 5)
  grads = [normal_like(rng, params) for _ in range(30)]
  p, s, masks = params, _GMP.init(params), []
  for g in grads:
    p, s = _GMP_STEP(p, s, g)
    masks.append(_np(s.mask))
  return params, grads, p, s, masks


def _assert_same_run(p, mask, p_ref, s_ref):
  """Two compilations of the same run: XLA may fuse float operations differently."""
  differ = 0
  for k in ("w1", "w2"):
    m, m_ref = np.asarray(mask[k]), np.asarray(s_ref.mask[k])
    differ += int((m != m_ref).sum())  # a near-tie at a mask update may flip a pair
    both = m & m_ref
    np.testing.assert_allclose(np.asarray(p[k])[both], np.asarray(p_ref[k])[both],
                               rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(p[k])[~m] == 0)
  assert differ <= 4
  np.testing.assert_allclose(np.asarray(p["b1"]), np.asarray(p_ref["b1"]), rtol=1e-5, atol=1e-6)
  assert sum(int(np.count_nonzero(p[k])) for k in ("w1", "w2")) == 70


def test_gradual_pruning_in_lax_scan_under_apply_if_finite(gmp_run):
  """The run of gmp_run again, in one lax.scan, with two NaN steps that must be skipped."""
  params, grads, p_ref, s_ref, masks = gmp_run
  tx = optax.apply_if_finite(_GMP, max_consecutive_errors=3)
  # NaN on a pruned weight before step 10 (the mask must not hide it), on a
  # kept one before step 16, a mask update.
  bad = {10: "pruned", 16: "kept"}
  sequence = []
  for t, g in enumerate(grads):
    if t in bad:
      kept = masks[t - 1]["w1"].ravel()
      i = int(np.argmin(kept) if bad[t] == "pruned" else np.argmax(kept))
      assert kept[i] == (bad[t] == "kept")
      w1 = np.array(g["w1"])
      w1.ravel()[i] = np.nan
      sequence.append(dict(g, w1=jnp.asarray(w1)))
    sequence.append(g)

  @jax.jit
  def run(params, stacked):
    def body(carry, g):
      p, s = carry
      u, s = tx.update(g, s, p)
      p = optax.apply_updates(p, u)
      return (p, s), p

    (p, s), history = jax.lax.scan(body, (params, tx.init(params)), stacked)
    return p, s, history

  p, state, history = run(params, jax.tree.map(lambda *g: jnp.stack(g), *sequence))
  history = _np(history)
  for i in (10, 17):  # positions of the NaN steps in the sequence: skipped
    jax.tree.map(lambda h, i=i: np.testing.assert_array_equal(h[i], h[i - 1]), history)
  assert int(state.total_notfinite) == 2 and int(state.inner_state.count) == 30
  _assert_same_run(p, state.inner_state.mask, p_ref, s_ref)
  assert len(_GMP_TRACES) == 1  # the shared step: compiled once for all its steps


def test_gradual_pruning_mask_continues_with_hold_mask(gmp_run):
  params, _, p, s, _ = gmp_run
  rng = np.random.default_rng(0)
  fine_tune = hold_mask(optax.adam(1e-2), s.mask)
  fstate = fine_tune.init(p)
  step = counting_step(fine_tune, [])
  for _ in range(3):
    p, fstate = step(p, fstate, normal_like(rng, params))
  for k in ("w1", "w2"):
    assert np.all(np.asarray(p[k])[~np.asarray(s.mask[k])] == 0)
    assert np.all(np.asarray(p[k])[np.asarray(s.mask[k])] != 0)
  assert np.all(np.asarray(p["b1"]) != 0)


def test_gradual_pruning_needs_params(rng):
  params = mlp_params(rng, 4, 3, 2)
  tx = _gmp()
  with pytest.raises(ValueError, match="needs the parameters"):
    tx.update(params, tx.init(params))


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(final_keep_ratio=0.0), "final_keep_ratio=0.0"),
     (dict(final_keep_ratio=1.5), "final_keep_ratio=1.5"),
     (dict(final_keep_ratio=float("nan")), "final_keep_ratio"),
     (dict(initial_keep_ratio=0.0), "initial_keep_ratio=0.0"),
     (dict(final_keep_ratio=0.5, initial_keep_ratio=0.3), "at most initial_keep_ratio"),
     (dict(begin_step=10, end_step=10), "end_step must be greater than begin_step"),
     (dict(begin_step=-1), "begin_step=-1"), (dict(end_step=20.0), "end_step=20.0"),
     (dict(update_every=0), "update_every=0"), (dict(update_every=True), "update_every")],
)
def test_gradual_pruning_rejects_bad_arguments(kwargs, match):
  args = dict(final_keep_ratio=0.1, begin_step=0, end_step=20, update_every=2) | kwargs
  with pytest.raises((ValueError, TypeError), match=match):
    gradual_magnitude_pruning(optax.sgd(0.1), **args)


def test_gradual_pruning_final_ratio_must_keep_a_weight(rng):
  params = mlp_params(rng, 4, 3, 2)  # 18 eligible weights
  with pytest.raises(ValueError, match="final_keep_ratio"):
    _gmp(final=0.05).init(params)
  with pytest.raises(TypeError, match="inner"):
    gradual_magnitude_pruning("sgd", 0.1, begin_step=0, end_step=5, update_every=1)


# ----------------------------------------------------------------------------
# hold_mask


def _quadratic(rng):
  x = rng.standard_normal((16, 6))
  y = rng.standard_normal((16, 4))
  params = {"w": rng.standard_normal((6, 4)), "b": rng.standard_normal(4)}
  mask = rng.random((6, 4)) < 0.5
  mask[0, 0], mask[0, 1] = True, False
  return x, y, params, mask


def test_hold_mask_sgd_momentum_matches_float64_reference(rng):
  x, y, p0, mask = _quadratic(rng)
  lr, m, steps = 0.05, 0.9, 50

  def loss(p):
    r = jnp.asarray(x, jnp.float32) @ p["w"] + p["b"] - jnp.asarray(y, jnp.float32)
    return 0.5 * jnp.mean(jnp.sum(r**2, axis=1))

  tx = hold_mask(optax.sgd(lr, momentum=m), {"w": mask, "b": None})
  traces = []
  step = counting_step(tx, traces)
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p0)
  state = tx.init(params)
  grad = jax.jit(jax.grad(loss))

  # float64 reference. The first gradient is taken at the unpruned weights, as
  # the caller does; from then on it is the masked problem.
  w, b = p0["w"].copy(), p0["b"].copy()
  vw, vb = np.zeros_like(w), np.zeros_like(b)
  for t in range(steps):
    params, state = step(params, state, grad(params))
    r = x @ w + b - y
    gw, gb = mask * (x.T @ r) / len(x), r.mean(0)
    vw, vb = m * vw + gw, m * vb + gb
    w, b = mask * (w - lr * vw), b - lr * vb
    assert np.all(np.asarray(params["w"])[~mask] == 0), t  # from the first step on
    np.testing.assert_allclose(np.asarray(params["w"]), w, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(params["b"]), b, rtol=2e-5, atol=2e-6)
  assert len(traces) == 1
  assert np.all(np.asarray(params["w"])[mask] != 0)


def test_hold_mask_equals_inner_on_the_masked_problem(rng):
  """Unmasked start, random gradients: from step 1 on it is the masked problem exactly."""
  params = mlp_params(rng, 12, 8, 3)
  masks = {"w1": rng.random((12, 8)) < 0.3, "w2": rng.random((8, 3)) < 0.7, "b1": None}
  # Trust ratio uses each leaf's norm: inner must see the masked weights.
  inner = optax.chain(optax.scale_by_trust_ratio(), optax.sgd(0.05, momentum=0.9))
  tx = hold_mask(inner, masks)
  state = tx.init(params)
  sub = {k: (v if masks[k] is None else jnp.where(masks[k], v, 0)) for k, v in params.items()}
  sub_state = inner.init(sub)
  # Op by op (no jit), so that both runs round alike and must agree bit for bit.
  for t in range(6):
    g = normal_like(rng, params)
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    g_sub = {k: (v if masks[k] is None else jnp.where(masks[k], v, 0)) for k, v in g.items()}
    updates, sub_state = inner.update(g_sub, sub_state, sub)
    sub = optax.apply_updates(sub, updates)
    for k in params:
      np.testing.assert_array_equal(np.asarray(params[k]), np.asarray(sub[k]), err_msg=f"{t} {k}")
      if masks[k] is not None:
        assert np.all(np.asarray(params[k])[~masks[k]] == 0)


def _magnitude_mask(params, keep_ratio):
  """A one-shot global magnitude mask over the rank-2 leaves, by brute force."""
  keys = [k for k in sorted(params) if np.ndim(params[k]) >= 2]
  scores = np.concatenate([np.abs(np.asarray(params[k])).ravel() for k in keys])
  kept = stable_topk_mask(scores, math.floor(keep_ratio * scores.size))
  mask = {k: np.ones(np.shape(v), bool) for k, v in params.items()}
  offset = 0
  for k in keys:
    mask[k] = kept[offset:offset + mask[k].size].reshape(mask[k].shape)
    offset += mask[k].size
  return mask


def test_hold_mask_mask_forms(rng):
  params = mlp_params(rng, 6, 4, 2)
  grads = jax.tree.map(jnp.zeros_like, params)
  one_shot = _magnitude_mask(params, 0.25)
  pruned = jax.tree.map(lambda p, m: np.where(m, p, 0), _np(params), one_shot)
  cases = {
      "callable": (lambda p: _magnitude_mask(p, 0.25), pruned),
      "prefix_false": ({"w1": False, "w2": True, "b1": None},
                       dict(params, w1=jnp.zeros_like(params["w1"]))),
      "masked_node": (dict(one_shot, b1=optax.MaskedNode()), pruned),
      "all_true": (True, params),
      "jax_arrays": (jax.tree.map(jnp.asarray, one_shot), pruned),
  }
  for name, (mask, expected) in cases.items():
    tx = hold_mask(optax.sgd(0.1, momentum=0.9), mask)
    updates, _ = tx.update(grads, tx.init(params), params)
    got = optax.apply_updates(params, updates)
    jax.tree.map(lambda a, b, name=name: np.testing.assert_array_equal(a, b, err_msg=name),
                 _np(got), _np(expected))


def test_hold_mask_under_apply_if_finite_does_not_hide_nan(rng):
  params = mlp_params(rng, 6, 4, 2)
  mask = _magnitude_mask(params, 0.5)
  traces = []
  tx = optax.apply_if_finite(hold_mask(optax.sgd(0.1, momentum=0.9), mask), 5)
  step = counting_step(tx, traces)
  state = tx.init(params)
  for t in range(6):
    g = normal_like(rng, params)
    if t == 3:  # NaN on a pruned weight: the step is skipped, not silently masked
      w1 = np.array(g["w1"])
      w1[~np.asarray(mask["w1"])] = np.nan
      g = dict(g, w1=jnp.asarray(w1))
      before = _np(params)
    params, state = step(params, state, g)
    if t == 3:
      jax.tree.map(np.testing.assert_array_equal, _np(params), before)
  assert int(state.total_notfinite) == 1 and len(traces) == 1
  assert np.all(np.asarray(params["w1"])[~np.asarray(mask["w1"])] == 0)


def test_hold_mask_rejects_bad_masks(rng):
  params = mlp_params(rng, 6, 4, 2)
  grads = normal_like(rng, params)
  bad = [
      ({"w1": np.ones((4, 6), bool), "w2": True, "b1": True}, ValueError,
       r"mask\['w1'\] has shape \(4, 6\), but its parameter has shape \(6, 4\)"),
      ({"w1": np.ones((6, 4)), "w2": True, "b1": True}, TypeError, r"bool.*mask\['w1'\]"),
      ({"w1": True, "w2": True}, ValueError, "structure"),
      (np.ones((6, 4), bool), ValueError, "single parameter leaf"),
  ]
  for mask, error, match in bad:
    with pytest.raises(error, match=match):
      hold_mask(optax.sgd(0.1), mask).init(params)
  tx = hold_mask(optax.sgd(0.1), True)
  with pytest.raises(ValueError, match="needs the parameters"):
    tx.update(grads, tx.init(params))
  with pytest.raises(TypeError, match="inner"):
    hold_mask(None, True)
