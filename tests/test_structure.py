"""Coupling read from the jaxpr and exact export, on the model families people prune.

Every model is random-initialised (random BatchNorm statistics too), random whole
groups of :attr:`Coupling.groups` are zeroed, and the exported narrow model must
compute the masked model's logits (max |diff| <= 1e-5, float32) while removing
exactly the zeroed groups' channels.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gsm_optax
from gsm_optax import _utils
from tests import structure_models as zoo


def _key(rng):
  return jax.random.PRNGKey(int(rng.integers(2**31)))


def _zero_groups(params, groups, rng):
  """``params`` with a random ~40% of every group set zeroed (at least one group of every set,
  never all); the dead masks. No groups fails: an export that removes nothing proves nothing."""
  assert groups, "couple found no group"
  flat = {_utils.path_name(p): np.array(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}
  dead = {}
  for g in groups:
    d = rng.random(g.size) < 0.4
    alive, gone = rng.choice(g.size, 2, replace=False) if g.size > 1 else (0, None)
    d[alive] = False
    if gone is not None:
      d[gone] = True
    dead[g.name] = d
    for m in g.members:
      a = np.moveaxis(flat[m.path], m.axis, 0)  # a view: writes reach flat
      a[d[(np.arange(a.shape[0]) // m.inner) % g.size]] = 0
  leaves = [jnp.asarray(flat[_utils.path_name(p)])
            for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves), dead


def _check_widths(small, dead, coupling):
  for name, d in dead.items():
    assert small.widths[name] == int((~d).sum()) < max(d.size, 2), name
  assert small.macs < coupling.macs


def _assert_close(narrow, dense):
  assert float(jnp.max(jnp.abs(narrow - dense))) <= 1e-5, float(jnp.max(jnp.abs(narrow - dense)))


@pytest.mark.parametrize("name", sorted(zoo.LINEN))
def test_linen_export_is_exact(rng, name):
  make, shape = zoo.LINEN[name]
  model = make()
  x = jnp.zeros(shape)
  variables = zoo.random_variables(model, x, rng)
  coupling = gsm_optax.couple(model.apply, variables, x)
  assert coupling.groups
  pruned, dead = _zero_groups(variables["params"], coupling.groups, rng)
  masked = {**variables, "params": pruned}
  small = gsm_optax.narrow(coupling, masked)
  _check_widths(small, dead, coupling)
  xs = jax.random.normal(_key(rng), (7,) + shape[1:])  # another batch size than traced
  _assert_close(jax.jit(small.apply)(small.variables, xs), jax.jit(model.apply)(masked, xs))
  assert small.macs < coupling.macs


@pytest.mark.parametrize("name", sorted(zoo.NNX))
def test_nnx_export_is_exact_and_the_module_runs_narrow(rng, name):
  make, shape = zoo.NNX[name]
  model = zoo.random_nnx(make, rng)
  coupling = gsm_optax.couple(model, jnp.zeros(shape))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  pruned, dead = _zero_groups(params, coupling.groups, rng)
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, pruned)
  nnx.update(model, state)
  small = gsm_optax.narrow(coupling, model)
  _check_widths(small, dead, coupling)
  xs = jax.random.normal(_key(rng), (3,) + shape[1:])
  dense = nnx.jit(lambda m, x: m(x))(model, xs)
  _assert_close(nnx.jit(lambda m, x: m(x))(small.module, xs), dense)
  _assert_close(jax.jit(small.apply)(small.variables, xs), dense)


def test_resnet20_groups_follow_the_residual_streams_and_macs_match_a_formula(rng):
  widths = (4, 8, 16)
  model = zoo.ResNet(3, widths)
  x = jnp.zeros((2, 8, 8, 3))
  coupling = gsm_optax.couple(model.apply, zoo.random_variables(model, x, rng), x)
  sizes = sorted(g.size for g in coupling.groups)
  # one filter set per block's first conv (9), one stream per stage (3)
  assert sizes == sorted([4] * 3 + [8] * 3 + [16] * 3 + list(widths))
  stream = {m.path for m in coupling.set("Conv_0").producers}
  assert stream == {"Conv_0/kernel", "BatchNorm_0/scale", "BatchNorm_0/bias"} | {
      f"BasicBlock_{b}/{layer}" for b in range(3)
      for layer in ("Conv_1/kernel", "BatchNorm_1/scale", "BatchNorm_1/bias")}
  # conv MACs: spatial * 9 * cin * cout; projections 1x1; the head
  macs = 64 * 9 * 3 * 4
  cin, side = 4, 8
  for stage, w in enumerate(widths):
    for block in range(3):
      if stage and not block:
        side //= 2
        macs += side * side * cin * w  # projection
      macs += side * side * 9 * (cin * w + w * w)
      cin = w
  macs += 16 * 10
  assert coupling.macs == macs


def test_the_issue_residual_example_exports_exactly(rng):
  """h = relu(Dense(8)(x)); h = h + Dense(8)(relu(Dense(8)(h))); Dense(3)(h), uniform prune."""
  model = zoo.ResidualMLP()
  x = jnp.zeros((2, 5))
  variables = zoo.random_variables(model, x, rng)
  coupling = gsm_optax.couple(model.apply, variables, x)
  assert {frozenset(m.path for m in g.members) for g in coupling.groups} == {
      frozenset({"Dense_0/kernel", "Dense_0/bias", "Dense_1/kernel", "Dense_1/bias"}),
      frozenset({"Dense_2/kernel", "Dense_2/bias"})}
  pruned = jax.jit(lambda p: gsm_optax.prune(p, 0.5, groups=coupling.groups,
                                             allocation="uniform"))(variables["params"])
  small = gsm_optax.narrow(coupling, {"params": pruned})
  assert small.widths == {"Dense_0": 4, "Dense_2": 4}
  # both sides of the add keep the same channels
  kept = small.kept["Dense_0"]
  np.testing.assert_array_equal(np.flatnonzero(np.any(pruned["Dense_1"]["kernel"] != 0, 0)), kept)
  np.testing.assert_array_equal(np.flatnonzero(np.any(pruned["Dense_0"]["kernel"] != 0, 0)), kept)
  xs = jax.random.normal(_key(rng), (9, 5))
  _assert_close(small.apply(small.variables, xs), jax.jit(model.apply)({"params": pruned}, xs))
  assert small.macs == 5 * 4 + 4 * 4 + 4 * 4 + 4 * 3


def test_heads_are_groups_of_query_key_value(rng):
  model = zoo.Transformer(depth=1, width=16, heads=4, hidden=8)
  x = jnp.zeros((2, 5, 7))
  coupling = gsm_optax.couple(model.apply, zoo.random_variables(model, x, rng), x)
  heads = [g for g in coupling.groups if g.size == 4]
  assert len(heads) == 1
  assert {(m.path.rsplit("/", 2)[-2], m.path.rsplit("/", 1)[-1], m.axis) for m in
          heads[0].members} == {(n, k, 1) for n in ("query", "key", "value")
                                for k in ("kernel", "bias")} - {
      (n, "bias", 1) for n in ("query", "key", "value")} | {
      (n, "bias", 0) for n in ("query", "key", "value")}
  stream = coupling.set("Dense_0")
  assert not stream.prunable and "reduce" in stream.reason  # LayerNorm mixes the stream


def test_plain_function_with_reshaped_heads_exports_to_stablehlo(rng):
  """Heads split by a reshape (not DenseGeneral): the kernel's width is heads x head_dim."""
  heads, hd, d = 3, 4, 6

  def attention(p, x):  # x [b, t, d]
    b, t, _ = x.shape
    q = (x @ p["q"]).reshape(b, t, heads, hd)
    k = (x @ p["k"]).reshape(b, t, heads, hd)
    v = (x @ p["v"]).reshape(b, t, heads, hd)
    w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd), axis=-1)
    o = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, t, heads * hd)
    return (o @ p["o"]).mean(1)

  params = {n: jnp.asarray(rng.normal(size=(d, heads * hd)), jnp.float32)
            for n in ("q", "k", "v")}
  params["o"] = jnp.asarray(rng.normal(size=(heads * hd, 2)), jnp.float32)
  x = jnp.zeros((2, 5, d))
  coupling = gsm_optax.couple(attention, params, x)
  (g,) = [g for g in coupling.groups if g.size == heads]
  assert {(m.path, m.axis, m.inner) for m in g.members} == {
      ("q", 1, hd), ("k", 1, hd), ("v", 1, hd)}
  pruned, dead = _zero_groups(params, coupling.groups, rng)
  small = gsm_optax.narrow(coupling, pruned)
  assert small.variables["o"].shape == (int((~dead[g.name]).sum()) * hd, 2)
  xs = jax.random.normal(_key(rng), (4, 5, d))
  exported = jax.export.export(jax.jit(small.apply))(small.variables, xs)
  assert "stablehlo" in exported.mlir_module()
  _assert_close(exported.call(small.variables, xs), attention(pruned, xs))


