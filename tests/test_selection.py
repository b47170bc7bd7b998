"""global_topk_mask against a brute-force stable argsort."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsm_optax import global_topk_mask, global_topk_selection
from tests.reference import stable_topk_mask


def _flat(tree):
  leaves = jax.tree_util.tree_leaves(tree)
  return np.concatenate(
      [np.asarray(x, bool if x.dtype == bool else np.float32).ravel() for x in leaves])


def _check(scores, k, fn=global_topk_mask):
  mask = fn(scores, k)
  chex.assert_trees_all_equal_shapes(mask, scores)
  for leaf in jax.tree_util.tree_leaves(mask):
    assert leaf.dtype == jnp.bool_
  got = _flat(mask)
  assert got.sum() == k
  np.testing.assert_array_equal(got, stable_topk_mask(_flat(scores), k))


def _random_tree(rng, sizes, draw):
  tree = {}
  for i, size in enumerate(sizes):
    shape = [size] if rng.random() < 0.5 or size < 4 else [size // 2, 2]
    if shape != [size] and size % 2:
      shape = [size]
    tree[f"leaf{i}"] = jnp.asarray(draw(int(np.prod(shape))).reshape(shape))
  return tree


def test_every_k_small_trees_with_ties_zeros_and_negatives(rng):
  jitted = jax.jit(global_topk_mask)
  for _ in range(20):
    sizes = rng.integers(1, 7, size=rng.integers(1, 5))
    tree = _random_tree(rng, sizes, lambda m: rng.integers(-3, 4, m).astype(np.float32))
    n = int(sum(sizes))
    for k in range(0, n + 1):
      _check(tree, k, jitted)


@pytest.mark.parametrize("n", [1, 2, 17, 1000, 65_537, 1_000_000])
def test_sizes_up_to_a_million(rng, n):
  split = sorted(rng.choice(np.arange(1, n), size=min(3, n - 1), replace=False)) if n > 1 else []
  sizes = np.diff([0, *split, n])
  tree = _random_tree(rng, sizes, lambda m: rng.standard_normal(m).astype(np.float32))
  for k in {1, n // 3, n // 2, n - 1, n} - {0}:
    _check(tree, k, jax.jit(global_topk_mask))


def test_special_values(rng):
  specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45,
                       1e-38, 3.4e38, -3.4e38, 1.0, 1.0], np.float32)
  for _ in range(10):
    tree = _random_tree(rng, rng.integers(1, 20, size=3), lambda m: rng.choice(specials, m))
    n = _flat(tree).size
    for k in range(n + 1):
      _check(tree, k, jax.jit(global_topk_mask))


def test_nan_ranks_last_and_inf_first():
  scores = {"a": jnp.array([jnp.nan, 1.0, jnp.inf]), "b": jnp.array([-jnp.inf, jnp.nan])}
  mask = global_topk_mask(scores, 3)
  np.testing.assert_array_equal(mask["a"], [False, True, True])
  np.testing.assert_array_equal(mask["b"], [True, False])


def test_ties_prefer_earlier_leaves_then_earlier_positions():
  scores = [jnp.array([[1.0, 2.0], [2.0, 1.0]]), jnp.array([2.0, 1.0])]
  mask = global_topk_mask(scores, 4)
  np.testing.assert_array_equal(mask[0], [[True, True], [True, False]])
  np.testing.assert_array_equal(mask[1], [True, False])


def test_traced_k_one_compilation(rng):
  tree = _random_tree(rng, [300, 7, 1000], lambda m: rng.integers(0, 50, m).astype(np.float32))
  traces = []

  @jax.jit
  def f(scores, k):
    traces.append(1)
    return global_topk_mask(scores, k)

  for k in [0, 1, 5, 654, 1306, 1307]:
    _check(tree, k, lambda s, k: f(s, jnp.int32(k)))
  assert len(traces) == 1
  # Traced k outside [0, n] is clipped.
  assert _flat(f(tree, jnp.int32(5000))).sum() == 1307
  assert _flat(f(tree, jnp.int32(-3))).sum() == 0


def test_mixed_dtypes_compared_exactly(rng):
  tree = {
      "bf16": jnp.asarray(rng.standard_normal(500), jnp.bfloat16),
      "f16": jnp.asarray(rng.standard_normal(300), jnp.float16),
      "f32": jnp.asarray(rng.standard_normal(200), jnp.float32),
  }
  for k in [1, 250, 999]:
    _check(tree, k)


def test_threshold_and_num_greater(rng):
  scores = [jnp.asarray(rng.integers(0, 10, 50).astype(np.float32)) for _ in range(3)]
  flat = _flat(scores)
  for k in [1, 20, 150]:
    sel = global_topk_selection(scores, k)
    kth = np.sort(flat)[::-1][k - 1]
    assert float(sel.threshold) == kth
    assert int(sel.num_greater) == int((flat > kth).sum())
  assert np.isnan(global_topk_selection(scores, 0).threshold)


def test_empty_leaves_and_empty_tree():
  scores = {"a": jnp.zeros((0,)), "b": jnp.array([1.0, 3.0]), "c": jnp.zeros((2, 0))}
  mask = global_topk_mask(scores, 1)
  np.testing.assert_array_equal(mask["b"], [False, True])
  assert mask["a"].shape == (0,) and mask["c"].shape == (2, 0)
  assert global_topk_mask({}, 0) == {}


def test_bad_arguments():
  with pytest.raises(ValueError, match=r"k must be in \[0, 2\].*k=3"):
    global_topk_mask([jnp.ones(2)], 3)
  with pytest.raises(ValueError, match="k=-1"):
    global_topk_mask([jnp.ones(2)], -1)
  with pytest.raises(TypeError, match="int32"):
    global_topk_mask([jnp.ones(2, jnp.int32)], 1)
  with pytest.raises(TypeError, match="k must be an integer"):
    global_topk_mask([jnp.ones(2)], jnp.float32(1.0))
