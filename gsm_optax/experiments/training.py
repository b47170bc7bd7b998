"""A small, fast classification training loop used by the examples and tests.

Data lives on the device; an epoch draws a permutation on the device and dispatches one jitted
step per minibatch, each gathering its images there, so nothing waits on the host until the
epoch's mean loss is read. (Not one ``lax.scan`` over the epoch: XLA:CPU ran a ResNet-20 step
15-20x slower inside a while loop than as its own computation, while a LeNet's ran alike.)
A :class:`TrainState` carries the
model's variable collections besides its parameters (BatchNorm's ``batch_stats``), updated by
every training step and used, as running averages, by evaluation; models called with it take
``train`` and get a fresh ``dropout`` RNG every step. :func:`progress_bar` shows the epochs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

Array = jax.Array
PyTree = Any


class TrainState(train_state.TrainState):
  """Flax's ``TrainState`` with the model's other variable collections.

  Attributes:
    model_state: ``{collection: variables}`` for every collection but ``params``
      (``{"batch_stats": ...}`` for BatchNorm; ``{}`` for a model without any). The
      model is applied with ``train=True``, these collections mutable and a ``dropout``
      RNG in training, and with ``train=False`` in evaluation.
  """

  model_state: PyTree = flax.struct.field(default_factory=dict)


def cross_entropy_loss(apply_fn: Callable, params: Any, images: Array, labels: Array) -> Array:
  logits = apply_fn({"params": params}, images)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _training_loss(state: TrainState, params: PyTree, images: Array, labels: Array,
                   rng: Array) -> tuple[Array, PyTree]:
  """The minibatch loss in training mode, and the model state it leaves."""
  logits, model_state = state.apply_fn(
      {"params": params, **state.model_state}, images, train=True,
      mutable=list(state.model_state), rngs={"dropout": rng})
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, dict(model_state)


def make_train_epoch(batch_size: int) -> Callable:
  """Returns ``epoch(state, images, labels, rng) -> (state, mean_loss)``.

  Each epoch draws a random permutation and runs ``len(images) // batch_size``
  steps of ``state.apply_gradients``; the last partial batch is dropped. With a
  :class:`TrainState` the model runs in training mode (see there); with Flax's own
  ``TrainState`` it is applied to ``{"params": params}`` alone. The step is jitted once
  per state structure and batch size; steps are dispatched asynchronously, so the host
  only waits when the caller reads the loss.
  """

  @jax.jit
  def order(rng: Array, labels: Array) -> Array:
    steps = labels.shape[0] // batch_size
    return jax.random.permutation(rng, labels.shape[0])[: steps * batch_size].reshape(
        steps, batch_size)

  @jax.jit
  def step(state: train_state.TrainState, images: Array, labels: Array, idx: Array,
           rng: Array) -> tuple[train_state.TrainState, Array]:
    if isinstance(state, TrainState):
      (loss, model_state), grads = jax.value_and_grad(_training_loss, argnums=1, has_aux=True)(
          state, state.params, images[idx], labels[idx], rng)
      return state.apply_gradients(grads=grads, model_state=model_state), loss
    loss, grads = jax.value_and_grad(
        lambda p: cross_entropy_loss(state.apply_fn, p, images[idx], labels[idx])
    )(state.params)
    return state.apply_gradients(grads=grads), loss

  def epoch(state: train_state.TrainState, images: Array, labels: Array, rng: Array):
    batches = order(rng, labels)
    dropout_rng = jax.random.fold_in(rng, 1)
    losses = []
    for i in range(batches.shape[0]):
      state, loss = step(state, images, labels, batches[i], jax.random.fold_in(dropout_rng, i))
      losses.append(loss)
    return state, jnp.mean(jnp.stack(losses))

  return epoch


def correct_count(apply_fn: Callable, params: Any, images: Array, labels: Array,
                  batch_size: int = 1000, model_state: PyTree = None) -> Array:
  """How many images are classified correctly (int32); pure, for use under ``jit``.

  Evaluated ``batch_size`` images at a time (``lax.map``) when that divides the number of
  images, so that a convolution's im2col buffer stays small. ``model_state``: the model's
  other collections (:attr:`TrainState.model_state`), applied in evaluation mode.
  """
  variables = {"params": params, **(model_state or {})}

  def count(batch):
    x, y = batch
    return jnp.sum(jnp.argmax(apply_fn(variables, x), -1) == y, dtype=jnp.int32)

  n = images.shape[0]
  if n <= batch_size or n % batch_size:
    return count((images, labels))
  batches = (images.reshape(n // batch_size, batch_size, *images.shape[1:]),
             labels.reshape(n // batch_size, batch_size))
  return jnp.sum(jax.lax.map(count, batches))


def accuracy(apply_fn: Callable, params: Any, images: Array, labels: Array,
             model_state: PyTree = None) -> float:
  """Top-1 accuracy in [0, 1]: :func:`correct_count`, jitted, over the number of images."""
  count = _jit_correct_count(apply_fn, params, images, labels, 1000, model_state)
  return int(count) / images.shape[0]


_jit_correct_count = jax.jit(correct_count, static_argnums=(0, 4))


def progress_bar(label: str, total: int, initial: int, quiet: bool):
  """tqdm's bar (``tqdm.auto``: a widget in notebooks); in a log file a line every 30 s."""
  try:
    from tqdm.auto import tqdm
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("the experiments need tqdm: pip install 'gsm-optax[experiments]'") from e

  tty = sys.stderr.isatty()
  return tqdm(total=total, initial=initial, desc=label, unit="epoch", disable=quiet,
              file=sys.stderr, mininterval=0.1 if tty else 30.0, dynamic_ncols=tty,
              ascii=not tty)