def test_train_mode_batch_norm_exports_exactly(rng):
  model = zoo.ResNet(1, (4, 8, 8), train=True)
  x = jnp.asarray(rng.normal(size=(4, 8, 8, 3)), jnp.float32)
  variables = zoo.random_variables(model, x, rng)
  apply = lambda v, x: model.apply(v, x, mutable=["batch_stats"])[0]
  coupling = gsm_optax.couple(apply, variables, x)
  pruned, dead = _zero_groups(variables["params"], coupling.groups, rng)
  small = gsm_optax.narrow(coupling, {**variables, "params": pruned})
  _check_widths(small, dead, coupling)
  _assert_close(jax.jit(small.apply)(small.variables, x),
                jax.jit(apply)({**variables, "params": pruned}, x))


def test_gsm_with_a_mac_budget_of_the_coupling_then_export(rng):
  model = zoo.ResidualMLP()
  x = jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)
  y = jnp.asarray(rng.integers(3, size=16))
  variables = zoo.random_variables(model, x, rng)
  coupling = gsm_optax.couple(model.apply, variables, x)
  budget = coupling.mac_costs(per_mac=True)
  tx = gsm_optax.gsm(0.05, 0.5, groups=coupling.groups, budget=budget)
  params = variables["params"]
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": p}, x), y).mean()
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(3):
    params, state = step(params, state)
  pruned = jax.jit(lambda p: gsm_optax.prune(p, 0.5, groups=coupling.groups, budget=budget))(
      params)
  small = gsm_optax.narrow(coupling, {"params": pruned})
  fixed = coupling.macs - budget.total  # MACs no group scales
  assert 0 < small.macs - fixed <= 0.5 * budget.total * (1 + 1e-6)
  _assert_close(jax.jit(small.apply)(small.variables, x),
                jax.jit(model.apply)({"params": pruned}, x))


