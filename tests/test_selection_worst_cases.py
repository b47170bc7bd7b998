"""The counting selection (what accelerators and sharded leaves run) on its worst
cases, against a stable NumPy argsort: ties at the threshold, mostly zeros, two
values, NaN/inf/subnormals, one huge score, k = 1 and k = n, k changing every
step under one jit, float64 and bfloat16, leaves of size 1 and leaves bigger than
the sample, with more scores than the band buffer so every stage runs."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsm_optax import global_topk_mask, selection
from tests.reference import stable_topk_mask

SIZES = [1, 7, 150_001, 70_000, 8]  # 220k scores: past the 131k buffer and the 65k sample
N = sum(SIZES)


def _counting(scores, k):
  return selection._select(scores, k, "counting")[0].mask


COUNTING = jax.jit(_counting)


def _tree(flat, dtype=np.float32):
  leaves, start = [], 0
  for size in SIZES:
    leaf = flat[start:start + size]
    leaves.append(jnp.asarray(leaf.reshape(-1, 2) if size % 2 == 0 else leaf, dtype))
    start += size
  return leaves


def _check(flat, ks, dtype=np.float32, fn=COUNTING):
  tree = _tree(flat, dtype)
  exact = np.concatenate([np.asarray(x, np.float64).ravel() for x in tree])
  for k in ks:
    got = np.concatenate([np.asarray(m).ravel() for m in fn(tree, jnp.int32(k))])
    assert got.sum() == k
    np.testing.assert_array_equal(got, stable_topk_mask(exact, k), err_msg=f"k={k}")


def _ks(rng):
  return [1, 2, N - 1, N, *rng.integers(1, N, 3)]


CASES = {
    "all equal": lambda rng: np.full(N, 0.25, np.float32),
    "mostly zero": lambda rng: np.where(rng.random(N) < 0.95, 0,
                                        rng.random(N)).astype(np.float32),
    "two values": lambda rng: rng.choice(np.float32([1e-3, 2e-3]), N),
    "specials": lambda rng: rng.choice(np.float32(
        [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 3e-39, 1.17549435e-38,
         1.0, -1.0]), N),
    "one huge, rest tiny": lambda rng: np.concatenate(
        [np.float32([3e38]), rng.random(N - 1).astype(np.float32) * 1e-30])[rng.permutation(N)],
    "gradient-like": lambda rng: np.abs(rng.standard_normal(N) * rng.standard_normal(N) * 1e-4
                                        ).astype(np.float32),
    "heavy tail with ties": lambda rng: np.round(rng.standard_cauchy(N), 1).astype(np.float32),
}


@pytest.mark.parametrize("case", list(CASES))
def test_worst_cases_against_argsort(rng, case):
  flat = CASES[case](rng)
  ks = _ks(rng)
  # k at the edge of a tie: the number of scores above the most common value.
  values, counts = np.unique(flat[~np.isnan(flat)], return_counts=True)
  common = values[np.argmax(counts)]
  ks += [int(np.sum(flat > common)), int(np.sum(flat > common)) + 1]
  _check(flat, [k for k in ks if 1 <= k <= N])


def test_k_schedule_under_one_jit(rng):
  flat = np.abs(rng.standard_normal(N)).astype(np.float32)
  flat[rng.random(N) < 0.3] = 0  # pruned weights score 0
  traces = []

  @jax.jit
  def select(scores, k):
    traces.append(1)
    return _counting(scores, k)

  schedule = np.linspace(N, N // 20, 12).astype(int)  # keep ratio 1 -> 0.05
  _check(flat, schedule, fn=select)
  assert len(traces) == 1


def test_bfloat16_scores(rng):
  flat = np.asarray(jnp.asarray(rng.standard_normal(N), jnp.bfloat16), np.float32)
  _check(flat, _ks(rng), dtype=jnp.bfloat16)


def test_float64_scores(rng):
  """float64 needs x64, set before JAX starts: checked in a fresh process."""
  code = f"""
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
from tests import test_selection_worst_cases as t
rng = np.random.default_rng({int(rng.integers(2**31))})
flat = rng.standard_normal(t.N) * 1e-3
flat[rng.random(t.N) < 0.5] = 1e-3 + 1e-12  # ties that float32 would merge with 1e-3
t._check(flat, t._ks(rng), dtype=np.float64)
assert t._tree(flat, np.float64)[2].dtype == np.float64
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=600, cwd=__file__.rsplit("/tests/", 1)[0])
  assert out.returncode == 0, out.stderr[-3000:]


def test_public_function_matches_counting_path(rng):
  flat = np.where(rng.random(N) < 0.5, 0, rng.random(N)).astype(np.float32)
  tree = _tree(flat)
  for k in [1, N // 3, N // 2 + 7]:
    a = global_topk_mask(tree, k)
    b = COUNTING(tree, jnp.int32(k))
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)
