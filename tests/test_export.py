"""Export of structurally pruned chains with couple and narrow: narrower layers, the same logits.

The paper's LeNets and small CNNs, pruned by their input features (single pixels, single
positions of a flattened feature map) as well as by channels: the widths, the gathered input
features and the MACs are checked against NumPy written from the definitions, and the narrow
model's logits against the pruned dense model's on random inputs.
"""

from __future__ import annotations

import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gsm_optax
from gsm_optax import GroupMember
from gsm_optax.experiments import models


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


def _zero_groups(params, groups, rng, fraction=0.5):
  """``params`` (NumPy, changed in place) with about ``fraction`` of every group zeroed, never
  all of a set; the kept masks by group name."""
  alive = {}
  for g in groups:
    alive[g.name] = ~_some(rng, g.size, fraction)
    for m in g.members:
      leaf = params
      for key in m.path.split("/"):
        leaf = leaf[key]
      np.moveaxis(leaf, m.axis, 0)[~alive[g.name]] = 0
  return alive


def test_lenet300_export_gathers_the_pixels_and_matches_the_pruned_model(rng):
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

  coupling = models.couple_model("lenet300", pruned)
  small = gsm_optax.narrow(coupling, {"params": pruned})

  k1, k2, k3 = (pruned[n]["kernel"] for n in ("fc1", "fc2", "fc3"))
  b1, b2 = pruned["fc1"]["bias"], pruned["fc2"]["bias"]
  h1 = ((k1 != 0).any(axis=0) | (b1 != 0)) & (k2 != 0).any(axis=1)
  h2 = ((k2 != 0).any(axis=0) | (b2 != 0)) & (k3 != 0).any(axis=1)
  pixels = np.flatnonzero((k1[:, h1] != 0).any(axis=1))
  assert pixels.size < 784 and h1.sum() < 300 and h2.sum() < 100
  assert small.widths == {"fc1": h1.sum(), "fc2": h2.sum()}
  assert list(small.input_indices) == ["fc1/kernel"]
  np.testing.assert_array_equal(small.input_indices["fc1/kernel"], pixels)
  np.testing.assert_array_equal(small.kept["fc1"], np.flatnonzero(h1))
  np.testing.assert_array_equal(small.kept["fc2"], np.flatnonzero(h2))
  narrow_params = small.variables["params"]
  np.testing.assert_array_equal(narrow_params["fc1"]["kernel"], k1[pixels][:, h1])
  chex.assert_shape(narrow_params["fc2"]["kernel"], (h1.sum(), h2.sum()))
  chex.assert_shape(narrow_params["fc3"]["kernel"], (h2.sum(), 10))
  assert coupling.macs == 784 * 300 + 300 * 100 + 100 * 10
  w1, w2 = h1.sum(), h2.sum()
  assert small.macs == pixels.size * w1 + w1 * w2 + w2 * 10

  x = jnp.asarray(rng.normal(size=(8, 28, 28, 1)), jnp.float32)  # the full input: it gathers
  dense = model.apply({"params": pruned}, x)
  _assert_same_logits(jax.jit(small.apply)(small.variables, x), dense)


