"""Export of structurally pruned models: narrower layers, the same logits."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gsm_optax
from gsm_optax import GroupMember
from gsm_optax.experiments import models
from gsm_optax.export import (
    Channels,
    Layer,
    count_macs,
    export_pruned,
    sequential_coupling,
    trace_layers,
)


def _key(rng):
  return jax.random.PRNGKey(int(rng.integers(2**31)))


def _numpy(params):
  return jax.tree_util.tree_map(lambda x: np.array(x, np.float32), params)


def _assert_same_logits(narrow, dense):
  scale = float(np.abs(dense).max())
  chex.assert_trees_all_close(narrow, dense, rtol=1e-5, atol=1e-5 * max(scale, 1.0))


def _some(rng, n, fraction):
  """A random boolean mask of n entries with about ``fraction`` True, never all True."""
  mask = rng.random(n) < fraction
  mask[rng.integers(n)] = False
  return mask


def _ranked(alive, rows, size):
  """Indices of ``rows`` (original flattened numbering) in the narrowed numbering."""
  rank = np.cumsum(alive) - 1
  return (rows // size) * int(alive.sum()) + rank[rows % size]


def test_lenet300_export_matches_the_pruned_model(rng):
  model = models.LeNet300100()
  params = _numpy(model.init(_key(rng), jnp.zeros((1, 28, 28, 1)))["params"])
  for layer in params.values():  # rows of random magnitudes, random biases
    k = layer["kernel"]
    layer["kernel"] = k / np.linalg.norm(k, axis=1, keepdims=True) * rng.lognormal(
        0, 1, (k.shape[0], 1)).astype(np.float32)
    layer["bias"] = rng.normal(0, 0.1, layer["bias"].shape).astype(np.float32)
  cut = _some(rng, 300, 0.1)  # some fc1 neurons lose their producers instead
  params["fc1"]["kernel"][:, cut] = 0
  params["fc1"]["bias"][cut] = 0
  ratio = float(rng.uniform(0.2, 0.6))
  pruned = _numpy(gsm_optax.prune(params, ratio, groups=gsm_optax.input_groups(params)))

  layers = trace_layers(model, jnp.zeros((1, 28, 28, 1)))
  exported = export_pruned(pruned, sequential_coupling(layers))

  k1, k2, k3 = (pruned[n]["kernel"] for n in ("fc1", "fc2", "fc3"))
  b1, b2 = pruned["fc1"]["bias"], pruned["fc2"]["bias"]
  pixels = np.flatnonzero((k1 != 0).any(axis=1))
  h1 = ((k1 != 0).any(axis=0) | (b1 != 0)) & (k2 != 0).any(axis=1)
  h2 = ((k2 != 0).any(axis=0) | (b2 != 0)) & (k3 != 0).any(axis=1)
  assert exported.widths == {"fc1": h1.sum(), "fc2": h2.sum(), "fc3": 10}
  np.testing.assert_array_equal(exported.input_indices["fc1"], pixels)
  assert exported.input_indices["fc2"] is None and exported.input_indices["fc3"] is None
  np.testing.assert_array_equal(exported.kept["fc1 inputs"], pixels)
  np.testing.assert_array_equal(exported.kept["fc1"], np.flatnonzero(h1))
  np.testing.assert_array_equal(exported.kept["fc2"], np.flatnonzero(h2))
  chex.assert_shape(exported.params["fc1"]["kernel"], (pixels.size, h1.sum()))
  chex.assert_shape(exported.params["fc2"]["kernel"], (h1.sum(), h2.sum()))
  chex.assert_shape(exported.params["fc3"]["kernel"], (h2.sum(), 10))
  assert count_macs(layers) == 784 * 300 + 300 * 100 + 100 * 10
  w1, w2 = h1.sum(), h2.sum()
  assert count_macs(layers, exported) == pixels.size * w1 + w1 * w2 + w2 * 10

  x = jnp.asarray(rng.normal(size=(8, 28, 28, 1)), jnp.float32)
  dense = model.apply({"params": pruned}, x)
  narrow = models.exported_model("lenet300", exported).apply({"params": exported.params}, x)
  _assert_same_logits(narrow, dense)


def test_lenet5_export_matches_the_pruned_model(rng):
  model = models.LeNet5()
  params = _numpy(model.init(_key(rng), jnp.zeros((1, 28, 28, 1)))["params"])
  for layer in params.values():
    layer["bias"] = rng.normal(0, 0.1, layer["bias"].shape).astype(np.float32)
  for name in ("conv1", "conv2"):  # whole output filters: kernel slice and bias
    dead = _some(rng, params[name]["bias"].size, 0.3)
    params[name]["kernel"][..., dead] = 0
    params[name]["bias"][dead] = 0
  params["conv2"]["kernel"][:, :, _some(rng, 20, 0.1), :] = 0  # conv1 channels nobody reads
  params["fc1"]["kernel"][_some(rng, 800, 0.3)] = 0  # single positions of conv2's map
  unread = rng.choice(50, 3, replace=False)  # conv2 channels unread at every position
  params["fc1"]["kernel"].reshape(16, 50, 500)[:, unread] = 0
  params["fc2"]["kernel"][_some(rng, 500, 0.3)] = 0

  layers = trace_layers(model, jnp.zeros((1, 28, 28, 1)))
  assert [(layer.name, layer.kind) for layer in layers] == [
      ("conv1", "conv"), ("conv2", "conv"), ("fc1", "dense"), ("fc2", "dense")]
  assert count_macs(layers) == 24 * 24 * 25 * 20 + 8 * 8 * 25 * 20 * 50 + 800 * 500 + 500 * 10
  coupling = sequential_coupling(layers)
  assert [(c.name, c.size) for c in coupling] == [
      ("conv1 inputs", 1), ("conv1", 20), ("conv2", 50), ("fc1", 500)]
  exported = export_pruned(params, coupling)

  k1, k2, k3, k4 = (params[n]["kernel"] for n in ("conv1", "conv2", "fc1", "fc2"))
  b1, b2, b3 = (params[n]["bias"] for n in ("conv1", "conv2", "fc1"))
  a1 = ((k1 != 0).any(axis=(0, 1, 2)) | (b1 != 0)) & (k2 != 0).any(axis=(0, 1, 3))
  a2 = ((k2 != 0).any(axis=(0, 1, 2)) | (b2 != 0)) & (k3 != 0).reshape(16, 50, 500).any(
      axis=(0, 2))
  rows = np.flatnonzero((k3 != 0).any(axis=1) & np.tile(a2, 16))
  a3 = ((k3 != 0).any(axis=0) | (b3 != 0)) & (k4 != 0).any(axis=1)
  assert not a2[unread].any()
  assert exported.widths == {"conv1": a1.sum(), "conv2": a2.sum(), "fc1": a3.sum(), "fc2": 10}
  np.testing.assert_array_equal(exported.input_indices["fc1"], _ranked(a2, rows, 50))
  assert exported.input_indices["conv1"] is None and exported.input_indices["conv2"] is None
  np.testing.assert_array_equal(exported.kept["conv2"], np.flatnonzero(a2))
  chex.assert_shape(exported.params["conv2"]["kernel"], (5, 5, a1.sum(), a2.sum()))
  chex.assert_shape(exported.params["fc1"]["kernel"], (rows.size, a3.sum()))
  assert count_macs(layers, exported) == (24 * 24 * 25 * a1.sum() + 64 * 25 * a1.sum() * a2.sum()
                                          + rows.size * a3.sum() + a3.sum() * 10)

  x = jnp.asarray(rng.normal(size=(4, 28, 28, 1)), jnp.float32)
  dense = model.apply({"params": params}, x)
  narrow = models.exported_model("lenet5", exported).apply({"params": exported.params}, x)
  _assert_same_logits(narrow, dense)


class SmallCNN(nn.Module):
  """A CIFAR-sized CNN: conv, batch norm, conv, pool, flatten, dense, dense."""

  widths: tuple[int, int, int] = (16, 32, 64)

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.widths[0], (3, 3), padding="SAME", name="conv1")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn1")(x))
    x = nn.relu(nn.Conv(self.widths[1], (3, 3), padding="SAME", name="conv2")(x))
    x = nn.avg_pool(x, (4, 4), strides=(4, 4))
    x = nn.relu(nn.Dense(self.widths[2], name="fc1")(x.reshape(x.shape[0], -1)))
    return nn.Dense(10, name="fc2")(x)


def test_cnn_with_batch_norm_export_matches_the_pruned_model(rng):
  model = SmallCNN()
  variables = _numpy(model.init(_key(rng), jnp.zeros((1, 32, 32, 3))))
  params, stats = variables["params"], variables["batch_stats"]
  for leaf in jax.tree_util.tree_leaves(params):
    if leaf.ndim == 1:
      leaf[:] = rng.normal(0, 0.5, leaf.shape)
  stats["bn1"]["mean"][:] = rng.normal(0, 1, 16)
  stats["bn1"]["var"][:] = rng.uniform(0.5, 2.0, 16)

  layers = trace_layers(model, jnp.zeros((1, 32, 32, 3)))
  assert [(layer.name, layer.kind) for layer in layers] == [
      ("conv1", "conv"), ("bn1", "norm"), ("conv2", "conv"), ("fc1", "dense"), ("fc2", "dense")]
  assert layers[0].macs == 32 * 32 * 9 * 3 * 16 and layers[1].scale == "bn1/scale"
  coupling = sequential_coupling(layers)
  assert coupling[1].producers == (GroupMember("conv1/kernel", 3), GroupMember("conv1/bias", 0),
                                   GroupMember("bn1/scale", 0), GroupMember("bn1/bias", 0))
  assert coupling[2].consumers == (GroupMember("fc1/kernel", 0),)
  alive = {}
  for ch in coupling[1:]:  # prune whole output channels: every producer entry
    alive[ch.name] = ~_some(rng, ch.size, 0.5)
    for m in ch.producers:
      leaf = params[m.path.split("/")[0]][m.path.split("/")[1]]
      np.moveaxis(leaf, m.axis, 0)[~alive[ch.name]] = 0

  exported = export_pruned(params, coupling, variables={"batch_stats": stats})
  widths = tuple(int(alive[n].sum()) for n in ("conv1", "conv2", "fc1"))
  assert exported.widths == dict(zip(("conv1", "conv2", "fc1"), widths)) | {"fc2": 10}
  assert all(v is None for v in exported.input_indices.values())
  np.testing.assert_array_equal(exported.variables["batch_stats"]["bn1"]["mean"],
                                stats["bn1"]["mean"][alive["conv1"]])
  chex.assert_shape(exported.params["bn1"]["scale"], (widths[0],))
  chex.assert_shape(exported.params["fc1"]["kernel"], (8 * 8 * widths[1], widths[2]))

  x = jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32)
  dense = model.apply({"params": params, "batch_stats": stats}, x)
  narrow = SmallCNN(widths).apply({"params": exported.params, **exported.variables}, x)
  _assert_same_logits(narrow, dense)


class _Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(5, name="inner")(x)


class _Unsorted(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(7, name="z_first")(x))
    x = _Block(name="b_block")(x)
    return nn.Dense(2, name="a_second")(x)


def test_trace_layers_follows_call_order_not_names(rng):
  x = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  expected = (Layer("z_first", "dense", "z_first/kernel", "z_first/bias", None, (4,), (7,), 28),
              Layer("b_block/inner", "dense", "b_block/inner/kernel", "b_block/inner/bias", None,
                    (7,), (5,), 35),
              Layer("a_second", "dense", "a_second/kernel", "a_second/bias", None, (5,), (2,), 10))
  assert trace_layers(_Unsorted(), x) == expected
  variables = _Unsorted().init(_key(rng), x)
  assert trace_layers(_Unsorted(), x, variables=variables) == expected
  assert [c.name for c in sequential_coupling(expected)] == ["z_first inputs", "z_first",
                                                              "b_block/inner"]


class _ProjectedResidual(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(8, (3, 3), name="conv_in")(x))
    r = nn.relu(nn.Conv(16, (3, 3), name="conv_a")(h))
    r = nn.Conv(16, (3, 3), name="conv_b")(r)
    s = nn.Conv(16, (1, 1), name="shortcut")(h)
    y = nn.relu(r + s)
    return nn.Dense(10, name="fc")(y.reshape(y.shape[0], -1))


class _ConcatSkip(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(8, name="fc_in")(x))
    r = nn.relu(nn.Dense(8, name="fc_a")(h))
    return nn.Dense(3, name="fc_out")(jnp.concatenate([h, r], axis=-1))


class _WithLayerNorm(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.LayerNorm(name="ln")(nn.Dense(8, name="fc1")(x))
    return nn.Dense(3, name="fc2")(x)


@pytest.mark.parametrize("model, x, names", [
    (_ProjectedResidual(), jnp.zeros((1, 8, 8, 3)), ("conv_b", "shortcut")),
    (_ConcatSkip(), jnp.zeros((1, 4)), ("fc_out", "fc_a")),
    (_WithLayerNorm(), jnp.zeros((1, 4)), ("ln",)),
])
def test_sequential_coupling_rejects_models_that_are_not_a_chain(model, x, names):
  with pytest.raises(ValueError, match=".*".join(f"'{n}'" for n in names)):
    sequential_coupling(trace_layers(model, x))


def test_sequential_coupling_rejects_a_norm_of_another_width():
  layers = (Layer("fc1", "dense", "fc1/kernel", "fc1/bias", None, (4,), (8,), 32),
            Layer("bn", "norm", None, "bn/bias", "bn/scale", (6,), (6,), 0),
            Layer("fc2", "dense", "fc2/kernel", "fc2/bias", None, (8,), (2,), 16))
  with pytest.raises(ValueError, match="'bn' has width 6.*8 channels.*'fc1'"):
    sequential_coupling(layers)


def test_export_rejects_a_set_with_every_channel_dead(rng):
  model = models.LeNet300100()
  params = _numpy(model.init(_key(rng), jnp.zeros((1, 28, 28, 1)))["params"])
  params["fc1"]["kernel"][:, rng.permutation(300)[:150]] = 0
  params["fc2"]["kernel"][:] = 0  # no fc1 unit is read any more
  coupling = sequential_coupling(trace_layers(model, jnp.zeros((1, 28, 28, 1))))
  with pytest.raises(ValueError, match=r"every channel of coupling\['fc1'\]"):
    export_pruned(params, coupling)


def test_export_checks_the_coupling_against_the_params(rng):
  params = {"fc1": {"kernel": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)},
            "fc2": {"kernel": jnp.asarray(rng.normal(size=(6, 2)), jnp.float32)}}
  good = Channels("fc1", 6, (GroupMember("fc1/kernel", -1),), (GroupMember("fc2/kernel", 0),))
  exported = export_pruned(params, [good])
  assert exported.widths == {"fc1": 6, "fc2": 2}
  chex.assert_trees_all_equal(exported.params, params)
  with pytest.raises(ValueError, match="'fc9/kernel', which is not a leaf"):
    export_pruned(params, [good._replace(consumers=(GroupMember("fc9/kernel", 0),))])
  with pytest.raises(ValueError, match="length 6, not a multiple of size=4"):
    export_pruned(params, [good._replace(size=4)])
  with pytest.raises(ValueError, match="member twice"):
    export_pruned(params, [good, good._replace(name="again")])


def test_prune_to_a_mac_budget_and_export_a_cnn(rng):
  """The library path end to end: trace, couple, group (BatchNorm with its conv), prune to a
  MAC budget, export. The budget's MAC count is the exported model's, within the budget.

  Ranked per MAC, so that no layer is emptied: ranked by magnitude alone, a tight MAC budget
  can leave a layer with no unit, and the export then refuses the model."""
  model = SmallCNN()
  x = jnp.zeros((1, 32, 32, 3))
  variables = _numpy(model.init(_key(rng), x))
  for leaf in jax.tree_util.tree_leaves(variables["params"]):
    leaf[:] = rng.normal(0, 1, leaf.shape)
  layers = trace_layers(model, x)
  coupling = sequential_coupling(layers)
  groups = gsm_optax.sequential_groups(coupling)
  assert [g.name for g in groups] == ["conv1", "conv2", "fc1"]  # never the logits
  budget = gsm_optax.sequential_mac_costs(layers, coupling, groups, per_mac=True)
  assert budget.total == count_macs(layers)
  ratio = float(rng.uniform(0.1, 0.6))
  pruned = gsm_optax.prune(variables["params"], ratio, groups=groups, budget=budget)
  exported = export_pruned(pruned, coupling, variables={"batch_stats": variables["batch_stats"]})
  kept = {name: int(exported.kept[name].size) for name in ("conv1", "conv2", "fc1")}
  narrow_model = SmallCNN((kept["conv1"], kept["conv2"], kept["fc1"]))
  macs = count_macs(trace_layers(narrow_model, x))
  assert macs == pytest.approx(float(budget.macs(kept)), rel=1e-6)
  assert macs <= ratio * budget.total * (1 + 1e-6)
  xs = jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32)
  dense = model.apply({"params": pruned, "batch_stats": variables["batch_stats"]}, xs)
  narrow = narrow_model.apply({"params": exported.params, **exported.variables}, xs)
  _assert_same_logits(narrow, dense)


def test_guide_structured_example_trains_prunes_and_exports(rng):
  """The structured guide's example as written, its settings included, run in a Flax
  TrainState loop in place of its "train with tx" line: structured GSM to a tenth of the MACs,
  then prune and export; the narrow model's logits are the pruned model's."""
  import pathlib
  import re

  import optax
  from flax.training import train_state

  guide = pathlib.Path(__file__).parent.parent.joinpath("docs", "guides", "structured.md")
  text = guide.read_text()
  code = re.search(r"<!-- fragment: [^>]*test_export\.py[^>]*-->\n```python\n(.*?)```", text,
                   re.S).group(1)
  assert "# ... train with tx ...\n" in code
  code = code.replace("# ... train with tx ...\n", "params = train(tx, params)\n")
  model = SmallCNN()
  x = jnp.asarray(rng.normal(size=(64, 32, 32, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 64))
  variables = model.init(_key(rng), x[:1])
  stats = variables["batch_stats"]

  def train(tx, params):
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    @jax.jit
    def step(state):
      def loss(p):
        logits = state.apply_fn({"params": p, "batch_stats": stats}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return state.apply_gradients(grads=jax.grad(loss)(state.params))

    for _ in range(40):
      state = step(state)
    return state.params

  scope = {"model": model, "x": x, "params": variables["params"], "batch_stats": stats,
           "train": train, "lr_schedule": 0.05, "anneal_steps": 20}
  exec(compile(code, str(guide), "exec"), scope)
  small, pruned, layers = scope["small"], scope["pruned"], scope["layers"]
  narrow_model = SmallCNN((small.widths["conv1"], small.widths["conv2"], small.widths["fc1"]))
  assert count_macs(trace_layers(narrow_model, x[:1])) <= count_macs(layers) / 10
  assert all(width >= 1 for width in small.widths.values())
  dense = model.apply({"params": pruned, "batch_stats": stats}, x[:8])
  narrow = narrow_model.apply({"params": small.params, **small.variables}, x[:8])
  _assert_same_logits(narrow, dense)


def test_sequential_coupling_refuses_an_identity_skip_with_matching_widths(rng):
  """The issue's model: shapes alone look like a chain 5-8-8-8-3; the jaxpr shows the add."""
  from tests.structure_models import ResidualMLP

  layers = trace_layers(ResidualMLP(), jnp.zeros((1, 5)))
  assert dict((layer.name, layer.shares) for layer in layers)["Dense_0"] == ("Dense_1",)
  with pytest.raises(ValueError, match="'Dense_0' shares its output channels with"
                                       r" \['Dense_1'\].*gsm_optax.couple"):
    sequential_coupling(layers)
