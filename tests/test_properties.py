"""Property-based tests of global_topk_mask and prune (hypothesis).

Values, k, keep ratios and leaf orders are drawn freely; the tree shapes come
from a fixed menu (empty leaves, scalars, size-1 leaves, a leaf larger than the
65,536-bin histogram, many leaves, mixed float dtypes) so that each jitted
function compiles once per shape instead of once per example.

The documented order: numeric, -0 == +0, +inf above every finite value, NaN
(either sign) below everything including -inf; ties go to the earlier leaf in
flattening order, then the earlier row-major position.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gsm_optax
from tests.reference import stable_topk_mask, traced_keep_count

F32, BF16, F16 = jnp.float32, jnp.bfloat16, jnp.float16
SHAPES = [
    [((), F32)],
    [((1,), F32)],
    [((0,), F32), ((1,), F32), ((), F32), ((2, 0), F32), ((3, 2), F32)],
    [((70_000,), F32), ((3,), F32), ((0,), F32)],
    [((5, 4), BF16), ((3, 3), F16), ((7,), F32), ((), BF16)],
    [((2, 3), F32)] + [((1 + i % 3,), F32) for i in range(23)],  # many leaves
    [((4, 4), F32), ((2, 2, 3), F32), ((6,), F32)],
]
SPECIALS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45, 5e-39,
                     1.1754944e-38, 3.4028235e38, -3.4028235e38, 1.0, -1.0, 2.0, 0.5],
                    np.float32)
PROPERTY = settings(deadline=None, max_examples=30, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_topk = jax.jit(gsm_optax.global_topk_mask)


def _draw_values(data, size):
  """Scores mixing duplicates, signed zeros, subnormals, infinities, NaN, any float32."""
  if size > 64:  # large leaves: NumPy from a drawn seed, same pool
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    pool = np.concatenate([SPECIALS, rng.standard_normal(8).astype(np.float32)])
    return rng.choice(pool, size)
  element = st.one_of(st.sampled_from(SPECIALS.tolist()), st.floats(width=32))
  return np.asarray(data.draw(st.lists(element, min_size=size, max_size=size)), np.float32)


# The menus with an eligible leaf for prune (rank >= 2, not empty).
WITH_ELIGIBLE = [i for i, menu in enumerate(SHAPES)
                 if any(len(shape) >= 2 and math.prod(shape) > 0 for shape, _ in menu)]


def _draw_tree(data, menus=None):
  menu = data.draw(st.sampled_from(menus or range(len(SHAPES))), label="shapes")
  leaves = []
  for shape, dtype in SHAPES[menu]:
    values = _draw_values(data, math.prod(shape)).reshape(shape)
    with np.errstate(over="ignore"):  # float32 extremes become inf in float16
      leaves.append(jnp.asarray(values.astype(dtype)))
  return menu, leaves


def _flat(leaves):
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in leaves] or [np.zeros(0)])


def _order_key(x):
  """(is not NaN, value): the documented order as comparable pairs (-0 == +0 as floats)."""
  return ~np.isnan(x), np.where(np.isnan(x), 0.0, x)


@given(st.data())
@PROPERTY
def test_global_topk_mask_equals_brute_force_and_selects_the_largest(data):
  _, leaves = _draw_tree(data)
  flat = _flat(leaves)
  k = data.draw(st.integers(0, flat.size), label="k")
  mask = _topk(leaves, jnp.int32(k))
  chex.assert_trees_all_equal_shapes(mask, leaves)
  assert all(m.dtype == jnp.bool_ for m in mask)
  got = _flat(mask).astype(bool)
  assert got.sum() == k  # exactly k
  np.testing.assert_array_equal(got, stable_topk_mask(flat, k))  # brute force
  # Every selected score >= every unselected one under the documented order.
  finite, value = _order_key(flat)
  if got.any() and (~got).any():
    lowest_sel = min(zip(finite[got], value[got], strict=True))
    highest_unsel = max(zip(finite[~got], value[~got], strict=True))
    assert lowest_sel >= highest_unsel


@given(st.data())
@PROPERTY
def test_result_is_independent_of_leaf_order_up_to_ties(data):
  menu, leaves = _draw_tree(data)
  flat = _flat(leaves)
  k = data.draw(st.integers(0, flat.size), label="k")
  mask = _flat(_topk(leaves, jnp.int32(k))).astype(bool)
  reversed_mask = _topk(leaves[::-1], jnp.int32(k))[::-1]  # undo the reversal
  other = _flat(reversed_mask).astype(bool)
  assert other.sum() == k
  # Entries that do not tie with the k-th score are selected the same way;
  # among the tied ones only how many is fixed (which ones follow the order).
  if k:
    kth = np.sort(np.where(np.isnan(flat), -np.inf, flat))[::-1][k - 1]
    kth_is_nan = np.isnan(flat).sum() > flat.size - k
    tied = np.isnan(flat) if kth_is_nan else (flat == kth) & ~np.isnan(flat)
    np.testing.assert_array_equal(mask[~tied], other[~tied])
    assert mask[tied].sum() == other[tied].sum()
  else:
    assert not other.any()


@given(st.data())
@PROPERTY
def test_prune_keeps_the_largest_magnitudes_of_eligible_leaves(data):
  _, leaves = _draw_tree(data, WITH_ELIGIBLE)
  params = {f"p{i:02d}": leaf for i, leaf in enumerate(leaves)}
  eligible = {name: leaf.ndim >= 2 and leaf.size > 0 for name, leaf in params.items()}
  n = sum(leaf.size for name, leaf in params.items() if eligible[name])
  assert n > 0  # every example checks a prune
  ratio = data.draw(st.floats(0.0, 1.0, exclude_min=True, width=32), label="keep_ratio")
  # A traced ratio (as under inject_hyperparams or jit) gives the documented
  # Q = floor(ratio * n) in float32 up to rounding, clipped to [1, n].
  k = traced_keep_count(ratio, n)
  pruned = _prune(params, eligible)(params, jnp.float32(ratio))
  names = sorted(params)
  mags = _flat([jnp.abs(params[name].astype(F32)) for name in names if eligible[name]])
  keep = stable_topk_mask(mags, k)
  offset = 0
  for name in names:
    leaf, out = np.asarray(params[name]), np.asarray(pruned[name])
    assert out.dtype == leaf.dtype and out.shape == leaf.shape
    bits = lambda x: x.view(f"u{x.dtype.itemsize}")
    if not eligible[name]:
      np.testing.assert_array_equal(bits(out), bits(leaf))  # untouched, bit for bit
      continue
    want = np.where(keep[offset:offset + leaf.size].reshape(leaf.shape), leaf,
                    np.zeros((), leaf.dtype))
    np.testing.assert_array_equal(bits(out), bits(want))
    offset += leaf.size


_PRUNE_CACHE = {}


def _prune(params, eligible):
  """prune jitted once per tree shape, with the keep ratio traced."""
  key = tuple((k, v.shape, str(v.dtype)) for k, v in params.items())
  if key not in _PRUNE_CACHE:
    _PRUNE_CACHE[key] = jax.jit(lambda p, r: gsm_optax.prune(p, r, eligible=eligible))
  return _PRUNE_CACHE[key]


def test_prune_with_a_python_float_uses_the_float64_floor():
  """The eager path: Q = floor(keep_ratio * n) in float64, like int(keep_ratio * n)."""
  params = {"w": jnp.arange(1.0, 50.0).reshape(7, 7)}
  for ratio, k in [(0.5, 24), (1.0, 49), (3 / 49, 3), (0.999, 48)]:
    assert int(jnp.sum(gsm_optax.prune(params, ratio)["w"] != 0)) == k
    assert math.floor(ratio * 49) == k
