"""prune, prune_mask and sparsity_report against brute force."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import gsm_optax
from tests.reference import stable_topk_mask


def test_prune_keeps_the_global_top_q_magnitudes(rng):
  params = {"a": jnp.asarray(rng.standard_normal((30, 7)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal(7), jnp.float32),
            "c": jnp.asarray(rng.standard_normal((2, 3, 5, 4)), jnp.float32).astype(jnp.bfloat16)}
  for ratio in [0.01, 0.1, 0.5, 1.0]:
    pruned = gsm_optax.prune(params, ratio)
    flat = np.concatenate([np.abs(np.asarray(params[k], np.float32)).ravel() for k in "ac"])
    q = int(np.floor(ratio * flat.size))
    keep = stable_topk_mask(flat, q)
    got = np.concatenate([np.asarray(pruned[k], np.float32).ravel() != 0 for k in "ac"])
    np.testing.assert_array_equal(got, keep)
    np.testing.assert_array_equal(pruned["b"], params["b"])
    assert pruned["c"].dtype == jnp.bfloat16
    kept = np.concatenate([np.asarray(pruned[k], np.float32).ravel() for k in "ac"])[keep]
    orig = np.concatenate([np.asarray(params[k], np.float32).ravel() for k in "ac"])[keep]
    np.testing.assert_array_equal(kept, orig)


def test_prune_with_custom_eligible_and_mask(rng):
  params = {"w": jnp.asarray(rng.standard_normal((10, 10)), jnp.float32),
            "v": jnp.asarray(rng.standard_normal((10, 10)), jnp.float32)}
  pruned = gsm_optax.prune(params, 0.3, eligible={"w": True, "v": False})
  assert int(jnp.sum(pruned["w"] != 0)) == 30
  np.testing.assert_array_equal(pruned["v"], params["v"])
  mask = gsm_optax.prune_mask(params, 0.3, eligible={"w": True, "v": False})
  assert bool(jnp.all(mask["v"])) and int(jnp.sum(mask["w"])) == 30


def test_prune_bad_inputs():
  with pytest.raises(ValueError, match="keeps none"):
    gsm_optax.prune({"w": jnp.ones((3, 3))}, 0.1)
  with pytest.raises(ValueError, match="no eligible weights"):
    gsm_optax.prune({"b": jnp.ones(3)}, 0.5)


def test_sparsity_report_counts(rng):
  w = rng.standard_normal((20, 10)).astype(np.float32)
  w[w < 0.5] = 0
  params = {"w": jnp.asarray(w), "b": jnp.asarray([0.0, 1.0, 2.0])}
  report = gsm_optax.sparsity_report(params)
  nz = int(np.count_nonzero(w))
  assert report.eligible_size == 200 and report.eligible_nonzeros == nz
  assert report.size == 203 and report.nonzeros == nz + 2
  assert report.compression == pytest.approx(200 / nz)
  assert report.density == pytest.approx(nz / 200)
  rows = {leaf.path: leaf for leaf in report.leaves}
  assert rows["['w']"].shape == (20, 10) and rows["['w']"].eligible
  assert rows["['b']"].nonzeros == 2 and not rows["['b']"].eligible
  table = str(report)
  assert "compression" in table and f"{nz:,}" in table and "(not pruned)" in table
  data = json.loads(json.dumps(report.to_dict()))
  assert data["eligible_nonzeros"] == nz and data["leaves"][1]["shape"] == [20, 10]


def test_report_prune_and_gsm_agree_on_what_is_prunable(rng):
  """One eligibility rule: an int32 matrix (a table of indices) is not prunable by default, so
  sparsity_report does not count it, prune leaves it as it is and gsm accepts the params; marked
  eligible by hand, all three refuse it, naming the leaf."""
  table = jnp.asarray(rng.integers(-5, 5, (6, 4)), jnp.int32)
  kernel = jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)
  params = {"index": table, "kernel": kernel}
  report = gsm_optax.sparsity_report(params)
  assert [leaf.eligible for leaf in report.leaves] == [False, True]
  assert report.eligible_size == kernel.size
  pruned = gsm_optax.prune(params, 0.2)
  np.testing.assert_array_equal(pruned["index"], table)
  assert int(np.count_nonzero(pruned["kernel"])) == int(0.2 * kernel.size)
  gsm_optax.gsm(0.1, 0.2).init(params)
  everything = {"index": True, "kernel": True}
  for call in (lambda: gsm_optax.sparsity_report(params, eligible=everything),
               lambda: gsm_optax.prune(params, 0.2, eligible=everything),
               lambda: gsm_optax.gsm(0.1, 0.2, eligible=everything).init(params)):
    with pytest.raises(TypeError, match=r"\['index'\] of params has dtype int32"):
      call()