def test_lenet5_export_gathers_single_positions_of_the_flattened_map(rng):
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

  coupling = models.couple_model("lenet5", params)
  assert coupling.macs == 24 * 24 * 25 * 20 + 8 * 8 * 25 * 20 * 50 + 800 * 500 + 500 * 10
  assert [g.name for g in coupling.groups] == ["conv1", "conv2", "fc1"]
  small = gsm_optax.narrow(coupling, {"params": params})

  k1, k2, k3, k4 = (params[n]["kernel"] for n in ("conv1", "conv2", "fc1", "fc2"))
  b1, b2, b3 = (params[n]["bias"] for n in ("conv1", "conv2", "fc1"))
  a1 = ((k1 != 0).any(axis=(0, 1, 2)) | (b1 != 0)) & (k2 != 0).any(axis=(0, 1, 3))
  a2 = ((k2 != 0).any(axis=(0, 1, 2)) | (b2 != 0)) & (k3 != 0).reshape(16, 50, 500).any(
      axis=(0, 2))
  a3 = ((k3 != 0).any(axis=0) | (b3 != 0)) & (k4 != 0).any(axis=1)
  rows = np.flatnonzero((k3[:, a3] != 0).any(axis=1) & np.tile(a2, 16))
  assert not a2[unread].any() and rows.size < 16 * a2.sum()
  widths = {name: small.widths[name] for name in ("conv1", "conv2", "fc1")}
  assert widths == {"conv1": a1.sum(), "conv2": a2.sum(), "fc1": a3.sum()}
  assert list(small.input_indices) == ["fc1/kernel"]  # conv1's and conv2's inputs all stay
  np.testing.assert_array_equal(small.input_indices["fc1/kernel"], _ranked(a2, rows, 50))
  np.testing.assert_array_equal(small.kept["conv2"], np.flatnonzero(a2))
  narrow_params = small.variables["params"]
  chex.assert_shape(narrow_params["conv2"]["kernel"], (5, 5, a1.sum(), a2.sum()))
  np.testing.assert_array_equal(narrow_params["fc1"]["kernel"], k3[rows][:, a3])
  assert small.macs == (24 * 24 * 25 * a1.sum() + 64 * 25 * a1.sum() * a2.sum()
                        + rows.size * a3.sum() + a3.sum() * 10)

  x = jnp.asarray(rng.normal(size=(4, 28, 28, 1)), jnp.float32)
  dense = model.apply({"params": params}, x)
  _assert_same_logits(jax.jit(small.apply)(small.variables, x), dense)


@pytest.mark.parametrize("model", ["lenet300", "lenet5"])
def test_a_batch_of_one_at_couple_fixes_the_narrow_models_batch(rng, model):
  """Coupled at a batch of 2, the narrow LeNet runs at any batch; coupled at a batch of 1 (the
  flatten's reshape bakes the 1 in), it runs at 1 and refuses any other batch by name, before
  lowering, telling which shape to couple at."""
  net = models.MODELS[model]()
  params = net.init(_key(rng), jnp.zeros((1, 28, 28, 1)))["params"]
  groups = models.couple_model(model, params).groups
  pruned = gsm_optax.prune(params, 0.5, groups=groups, allocation="uniform")
  apply = lambda v, x: net.apply(v, x)
  for batch in (2, 1):
    coupling = gsm_optax.couple(apply, {"params": pruned},
                                jax.ShapeDtypeStruct((batch, 28, 28, 1), jnp.float32))
    small = gsm_optax.narrow(coupling, {"params": pruned})
    for size in (1, 3, 5):
      x = jnp.asarray(rng.normal(size=(size, 28, 28, 1)), jnp.float32)
      if batch == 1 and size != 1:
        with pytest.raises(ValueError, match=rf"input 0 has shape \({size}, 28, 28, 1\).* a batch"
                           r" of size 1.*ShapeDtypeStruct\(\(2, 28, 28, 1\)"):
          jax.jit(small.apply)(small.variables, x)
      else:
        _assert_same_logits(jax.jit(small.apply)(small.variables, x),
                            net.apply({"params": pruned}, x))


def test_the_lenets_mac_budgets_are_their_layers_macs(rng):
  """``Coupling.mac_costs`` of the LeNets' structured groups: each layer's MACs (written here
  from the architectures) scaled by the groups of its inputs and outputs."""
  lenet300 = _numpy(models.LeNet300100().init(_key(rng), jnp.zeros((1, 28, 28, 1)))["params"])
  lenet5 = _numpy(models.LeNet5().init(_key(rng), jnp.zeros((1, 28, 28, 1)))["params"])
  expected = {
      "lenet300": {(784 * 300, ("fc1 inputs", "fc2 inputs")), (300 * 100, ("fc2 inputs",
                                                                            "fc3 inputs")),
                   (100 * 10, ("fc3 inputs",))},
      "lenet5": {(24 * 24 * 25 * 1 * 20, ("conv1",)),  # 28 - 4 = 24
                 (8 * 8 * 25 * 20 * 50, ("conv1", "conv2")),  # pooled 12 - 4 = 8
                 (800 * 500, ("fc1 inputs", "fc2 inputs")),
                 (500 * 10, ("fc2 inputs",))}}
  for name, params in (("lenet300", lenet300), ("lenet5", lenet5)):
    groups, budget = models.structured_groups(name, params)
    assert {(t.macs, tuple(sorted(t.sets))) for t in budget.terms} == expected[name]
    assert budget.names == tuple(g.name for g in groups)
    assert budget.total == sum(m for m, _ in expected[name])
  _, per_mac = models.structured_groups("lenet5", lenet5, per_mac=True)
  assert per_mac.per_mac and per_mac.terms == budget.terms


