"""Sparse export: BCOO leaves, a compact pickle-free file, the same logits."""

import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import sparse as jsparse

import gsm_optax
from gsm_optax.experiments.cli import MLP


def _lenet_300_100(rng):
  """LeNet-300-100 with kernels of one scale, so the global prune keeps some of each."""
  model = MLP((300, 100, 10))
  params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 784)))["params"]
  params = jax.tree.map(
      lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype) if p.ndim == 2 else p + 0.1,
      params)
  return model, params


def _dense_bytes(path, params):
  np.savez(path, **{jax.tree_util.keystr(k): np.asarray(v)
                    for k, v in jax.tree_util.tree_leaves_with_path(params)})
  return os.path.getsize(path)


def test_lenet_300_100_at_60x_is_20x_smaller_and_loads_back_exactly(rng, tmp_path):
  model, params = _lenet_300_100(rng)
  pruned = gsm_optax.prune(params, 1 / 60)
  report = gsm_optax.sparsity_report(pruned)
  assert report.eligible_nonzeros == int(266_200 / 60)  # 4436 of the 266,200 weights

  sparse = gsm_optax.to_sparse(pruned)
  for layer in pruned:
    assert isinstance(sparse[layer]["kernel"], jsparse.BCOO)
    assert sparse[layer]["kernel"].nse == int(jnp.count_nonzero(pruned[layer]["kernel"]))
    assert not isinstance(sparse[layer]["bias"], jsparse.BCOO)
  gsm_optax.save_sparse(tmp_path / "sparse.npz", pruned)
  sparse_bytes = os.path.getsize(tmp_path / "sparse.npz")
  dense_bytes = _dense_bytes(tmp_path / "dense.npz", pruned)
  flat = {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(pruned)}
  np.savez_compressed(tmp_path / "dense_zip.npz", **flat)
  zipped = os.path.getsize(tmp_path / "dense_zip.npz")
  print(f"dense {dense_bytes} B, sparse {sparse_bytes} B, {dense_bytes / sparse_bytes:.1f}x"
        f" (zip-compressed dense: {zipped} B)")
  assert dense_bytes >= 20 * sparse_bytes
  assert zipped > sparse_bytes  # smaller than a compressed dense file too

  loaded = gsm_optax.load_sparse(tmp_path / "sparse.npz")
  chex.assert_trees_all_equal(gsm_optax.to_dense(loaded), pruned)
  chex.assert_trees_all_equal_dtypes(gsm_optax.to_dense(loaded), pruned)
  for layer in pruned:  # the same BCOO, not just the same dense values
    chex.assert_trees_all_equal(loaded[layer]["kernel"].indices, sparse[layer]["kernel"].indices)
    chex.assert_trees_all_equal(loaded[layer]["kernel"].data, sparse[layer]["kernel"].data)

  x = jnp.asarray(rng.standard_normal((32, 784)), jnp.float32)
  dense_logits = model.apply({"params": pruned}, x)
  # Densified at load: bit-identical logits.
  chex.assert_trees_all_equal(model.apply({"params": gsm_optax.to_dense(loaded)}, x),
                              dense_logits)
  # The unpruned model gives other logits: the comparison can fail.
  assert not np.array_equal(model.apply({"params": params}, x), dense_logits)


class _SparsifiableMLP(nn.Module):
  """An MLP with jnp.maximum as ReLU: jax.nn.relu is a custom_jvp sparsify cannot trace."""

  @nn.compact
  def __call__(self, x):
    x = jnp.maximum(nn.Dense(64)(x), 0.0)
    return nn.Dense(10)(x)