def test_a_constant_after_a_dead_unit_is_named():
  """sigmoid(0) = 0.5: a unit whose producers are zero still feeds its consumers."""

  def mlp(p, x):
    return jax.nn.sigmoid(x @ p["w1"] + p["b1"]) @ p["w2"]

  params = {"w1": jnp.ones((3, 4)), "b1": jnp.ones(4), "w2": jnp.ones((4, 2))}
  coupling = gsm_optax.couple(mlp, params, jnp.zeros((1, 3)))
  dead = {**params, "w1": params["w1"].at[:, 1].set(0), "b1": params["b1"].at[1].set(0)}
  with pytest.raises(ValueError, match="logistic.*test_structure.py"):
    gsm_optax.narrow(coupling, dead)
  # zeroing the consumer row too makes it removable
  small = gsm_optax.narrow(coupling, {**dead, "w2": dead["w2"].at[1].set(0)})
  assert small.widths == {"w1": 3}


def test_a_batch_norm_offset_on_a_dead_filter_is_named(rng):
  model = nn.Sequential([nn.Conv(4, (3, 3)), nn.BatchNorm(True, use_scale=False), nn.relu,
                         lambda h: h.mean(axis=(1, 2)), nn.Dense(2)])
  x = jnp.zeros((1, 5, 5, 3))
  variables = zoo.random_variables(model, x, rng)
  coupling = gsm_optax.couple(model.apply, variables, x)
  assert len(coupling.groups) == 1
  # random_variables gives running means != 0
  params = jax.tree_util.tree_map(np.array, variables["params"])
  params["layers_0"]["kernel"][..., 0] = 0
  params["layers_0"]["bias"][0] = 0
  params["layers_1"]["bias"][0] = 0
  # a BatchNorm without a scale: its running mean is a constant the zeros cannot cancel
  with pytest.raises(ValueError, match="'(add|sub)' at .*normalization.py"):
    gsm_optax.narrow(coupling, {**variables, "params": params})


