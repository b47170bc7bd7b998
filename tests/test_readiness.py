"""prune_readiness against a float64 NumPy brute force of the final prune."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gsm_optax
from tests.reference import stable_topk_mask


def _params(rng):
  return {"a": {"kernel": jnp.asarray(rng.standard_normal((30, 20)), jnp.float32),
                "bias": jnp.asarray(rng.standard_normal(20), jnp.float32)},
          "b": {"kernel": jnp.asarray(rng.standard_normal((20, 7)) * 0.1, jnp.float32),
                "bias": jnp.asarray(rng.standard_normal(7), jnp.float32)}}


def _reference(params, keep_ratio, tolerance):
  kernels = [np.float64(params["a"]["kernel"]), np.float64(params["b"]["kernel"])]
  flat = np.concatenate([np.abs(k).ravel() for k in kernels])
  q = int(np.floor(keep_ratio * flat.size))
  kept = stable_topk_mask(flat, q)
  threshold = np.sort(flat)[::-1][q - 1]
  removed = np.where(kept, 0.0, flat)
  return {
      "removed_l2_fraction": np.sqrt(np.sum(removed**2) / np.sum(flat**2)),
      "removed_l1_fraction": np.sum(removed) / np.sum(flat),
      "largest_removed": removed.max(),
      "threshold": threshold,
      "num_carrying": int(np.sum(removed > tolerance * threshold)),
  }


@pytest.mark.parametrize("keep_ratio", [0.05, 0.3, 1.0])
def test_matches_brute_force(rng, keep_ratio):
  params = _params(rng)
  got = gsm_optax.prune_readiness(params, keep_ratio, tolerance=0.2)
  want = _reference(params, keep_ratio, 0.2)
  for name, value in want.items():
    np.testing.assert_allclose(float(getattr(got, name)), value, rtol=1e-5, err_msg=name)
  assert np.isnan(float(got.metric_before)) and np.isnan(float(got.metric_after))


def test_eval_fn_sees_params_and_their_pruned_copy_under_jit(rng):
  params = _params(rng)
  x = jnp.asarray(rng.standard_normal((16, 30)), jnp.float32)

  def output_norm(p):
    h = jax.nn.relu(x @ p["a"]["kernel"] + p["a"]["bias"])
    return jnp.sum(jnp.square(h @ p["b"]["kernel"] + p["b"]["bias"]))

  ready = jax.jit(lambda p, r: gsm_optax.prune_readiness(p, r, eval_fn=output_norm))
  got = ready(params, 0.1)
  pruned = gsm_optax.prune(params, 0.1)
  np.testing.assert_allclose(got.metric_before, output_norm(params), rtol=1e-6)
  np.testing.assert_allclose(got.metric_after, output_norm(pruned), rtol=1e-6)
  np.testing.assert_allclose(got.prune_cost, output_norm(params) - output_norm(pruned),
                             rtol=1e-5)
  again = ready(params, 0.4)  # a traced ratio: no recompilation needed, another Q
  want = _reference(params, 0.4, 0.1)
  np.testing.assert_allclose(float(again.removed_l2_fraction), want["removed_l2_fraction"],
                             rtol=1e-5)


def test_an_exactly_sparse_model_is_ready(rng):
  params = gsm_optax.prune(_params(rng), 0.1)
  got = gsm_optax.prune_readiness(params, 0.1)
  assert float(got.removed_l2_fraction) == 0.0
  assert int(got.num_carrying) == 0
  assert float(got.largest_removed) == 0.0


def test_bad_arguments_are_named():
  params = {"w": jnp.ones((3, 3))}
  with pytest.raises(ValueError, match="keep_ratio"):
    gsm_optax.prune_readiness(params, 1.5)
  with pytest.raises(ValueError, match="tolerance"):
    gsm_optax.prune_readiness(params, 0.5, tolerance=-1.0)
  with pytest.raises(ValueError, match="no eligible weights"):
    gsm_optax.prune_readiness({"b": jnp.ones(3)}, 0.5)