def test_sparsified_flax_model_on_bcoo_params_matches_dense(rng):
  model = _SparsifiableMLP()
  x = jnp.asarray(rng.standard_normal((16, 200)), jnp.float32)
  params = gsm_optax.prune(model.init(jax.random.PRNGKey(1), x)["params"], 0.05)
  sparse = gsm_optax.to_sparse(params)
  got = jax.jit(jsparse.sparsify(model.apply))({"params": sparse}, x)
  want = model.apply({"params": params}, x)
  assert isinstance(got, jax.Array)
  # Sparse sums add the same products in another order: equal up to rounding.
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_round_trip_of_dtypes_shapes_and_containers(rng, tmp_path):
  conv = rng.standard_normal((3, 3, 4, 8)).astype(np.float32)
  conv[np.abs(conv) < 1.5] = 0
  w16 = rng.standard_normal((5, 7)).astype(np.float16)
  w16[:, :5] = 0
  specials = np.array([[np.nan, 0.0, np.inf], [-np.inf, 0.0, 1e-45]], np.float32)
  params = {
      "conv": {"kernel": jnp.asarray(conv), "bias": jnp.ones(8, jnp.bfloat16)},
      "bf16": jnp.asarray(rng.standard_normal((6, 6)) * (rng.random((6, 6)) < 0.2),
                          jnp.bfloat16),
      "f16": jnp.asarray(w16),
      "all_zero": jnp.zeros((4, 4)),
      "empty": jnp.zeros((0, 3)),
      "specials": jnp.asarray(specials),
      "layers": [jnp.eye(3), (jnp.float32(2.0), jnp.arange(3, dtype=jnp.int32))],
  }
  path = tmp_path / "p.npz"
  gsm_optax.save_sparse(path, params)
  loaded = gsm_optax.load_sparse(path)
  assert isinstance(loaded["layers"], list) and isinstance(loaded["layers"][1], tuple)
  assert loaded["all_zero"].nse == 0 and loaded["conv"]["kernel"].nse == int((conv != 0).sum())
  assert loaded["specials"].nse == 4  # NaN and inf are kept, zeros dropped
  dense = gsm_optax.to_dense(loaded)
  chex.assert_trees_all_equal_dtypes(dense, params)
  chex.assert_trees_all_equal(dense, params)  # NaN == NaN here
  # The file holds plain arrays only.
  with np.load(path, allow_pickle=False) as data:
    assert all(data[k].dtype != object for k in data.files)


def test_unsorted_bcoo_is_saved_in_order_and_duplicates_are_refused(tmp_path):
  values, indices = jnp.array([3.0, 1.0, 2.0]), jnp.array([[2, 1], [0, 0], [1, 2]])
  unsorted = jsparse.BCOO((values, indices), shape=(3, 3))
  gsm_optax.save_sparse(tmp_path / "u.npz", {"w": unsorted})
  loaded = gsm_optax.load_sparse(tmp_path / "u.npz")["w"]
  chex.assert_trees_all_equal(loaded.indices, jnp.array([[0, 0], [1, 2], [2, 1]], jnp.int32))
  chex.assert_trees_all_equal(gsm_optax.to_dense({"w": loaded}), {"w": unsorted.todense()})
  duplicate = jsparse.BCOO((values, jnp.array([[0, 0], [0, 0], [1, 1]])), shape=(3, 3))
  with pytest.raises(ValueError, match="duplicate indices"):
    gsm_optax.save_sparse(tmp_path / "d.npz", {"w": duplicate})


def test_eligible_controls_which_leaves_become_sparse():
  params = {"w": jnp.eye(4), "v": jnp.eye(4), "b": jnp.zeros(4)}
  sparse = gsm_optax.to_sparse(params, eligible={"w": True, "v": False, "b": True})
  assert isinstance(sparse["w"], jsparse.BCOO) and isinstance(sparse["b"], jsparse.BCOO)
  assert not isinstance(sparse["v"], jsparse.BCOO)
  chex.assert_trees_all_equal(gsm_optax.to_dense(sparse), params)


def test_bad_inputs(tmp_path):
  with pytest.raises(TypeError, match="already sparse"):
    gsm_optax.to_sparse(gsm_optax.to_sparse({"w": jnp.eye(2)}))
  with pytest.raises(TypeError, match=r"got a Point at params\['p'\]"):
    from collections import namedtuple
    point = namedtuple("Point", "x y")
    gsm_optax.save_sparse(tmp_path / "x.npz", {"p": point(jnp.eye(2), jnp.eye(2))})
  with pytest.raises(TypeError, match=r"string dict keys; got key 1 in params\."):
    gsm_optax.save_sparse(tmp_path / "x.npz", {1: jnp.eye(2)})
  np.savez(tmp_path / "other.npz", a=np.ones(2))
  with pytest.raises(ValueError, match="other.npz' is not a gsm_optax.save_sparse file"):
    gsm_optax.load_sparse(tmp_path / "other.npz")