def test_unsupported_primitives_are_refused_by_name():
  def looped(p, x):
    return jax.lax.fori_loop(0, 2, lambda i, h: jnp.tanh(h @ p["w"]), x)

  with pytest.raises(ValueError, match="'scan' at .*test_structure.py"):
    gsm_optax.couple(looped, {"w": jnp.ones((3, 3))}, jnp.zeros((1, 3)))

  def scattered(p, x):
    return (x @ p["w"]).at[:, 0].add(1.0)

  with pytest.raises(ValueError, match="'scatter-add'.*test_structure.py"):
    gsm_optax.couple(scattered, {"w": jnp.ones((3, 3))}, jnp.zeros((1, 3)))


def test_the_table_of_rules_is_what_couple_supports(monkeypatch):
  """Every primitive couple and narrow handle is an entry of primitives.RULES, and nothing else:
  without its entry, tanh is refused by name; with it, the model couples and narrows."""
  from gsm_optax.structure import primitives

  def mlp(p, x):
    return jnp.tanh(x @ p["w1"]) @ p["w2"]

  params = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 2))}
  x = jnp.ones((1, 3))
  assert all(rule.couple and rule.zeros for rule in primitives.RULES.values())
  assert {name for name, r in primitives.RULES.items() if r.mac_dims} == {
      "dot_general", "conv_general_dilated"}
  small = gsm_optax.narrow(gsm_optax.couple(mlp, params, x),
                           {**params, "w1": params["w1"].at[:, 0].set(0)})
  assert small.widths == {"w1": 3}
  monkeypatch.delitem(primitives.RULES, "tanh")
  with pytest.raises(ValueError, match="primitive 'tanh' at .*test_structure.py"):
    gsm_optax.couple(mlp, params, x)


def test_a_channel_reduction_makes_the_set_unprunable_not_the_model():
  def model(p, x):
    h = x @ p["w1"]
    h = h / jnp.sqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6)  # RMSNorm
    return jax.nn.relu(h @ p["w2"]) @ p["w3"]

  params = {"w1": jnp.ones((3, 6)), "w2": jnp.ones((6, 5)), "w3": jnp.ones((5, 2))}
  coupling = gsm_optax.couple(model, params, jnp.zeros((1, 3)))
  assert [g.name for g in coupling.groups] == ["w2"]
  assert not coupling.set("w1").prunable
  chex.assert_equal(coupling.set("w1").reason.startswith("it is reduced over by reduce_sum"), True)


def test_guide_own_model_example_runs_and_exports_exactly():
  import pathlib
  import re

  guide = pathlib.Path(__file__).parent.parent / "docs" / "guides" / "structured.md"
  text = guide.read_text()
  code = re.search(r"<!-- own-model-example -->\n```python\n(.*?)```", text, re.S).group(1)
  code = code.replace("range(100)", "range(5)")  # the recipe, not its accuracy
  scope: dict = {}
  exec(compile(code, "structured.md", "exec"), scope)
  small, x = scope["small"], scope["x"]
  dense = scope["model"].apply({"params": scope["pruned"]}, x)
  _assert_close(scope["logits"], dense)
  assert small.macs < scope["coupling"].macs
  assert set(small.widths) == {g.name for g in scope["coupling"].groups}


