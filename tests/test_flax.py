"""GSM in Flax training loops on real data (scikit-learn's digits)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.training import train_state

import gsm_optax
from gsm_optax.experiments.cli import MLP, load_digits_split
from gsm_optax.experiments.training import accuracy, make_train_epoch

KEEP = 0.1


def test_linen_train_state_prunes_digits_to_10x():
  x_train, y_train, x_test, y_test = load_digits_split(seed=1)
  model = MLP((128, 10))
  params = model.init(jax.random.PRNGKey(1), x_train[:1])["params"]
  tx = gsm_optax.gsm(optax.cosine_decay_schedule(0.05, 40 * 44), KEEP, momentum=0.95,
                     weight_decay=1e-2, nesterov=True)
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  epoch = make_train_epoch(32)
  for i in range(40):
    state, _ = epoch(state, x_train, y_train, jax.random.PRNGKey(i))
  stats = gsm_optax.selection_stats(state.opt_state)
  n = 64 * 128 + 128 * 10
  assert int(stats.keep_count) == int(KEEP * n)
  assert int(stats.step) == 40 * (x_train.shape[0] // 32)
  pruned = gsm_optax.prune(state.params, KEEP)
  report = gsm_optax.sparsity_report(pruned)
  assert report.eligible_nonzeros == int(KEEP * n)
  acc = accuracy(model.apply, pruned, x_test, y_test)
  assert acc > 0.85, acc  # chance is 0.1
  # Biases were never pruned.
  for layer in ("Dense_0", "Dense_1"):
    np.testing.assert_array_equal(pruned[layer]["bias"], state.params[layer]["bias"])


class NnxMLP(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    init = nnx.initializers.xavier_uniform()
    self.hidden = nnx.Linear(64, 128, kernel_init=init, rngs=rngs)
    self.out = nnx.Linear(128, 10, kernel_init=init, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1))))


def test_nnx_optimizer_prunes_digits_to_10x():
  x_train, y_train, x_test, y_test = load_digits_split(seed=2)
  model = NnxMLP(nnx.Rngs(2))
  tx = gsm_optax.gsm(0.02, KEEP, momentum=0.95, weight_decay=1e-2, nesterov=True)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  rng = np.random.default_rng(2)
  for _ in range(40):
    order = rng.permutation(x_train.shape[0])
    for start in range(0, len(order) - 63, 64):
      idx = order[start:start + 64]
      step(model, optimizer, x_train[idx], y_train[idx])
  n = 64 * 128 + 128 * 10
  assert int(gsm_optax.selection_stats(optimizer.opt_state).keep_count) == int(KEEP * n)
  params = nnx.state(model, nnx.Param)
  pruned = gsm_optax.prune(params, KEEP)
  nnx.update(model, pruned)
  report = gsm_optax.sparsity_report(nnx.state(model, nnx.Param))
  assert report.eligible_nonzeros == int(KEEP * n)
  assert abs(report.density - KEEP) < 1e-3
  acc = float(jnp.mean(jnp.argmax(model(x_test), -1) == y_test))
  assert acc > 0.85, acc
