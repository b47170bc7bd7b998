"""The paper's models have the paper's layers, parameter counts and initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsm_optax import default_eligible
from gsm_optax.experiments import models


@pytest.mark.parametrize(
    "name, total, eligible",
    [("lenet300", 266_610, 266_200), ("lenet5", 431_080, 430_500)],
)
def test_parameter_counts(name, total, eligible):
  model = models.MODELS[name]()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
  assert models.count_params(params) == total
  flags = jax.tree_util.tree_leaves(default_eligible(params))
  sizes = [x.size for x in jax.tree_util.tree_leaves(params)]
  assert sum(s for s, f in zip(sizes, flags) if f) == eligible
  logits = model.apply({"params": params}, jnp.zeros((3, 28, 28, 1)))
  assert logits.shape == (3, 10)


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_xavier_uniform_kernels_and_zero_biases(name):
  seed = np.random.SeedSequence().entropy % (2**31)
  params = models.MODELS[name]().init(jax.random.PRNGKey(seed), jnp.zeros((1, 28, 28, 1)))
  for path, leaf in jax.tree_util.tree_flatten_with_path(params["params"])[0]:
    leaf = np.asarray(leaf)
    if leaf.ndim == 1:
      np.testing.assert_array_equal(leaf, 0, err_msg=str(path))
      continue
    receptive = int(np.prod(leaf.shape[:-2]))
    fan_in, fan_out = leaf.shape[-2] * receptive, leaf.shape[-1] * receptive
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(leaf).max() <= limit
    # A uniform on [-limit, limit] has standard deviation limit / sqrt(3).
    np.testing.assert_allclose(leaf.std(), limit / np.sqrt(3), rtol=0.1, err_msg=str(path))


def test_lenet5_layers():
  params = models.LeNet5().init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28)))["params"]
  shapes = {k: v["kernel"].shape for k, v in params.items()}
  assert shapes == {"conv1": (5, 5, 1, 20), "conv2": (5, 5, 20, 50), "fc1": (800, 500),
                    "fc2": (500, 10)}


def test_lenet5_pooling_matches_flax_max_pool():
  x = jax.random.normal(jax.random.PRNGKey(np.random.SeedSequence().entropy % (2**31)),
                        (3, 24, 24, 20))
  import flax.linen as nn

  np.testing.assert_array_equal(models._max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


def test_lenet5_convolution_matches_flax_conv():
  import flax.linen as nn

  seed = np.random.SeedSequence().entropy % (2**31)
  x = jax.random.normal(jax.random.PRNGKey(seed), (4, 12, 12, 20))
  conv = models._Conv5x5(50)
  params = conv.init(jax.random.PRNGKey(seed + 1), x)
  params = jax.tree_util.tree_map(
      lambda p: p + jax.random.normal(jax.random.PRNGKey(seed + 2), p.shape), params)
  reference = nn.Conv(50, (5, 5), padding="VALID").apply(params, x)
  np.testing.assert_allclose(conv.apply(params, x), reference, rtol=1e-5, atol=1e-4)
