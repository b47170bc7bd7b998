"""A small, fast classification training loop used by the examples and tests.

Data lives on the device and an epoch is one jitted ``lax.scan`` over shuffled
minibatches, so there is no host round trip per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

Array = jax.Array


def cross_entropy_loss(apply_fn: Callable, params: Any, images: Array, labels: Array) -> Array:
  logits = apply_fn({"params": params}, images)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_train_epoch(batch_size: int) -> Callable:
  """Returns ``epoch(state, images, labels, rng) -> (state, mean_loss)``, jitted.

  Each epoch draws a random permutation and runs ``len(images) // batch_size``
  steps of ``state.apply_gradients``; the last partial batch is dropped.
  """

  @jax.jit
  def epoch(state: train_state.TrainState, images: Array, labels: Array, rng: Array):
    steps = images.shape[0] // batch_size
    order = jax.random.permutation(rng, images.shape[0])[: steps * batch_size]
    order = order.reshape(steps, batch_size)

    def step(state, idx):
      loss, grads = jax.value_and_grad(
          lambda p: cross_entropy_loss(state.apply_fn, p, images[idx], labels[idx])
      )(state.params)
      return state.apply_gradients(grads=grads), loss

    state, losses = jax.lax.scan(step, state, order)
    return state, losses.mean()

  return epoch


def correct_count(apply_fn: Callable, params: Any, images: Array, labels: Array,
                  batch_size: int = 1000) -> Array:
  """How many images are classified correctly (int32); pure, for use under ``jit``.

  Evaluated ``batch_size`` images at a time (``lax.map``) when that divides the number of
  images, so that a convolution's im2col buffer stays small.
  """

  def count(batch):
    x, y = batch
    return jnp.sum(jnp.argmax(apply_fn({"params": params}, x), -1) == y, dtype=jnp.int32)

  n = images.shape[0]
  if n <= batch_size or n % batch_size:
    return count((images, labels))
  batches = (images.reshape(n // batch_size, batch_size, *images.shape[1:]),
             labels.reshape(n // batch_size, batch_size))
  return jnp.sum(jax.lax.map(count, batches))


def accuracy(apply_fn: Callable, params: Any, images: Array, labels: Array) -> float:
  """Top-1 accuracy in [0, 1]: :func:`correct_count`, jitted, over the number of images."""
  return int(_jit_correct_count(apply_fn, params, images, labels)) / images.shape[0]


_jit_correct_count = jax.jit(correct_count, static_argnums=(0, 4))