def test_sub_jaxprs_are_followed_jit_custom_vjp_custom_jvp_checkpoint(rng):
  @jax.custom_vjp
  def double_relu(x):
    return jnp.maximum(x, 0.0) * 2.0

  double_relu.defvjp(lambda x: (double_relu(x), x), lambda x, g: (g * (x > 0) * 2.0,))

  @jax.jit
  def inner(p, h):
    return double_relu(h @ p["w2"] + p["b2"])

  def model(p, x):
    h = jax.checkpoint(lambda h: jax.nn.relu(h @ p["w1"] + p["b1"]))(x)
    return inner(p, h) @ p["w3"]

  shapes = dict(w1=(3, 6), b1=(6,), w2=(6, 5), b2=(5,), w3=(5, 2))
  params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
  coupling = gsm_optax.couple(model, params, jnp.zeros((2, 3)))
  assert {g.name: {m.path for m in g.members} for g in coupling.groups} == {
      "w1": {"w1", "b1"}, "w2": {"w2", "b2"}}
  pruned, dead = _zero_groups(params, coupling.groups, rng)
  small = gsm_optax.narrow(coupling, pruned)
  _check_widths(small, dead, coupling)
  xs = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  _assert_close(jax.jit(small.apply)(small.variables, xs), model(pruned, xs))


def test_embedding_gather_and_a_split_glu(rng):
  """An embedding table's columns are a prunable set (gather keeps them whole); a GLU's two
  halves, split from one kernel, are one set indexed modulo its size."""

  def model(p, ids):
    x = p["embed"][ids]  # [b, t, d]
    a, b = jnp.split(x @ p["w_in"], 2, axis=-1)
    return (a * jax.nn.sigmoid(b)).mean(1) @ p["w_out"]

  d, h = 6, 5
  shapes = dict(embed=(11, d), w_in=(d, 2 * h), w_out=(h, 3))
  params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
  ids = jnp.zeros((2, 4), jnp.int32)
  coupling = gsm_optax.couple(model, params, ids)
  assert {g.name: [(m.path, m.axis, m.inner) for m in g.members] for g in coupling.groups} == {
      "embed": [("embed", 1, 1)], "w_in": [("w_in", 1, 1)]}
  pruned, dead = _zero_groups(params, coupling.groups, rng)
  small = gsm_optax.narrow(coupling, pruned)
  _check_widths(small, dead, coupling)
  assert small.variables["w_in"].shape == (int((~dead["embed"]).sum()),
                                           2 * int((~dead["w_in"]).sum()))
  xs = jnp.asarray(rng.integers(11, size=(3, 4)), jnp.int32)  # any batch, the traced length
  _assert_close(jax.jit(small.apply)(small.variables, xs), model(pruned, xs))
  with pytest.raises(ValueError, match="axis 1 was coupled with size 4 and reduce_sum"):
    small.apply(small.variables, jnp.zeros((3, 7), jnp.int32))  # the mean over t divides by 4


def test_nnx_optimizer_trains_the_coupled_groups_then_exports(rng):
  """nnx.Optimizer gives init a state of variables and update one of arrays: the groups'
  paths must name the same leaves in both."""
  model = zoo.random_nnx(lambda r: zoo.NnxSwiGLU(rngs=r), rng)
  x = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
  y = jnp.asarray(rng.integers(3, size=8))
  coupling = gsm_optax.couple(model, x)
  tx = gsm_optax.gsm(0.05, 0.5, groups=coupling.groups, allocation="uniform")
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
    optimizer.update(model, nnx.grad(loss)(model))

  step(model, optimizer)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  pruned = jax.jit(lambda p: gsm_optax.prune(p, 0.5, groups=coupling.groups,
                                             allocation="uniform"))(params)
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, pruned)
  nnx.update(model, state)
  small = gsm_optax.narrow(coupling, model)
  assert small.widths == {g.name: g.size // 2 for g in coupling.groups}
  _assert_close(nnx.jit(lambda m: m(x))(small.module), nnx.jit(lambda m: m(x))(model))