def test_mac_costs_refuses_groups_that_span_no_axis_of_the_model(rng):
  params = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 2))}
  coupling = gsm_optax.couple(lambda p, x: jnp.maximum(x @ p["w1"], 0) @ p["w2"], params,
                              jnp.ones((2, 3)))
  g = gsm_optax.Groups("halves", 2, (GroupMember("w1", 1),))
  with pytest.raises(ValueError, match="'halves' .*span one whole axis"):
    coupling.mac_costs([g])
  with pytest.raises(ValueError, match="'other' has member 'w9'"):
    coupling.mac_costs([gsm_optax.Groups("other", 4, (GroupMember("w9", 0),))])
  both = gsm_optax.Groups("both", 4, (GroupMember("w1", 1), GroupMember("w2", 0)))
  assert [t._replace(sets=("w1",)) for t in coupling.mac_costs([both]).terms] == list(
      coupling.mac_costs().terms)  # the same hidden axis
  mixed = gsm_optax.Groups("mixed", 4, (GroupMember("w1", 1), GroupMember("w1", 0)))
  with pytest.raises(ValueError, match="'mixed'"):
    coupling.mac_costs([mixed])


def test_output_groups_of_a_kernel_without_a_bias_raise_no_warning():
  params = {"fc": {"kernel": jnp.ones((4, 3))}, "out": {"kernel": jnp.ones((3, 2)),
                                                        "bias": jnp.ones(2)}}
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    groups = gsm_optax.output_groups(params)
  assert [g.members for g in groups] == [
      (GroupMember("fc/kernel", 1),),
      (GroupMember("out/kernel", 1), GroupMember("out/bias", 0))]


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

  x = jnp.zeros((2, 32, 32, 3))
  coupling = gsm_optax.couple(model.apply, variables, x)
  assert coupling.macs == 32 * 32 * 9 * 3 * 16 + 32 * 32 * 9 * 16 * 32 + 8 * 8 * 32 * 64 + 64 * 10
  assert [g.name for g in coupling.groups] == ["conv1", "conv2", "fc1"]  # never the logits
  assert set(coupling.groups[0].members) == {
      GroupMember("conv1/kernel", 3), GroupMember("conv1/bias", 0),
      GroupMember("bn1/scale", 0), GroupMember("bn1/bias", 0)}
  assert coupling.set("conv2").consumers == (GroupMember("fc1/kernel", 0),)
  alive = _zero_groups(params, coupling.groups, rng)

  small = gsm_optax.narrow(coupling, variables)
  widths = tuple(int(alive[n].sum()) for n in ("conv1", "conv2", "fc1"))
  assert small.widths == {"conv1": widths[0], "conv2": widths[1], "fc1": widths[2],
                          "fc1 inputs (axis 0 of 8x8x32)": 8, "fc1 inputs (axis 1 of 8x8x32)": 8}
  assert small.input_indices == {}  # whole channels only: nothing to gather
  np.testing.assert_array_equal(small.variables["batch_stats"]["bn1"]["mean"],
                                stats["bn1"]["mean"][alive["conv1"]])
  chex.assert_shape(small.variables["params"]["bn1"]["scale"], (widths[0],))
  chex.assert_shape(small.variables["params"]["fc1"]["kernel"], (8 * 8 * widths[1], widths[2]))

  xs = jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32)
  _assert_same_logits(small.apply(small.variables, xs), model.apply(variables, xs))


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


def test_couple_follows_call_order_not_names(rng):
  x = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  variables = _Unsorted().init(_key(rng), x)
  coupling = gsm_optax.couple(_Unsorted().apply, variables, x)
  assert [g.name for g in coupling.groups] == ["z_first", "b_block/inner"]
  assert coupling.set("z_first").consumers == (GroupMember("b_block/inner/kernel", 0),)
  assert coupling.macs == 4 * 7 + 7 * 5 + 5 * 2


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


