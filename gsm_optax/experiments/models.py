"""The paper's MNIST models as Flax modules: LeNet-300-100 and LeNet-5 (Caffe).

Both take normalised images shaped ``[batch, 28, 28, 1]`` (or ``[batch, 28, 28]``)
and return logits ``[batch, 10]``. Kernels are Xavier-uniform and biases zero,
as in the authors' code.

References:
  LeCun et al., "Gradient-based learning applied to document recognition", 1998.
  Ding et al., "Global Sparse Momentum SGD for Pruning Very Deep Neural Networks",
  NeurIPS 2019, Section 4.1.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["LeNet300100", "LeNet5", "MODELS", "count_params"]

_xavier = nn.initializers.xavier_uniform()


class LeNet300100(nn.Module):
  """784-300-100-10 ReLU MLP: 266,200 kernel weights + 410 biases."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(300, kernel_init=_xavier, name="fc1")(x))
    x = nn.relu(nn.Dense(100, kernel_init=_xavier, name="fc2")(x))
    return nn.Dense(self.num_classes, kernel_init=_xavier, name="fc3")(x)


class LeNet5(nn.Module):
  """LeNet-5, Caffe variant: conv 20@5x5, pool 2, conv 50@5x5, pool 2, dense 500, dense 10.

  ReLU after both convolutions and the first dense layer, as in the authors'
  code. 430,500 kernel weights + 580 biases = 431,080 parameters.
  """

  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim == 3:
      x = x[..., None]
    x = _Conv5x5(20, name="conv1")(x)
    x = _max_pool_2x2(nn.relu(x))
    x = _Conv5x5(50, name="conv2")(x)
    x = _max_pool_2x2(nn.relu(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(500, kernel_init=_xavier, name="fc1")(x))
    return nn.Dense(self.num_classes, kernel_init=_xavier, name="fc2")(x)


class _Conv5x5(nn.Module):
  """A 5x5 'VALID' convolution with ``nn.Conv``'s parameters, computed as one matmul.

  The 25 shifted views of the input are concatenated along the channels
  (im2col) and multiplied by the kernel reshaped to ``[25 * in, out]``. Same
  parameters (``kernel [5, 5, in, out]``, ``bias [out]``) and values as
  ``nn.Conv(out, (5, 5), padding="VALID")``, but on XLA's CPU backend a
  convolution's gradient inside a ``lax.scan`` (how an epoch is run) is about
  12x slower than this matmul, which is what made LeNet-5 training take hours.
  """

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param("kernel", _xavier, (5, 5, channels, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    h, w = x.shape[1] - 4, x.shape[2] - 4
    patches = jnp.concatenate(
        [x[:, i:i + h, j:j + w, :] for i in range(5) for j in range(5)], axis=-1)
    return patches @ kernel.reshape(25 * channels, self.features).astype(x.dtype) + bias


def _max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling, stride 2, on even-sized NHWC maps.

  The same values as ``nn.max_pool(x, (2, 2), strides=(2, 2))``, written as a
  reshape and a max: its gradient compiles to element-wise selects instead of
  XLA's ``select_and_scatter``, which makes a LeNet-5 training step on a CPU
  about 1.4x faster.
  """
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


MODELS: dict[str, type[nn.Module]] = {"lenet300": LeNet300100, "lenet5": LeNet5}


def count_params(params) -> int:
  """Total number of scalars in a parameter pytree."""
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
