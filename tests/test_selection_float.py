"""The CPU selection of float counting passes (what one CPU device runs), run
explicitly on the worst cases of test_selection_worst_cases.py and on random
data, against a stable NumPy argsort; and when it hands over to the radix select."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsm_optax import global_topk_selection, selection
from tests import test_selection_worst_cases as worst
from tests.reference import stable_topk_mask


@jax.jit
def _float(scores, k):
  sel, found = selection._select(scores, k, "float")
  return sel, found.buffered, found.passes


def _masks(scores, k):
  return _float(scores, k)[0].mask


def _flat(tree):
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in tree])


@pytest.mark.parametrize("case", list(worst.CASES))
def test_worst_cases_against_argsort(rng, case):
  flat = worst.CASES[case](rng)
  ks = worst._ks(rng)
  values, counts = np.unique(flat[~np.isnan(flat)], return_counts=True)
  common = values[np.argmax(counts)]
  ks += [int(np.sum(flat > common)), int(np.sum(flat > common)) + 1]
  worst._check(flat, [k for k in ks if 1 <= k <= worst.N], fn=_masks)


def test_threshold_and_count_above_match_numpy(rng):
  """Random leaves of several shapes (1-D, 2-D, 4-D, sizes not multiples of 8 or 248)."""
  shapes = [(3, 3, 17, 40), (1000, 7), (4099,), (1,), (31, 8), (2, 1, 5, 249)]
  tree = [jnp.asarray(np.abs(rng.standard_normal(s) * rng.standard_normal(s)), jnp.float32)
          for s in shapes]
  flat = _flat(tree)
  for k in [1, flat.size // 100, flat.size // 10, flat.size // 2, flat.size - 1, flat.size,
            *rng.integers(1, flat.size, 4)]:
    sel, _, _ = _float(tree, jnp.int32(k))
    got = np.concatenate([np.asarray(m).ravel() for m in sel.mask])
    np.testing.assert_array_equal(got, stable_topk_mask(flat, k), err_msg=f"k={k}")
    kth = np.sort(flat)[::-1][k - 1]
    assert float(sel.threshold) == np.float32(kth)
    assert int(sel.num_greater) == int(np.sum(flat > kth))


def test_same_as_radix_and_public_function(rng):
  tree = worst._tree(np.abs(rng.standard_normal(worst.N)).astype(np.float32))
  for k in [1, worst.N // 7, worst.N // 2]:
    a, _, _ = _float(tree, jnp.int32(k))
    b = selection._select(tree, k, "radix")[0]
    c = global_topk_selection(tree, k)
    for x, y, z in zip(a.mask, b.mask, c.mask):
      np.testing.assert_array_equal(x, y)
      np.testing.assert_array_equal(x, z)
    assert float(a.threshold) == float(b.threshold) == float(c.threshold)
    assert int(a.num_greater) == int(b.num_greater)


def test_k_schedule_under_one_jit(rng):
  flat = np.abs(rng.standard_normal(worst.N)).astype(np.float32)
  flat[rng.random(worst.N) < 0.3] = 0  # pruned weights score 0
  traces = []

  @jax.jit
  def select(scores, k):
    traces.append(1)
    return selection._select(scores, k, "float")[0].mask

  worst._check(flat, np.linspace(worst.N, worst.N // 20, 12).astype(int), fn=select)
  assert len(traces) == 1


def test_bfloat16_scores(rng):
  flat = np.asarray(jnp.asarray(rng.standard_normal(worst.N), jnp.bfloat16), np.float32)
  worst._check(flat, worst._ks(rng), dtype=jnp.bfloat16, fn=_masks)


def test_float64_scores(rng):
  """float64 passes count in float64; x64 must be set before JAX starts."""
  code = f"""
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
from gsm_optax import selection
from tests import test_selection_worst_cases as t
rng = np.random.default_rng({int(rng.integers(2**31))})
flat = np.abs(rng.standard_normal(t.N)) * 1e-3
flat[rng.random(t.N) < 0.3] = 1e-3 + 1e-12  # ties that float32 would merge with 1e-3
flat[:1000] = 1e-3 + rng.random(1000) * 1e-12  # values float32 cannot tell apart
fn = jax.jit(lambda s, k: selection._select(s, k, "float")[0].mask)
t._check(flat, t._ks(rng) + [1000, 1500], dtype=np.float64, fn=fn)
fast = jax.jit(lambda s, k: selection._select(s, k, "float")[1].buffered)
assert not bool(fast(t._tree(np.abs(rng.standard_normal(t.N)), np.float64), jnp.int32(500)))
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=600, cwd=__file__.rsplit("/tests/", 1)[0])
  assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.parametrize("special", [np.nan, 1e-40, 0.0])
def test_scores_the_passes_cannot_count_exactly_fall_back(rng, special):
  """A NaN score, or a k-th score that is 0 or subnormal, hands over to radix."""
  flat = np.abs(rng.standard_normal(worst.N)).astype(np.float32)
  flat[rng.random(worst.N) < 0.5] = special
  k = worst.N - int(np.sum(flat == special)) // 2 if not np.isnan(special) else worst.N // 3
  tree = worst._tree(flat)
  sel, fell_back, _ = _float(tree, jnp.int32(k))
  assert bool(fell_back)
  got = np.concatenate([np.asarray(m).ravel() for m in sel.mask])
  np.testing.assert_array_equal(got, stable_topk_mask(_flat(tree), k))


def test_continuous_scores_need_no_fallback(rng):
  """Distinct gradient-like scores: the passes find the k-th score themselves."""
  flat = np.abs(rng.standard_normal(worst.N) * rng.standard_normal(worst.N)).astype(np.float32)
  tree = worst._tree(flat)
  ks = rng.integers(worst.N // 100, worst.N // 2, 10)
  fell_back = [bool(_float(tree, jnp.int32(k))[1]) for k in ks]
  assert sum(fell_back) <= 2, fell_back