@pytest.mark.parametrize("model, shape, groups", [
    (_ProjectedResidual(), (2, 8, 8, 3), {"conv_in": {"conv_in"},
                                          "conv_a": {"conv_a"},
                                          "conv_b": {"conv_b", "shortcut"}}),
    (_ConcatSkip(), (2, 4), {"fc_in": {"fc_in"}, "fc_a": {"fc_a"}}),
    (_WithLayerNorm(), (2, 4), {}),
])
def test_models_that_are_not_a_chain_couple_and_export_exactly(rng, model, shape, groups):
  """A residual addition joins the layers that add into it, a concatenation keeps its parts
  apart, and a LayerNorm (which mixes its channels) leaves its layer unprunable."""
  x = jnp.zeros(shape)
  variables = _numpy(model.init(_key(rng), x))
  for leaf in jax.tree_util.tree_leaves(variables):
    leaf[:] = rng.normal(0, 0.5, leaf.shape)
  coupling = gsm_optax.couple(model.apply, variables, x)
  assert {g.name: {m.path.split("/")[0] for m in g.members}
          for g in coupling.groups} == groups
  if not groups:
    assert not coupling.set("fc1").prunable
    assert coupling.set("fc1").reason.startswith("it is reduced over by reduce_sum")
    return
  alive = _zero_groups(variables["params"], coupling.groups, rng)
  small = gsm_optax.narrow(coupling, variables)
  assert {name: small.widths[name] for name in alive} == {n: a.sum() for n, a in alive.items()}
  xs = jnp.asarray(rng.normal(size=(5,) + shape[1:]), jnp.float32)
  _assert_same_logits(small.apply(small.variables, xs), model.apply(variables, xs))


def test_narrow_warns_when_a_layer_of_a_chain_is_emptied(rng):
  model = models.LeNet300100()
  params = _numpy(model.init(_key(rng), jnp.zeros((1, 28, 28, 1)))["params"])
  params["fc1"]["kernel"][:, rng.permutation(300)[:150]] = 0
  params["fc2"]["kernel"][:] = 0  # no fc1 unit is read, and fc2's units compute its bias only
  params["fc2"]["bias"][:] = 0
  coupling = models.couple_model("lenet300", params)
  with pytest.warns(UserWarning, match=r"no channel of \['fc1', 'fc2'\] is left"):
    small = gsm_optax.narrow(coupling, {"params": params})
  assert small.widths == {"fc1": 0, "fc2": 0}
  x = jnp.asarray(rng.normal(size=(3, 28, 28, 1)), jnp.float32)
  _assert_same_logits(small.apply(small.variables, x), model.apply({"params": params}, x))


def test_narrow_checks_the_variables_against_the_coupling(rng):
  params = {"fc1": {"kernel": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)},
            "fc2": {"kernel": jnp.asarray(rng.normal(size=(6, 2)), jnp.float32)}}
  mlp = lambda p, x: jax.nn.relu(x @ p["fc1"]["kernel"]) @ p["fc2"]["kernel"]
  coupling = gsm_optax.couple(mlp, params, jnp.ones((2, 4)))
  small = gsm_optax.narrow(coupling, params)
  assert small.widths == {"fc1": 6} and small.input_indices == {}
  chex.assert_trees_all_equal(small.variables, params)
  with pytest.raises(ValueError, match="fc2/kernel has shape \\(5, 2\\)"):
    gsm_optax.narrow(coupling, {**params, "fc2": {"kernel": jnp.ones((5, 2))}})
  with pytest.raises(ValueError, match="structure"):
    gsm_optax.narrow(coupling, {"fc1": params["fc1"]})


def test_prune_to_a_mac_budget_and_export_a_cnn(rng):
  """The library path end to end: couple (BatchNorm with its conv), prune to a MAC budget,
  narrow. The budget's MAC count is the narrow model's, within the budget.

  Ranked per MAC: ranked by magnitude alone, a tight MAC budget would empty a layer but for
  each set's min_kept."""
  model = SmallCNN()
  x = jnp.zeros((2, 32, 32, 3))
  variables = _numpy(model.init(_key(rng), x))
  for leaf in jax.tree_util.tree_leaves(variables["params"]):
    leaf[:] = rng.normal(0, 1, leaf.shape)
  coupling = gsm_optax.couple(model.apply, variables, x)
  budget = coupling.mac_costs(per_mac=True)
  assert budget.total == coupling.macs  # every layer scales with a group set here
  ratio = float(rng.uniform(0.1, 0.6))
  pruned = gsm_optax.prune(variables["params"], ratio, groups=coupling.groups, budget=budget)
  masked = {**variables, "params": pruned}
  small = gsm_optax.narrow(coupling, masked)
  kept = {name: int(small.kept[name].size) for name in ("conv1", "conv2", "fc1")}
  assert small.macs == pytest.approx(float(budget.macs(kept)), rel=1e-6)
  assert small.macs <= ratio * budget.total * (1 + 1e-6)
  xs = jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32)
  _assert_same_logits(small.apply(small.variables, xs), model.apply(masked, xs))


def _with_widths(model, widths, rng):
  """Random LeNet params pruned to the archived ``widths`` (the notation of
  :func:`structured.kept_widths`) the way the structured runs prune: filters with their
  biases, and rows of the dense kernels (input features)."""
  params = _numpy(models.MODELS[model]().init(_key(rng), jnp.zeros((1, 28, 28, 1)))["params"])

  def keep_rows(kernel, n, must=()):
    rows = np.zeros(kernel.shape[0], bool)
    rows[list(must)] = True
    rows[rng.choice(np.flatnonzero(~rows), n - rows.sum(), replace=False)] = True
    kernel[~rows] = 0

  if model == "lenet300":
    keep_rows(params["fc1"]["kernel"], widths["input pixels"])
    keep_rows(params["fc2"]["kernel"], widths["fc1"])
    keep_rows(params["fc3"]["kernel"], widths["fc2"])
    return params
  conv2 = rng.choice(50, widths["conv2"], replace=False)
  for name, kept in (("conv1", rng.choice(20, widths["conv1"], replace=False)), ("conv2", conv2)):
    dead = np.ones(params[name]["bias"].size, bool)
    dead[kept] = False
    params[name]["kernel"][..., dead] = 0
    params[name]["bias"] = rng.normal(0, 0.1, dead.size).astype(np.float32) * ~dead
  positions = np.arange(800).reshape(16, 50)
  alive_rows = positions[:, conv2].ravel()  # fc1 reads the kept conv2 channels, some positions
  first = positions[0, conv2]  # one row of every kept channel, so that each is read
  rows = np.union1d(first, rng.choice(np.setdiff1d(alive_rows, first),
                                      widths["fc1 inputs"] - first.size, replace=False))
  dead_rows = np.ones(800, bool)
  dead_rows[rows] = False
  params["fc1"]["kernel"][dead_rows] = 0
  keep_rows(params["fc2"]["kernel"], widths["fc2 inputs"])
  return params


def test_archived_structured_results_reproduce_their_widths_and_macs_through_narrow(rng):
  """Every structured run archived in docs/results (exported by the chain path this replaced):
  LeNets pruned to its widths, exported by couple/narrow as the runner now does, give its
  kept widths, MACs and parameter counts. (The runs' params were not archived, so their
  accuracy cannot be re-measured here.)"""
  import json
  import pathlib

  from gsm_optax.experiments.structured import kept_widths

  runs = sorted(pathlib.Path(__file__).parent.parent.glob("docs/results/structured_*.json"))
  assert len(runs) >= 13
  for path in runs:
    results = json.loads(path.read_text())
    model = results["config"]["model"]
    for phase in ("gsm", "gradual"):
      archived = (results.get(phase) or {}).get("export")
      if not archived:
        continue
      params = _with_widths(model, archived["kept_widths"], rng)
      coupling = models.couple_model(model, params)
      small = gsm_optax.narrow(coupling, {"params": params})
      assert kept_widths(model, small) == archived["kept_widths"], path.name
      assert (coupling.macs, small.macs) == (archived["macs_dense"], archived["macs_exported"])
      assert models.count_params(small.variables) == archived["params_exported"], path.name


def test_guide_structured_example_trains_prunes_and_exports(rng):
  """The structured guide's example as written, its settings included, run in a Flax
  TrainState loop in place of its "train with tx" line: structured GSM to a tenth of the MACs,
  then prune and narrow; the narrow model's logits are the pruned model's."""
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
  small, pruned, coupling = scope["small"], scope["pruned"], scope["coupling"]
  assert small.macs <= coupling.macs / 10
  assert all(small.widths[name] >= 1 for name in ("conv1", "conv2", "fc1"))
  dense = model.apply({"params": pruned, "batch_stats": stats}, x)
  _assert_same_logits(scope["logits"], dense)
