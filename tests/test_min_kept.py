"""No layer emptied without a word: every set keeps its min_kept best groups.

The selections are checked against a brute force written from the definition
(tests/reference.py's min_kept_selection), on random problems where the budget alone
empties a layer, under jit; the residual case checks that a branch can still go when asked.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import gsm_optax
from gsm_optax import GroupMember, Groups
from tests.reference import min_kept_selection


class Chain(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(6)(x))
    x = nn.relu(nn.Dense(5)(x))
    return nn.Dense(3)(x)


class Residual(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(8)(x))  # Dense_0: the stream
    h = h + nn.Dense(8)(nn.relu(nn.Dense(4)(h)))  # Dense_2: the branch's inner width
    return nn.Dense(3)(h)


def _setup(rng, model, quiet):
  """The model's params with the layer ``quiet`` scaled down, so that it ranks last."""
  x = jnp.asarray(rng.standard_normal((4, 7)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(int(rng.integers(1 << 30))), x)
  coupling = gsm_optax.couple(model.apply, variables, x)
  params = jax.tree_util.tree_map(lambda a: a, variables["params"])
  params[quiet] = jax.tree_util.tree_map(lambda a: a * 1e-3, params[quiet])
  return coupling, params, x


def _rms(params, names):
  """Each unit's RMS over its kernel column and bias (the groups' members), in float64."""
  out = []
  for name in names:
    k = np.asarray(params[name]["kernel"], np.float64)
    b = np.asarray(params[name]["bias"], np.float64)
    out.append(np.sqrt((np.sum(k**2, axis=0) + b**2) / (k.shape[0] + 1)))
  return np.concatenate(out)


def _chain_macs(kept):
  f0, f1 = kept[:6].mean(), kept[6:].mean()
  return 7 * 6 * f0 + 6 * 5 * f0 * f1 + 5 * 3 * f1


def _kept_units(tree, names):
  return np.concatenate([np.any(np.asarray(tree[n]["kernel"]) != 0, axis=0) for n in names])


def test_the_chain_coupling_knows_no_layer_can_be_emptied(rng):
  coupling, _, _ = _setup(rng, Chain(), "Dense_1")
  assert [(g.name, g.size, g.min_kept) for g in coupling.groups] == [("Dense_0", 6, 1),
                                                                      ("Dense_1", 5, 1)]
  assert not any(s.can_empty for s in coupling.sets)
  with pytest.raises(ValueError, match="'Dense_1'.*cut the model's outputs off its inputs"):
    coupling.allow_empty("Dense_1")


@pytest.mark.parametrize("budget", ["groups", "macs"])
def test_selection_keeps_a_group_of_every_layer_of_a_chain_under_jit(rng, budget):
  """keep_top_groups ranks by RMS ("group_rms"); the quiet layer would be emptied."""
  coupling, params, _ = _setup(rng, Chain(), "Dense_1")
  ratio = float(rng.uniform(0.15, 0.3))
  rms = _rms(params, ["Dense_0", "Dense_1"])
  if budget == "groups":
    want, held = min_kept_selection(rms, [6, 5], [1, 1], q=int(ratio * 11))
    spec = "groups"
  else:
    spec = coupling.mac_costs()
    assert spec.total == _chain_macs(np.ones(11))
    allowed = ratio * spec.total * (1 + 2.0**-20)
    want, held = min_kept_selection(rms, [6, 5], [1, 1],
                                    fits=lambda kept: _chain_macs(kept) <= allowed)
  assert held.tolist() == [False, True]  # the budget alone empties Dense_1
  tx = gsm_optax.keep_top_groups(ratio, coupling.groups, importance="group_rms", budget=spec)
  grads = jax.tree_util.tree_map(lambda a: jnp.ones_like(a), params)
  out, state = jax.jit(tx.update)(grads, tx.init(params), params)
  np.testing.assert_array_equal(_kept_units(out, ["Dense_0", "Dense_1"]), want)
  np.testing.assert_array_equal(np.asarray(state.held_sets), held)
  stats = gsm_optax.selection_stats(state)
  assert int(stats.held_sets) == 1 and int(stats.keep_count) == want.sum()
  # The same selection through the prune, its report and its warning.
  mask = jax.jit(lambda p: gsm_optax.prune_mask(p, ratio, groups=coupling.groups,
                                                budget=spec))(params)
  np.testing.assert_array_equal(_kept_units(mask, ["Dense_0", "Dense_1"]), want)
  ready = jax.jit(lambda p: gsm_optax.prune_readiness(p, ratio, groups=coupling.groups,
                                                      budget=spec))(params)
  assert int(ready.held_sets) == 1
  with pytest.warns(UserWarning, match="'Dense_1' \\(min_kept=1\\)"):
    gsm_optax.prune(params, ratio, groups=coupling.groups, budget=spec)


def test_min_kept_against_brute_force_with_ties(rng):
  """Random min_kept in {0, 1, 2} and scores with many ties, groups and cost budgets."""
  sizes = [5, 3, 6]
  leaves = {f"s{i}": jnp.asarray(rng.integers(0, 4, (2, n)), jnp.float32)
            for i, n in enumerate(sizes)}
  min_kept = [int(m) for m in rng.integers(0, 3, len(sizes))]
  groups = [Groups(f"s{i}", n, (GroupMember(f"s{i}", 1),), cost=float(i + 1), min_kept=m)
            for i, (n, m) in enumerate(zip(sizes, min_kept))]
  rms = np.concatenate([np.sqrt(np.mean(np.asarray(leaves[f"s{i}"], np.float64) ** 2, axis=0))
                        for i in range(len(sizes))])
  cost = np.concatenate([[i + 1.0] * n for i, n in enumerate(sizes)])
  select = {b: jax.jit(lambda p, r, b=b: (
      gsm_optax.prune_mask(p, r, groups=groups, budget=b),
      gsm_optax.prune_readiness(p, r, groups=groups, budget=b).held_sets))
      for b in ("groups", "cost")}
  for ratio in rng.uniform(0.1, 0.9, 4):  # Q >= 1: a traced ratio keeps at least one
    ratio = float(ratio)
    for budget in ("groups", "cost"):
      if budget == "groups":
        want, held = min_kept_selection(rms, sizes, min_kept, q=int(ratio * sum(sizes)))
      else:
        allowed = ratio * cost.sum() * (1 + 2.0**-20)
        want, held = min_kept_selection(rms, sizes, min_kept,
                                        fits=lambda kept, a=allowed: cost[kept].sum() <= a)
      mask, num_held = select[budget](leaves, ratio)
      got = np.concatenate([np.asarray(mask[f"s{i}"][0]) for i in range(len(sizes))])
      np.testing.assert_array_equal(got, want, err_msg=f"{budget} {ratio} {min_kept}")
      assert int(num_held) == held.sum(), (budget, ratio, min_kept)


def test_gsm_and_gradual_pruning_keep_every_layer_of_a_chain(rng):
  """Trained under jit at a keep ratio whose budget alone empties the quiet layer."""
  coupling, params, x = _setup(rng, Chain(), "Dense_1")
  spec = coupling.mac_costs()
  loss = lambda q: jnp.sum(Chain().apply({"params": q}, x) ** 2)
  tx = gsm_optax.gsm(0.05, 0.2, momentum=0.9, weight_decay=1e-3, passive_weight_decay=0.3,
                     importance="group_rms", groups=coupling.groups, budget=spec)
  gradual = gsm_optax.gradual_magnitude_pruning(optax.sgd(0.05), 0.2, begin_step=0, end_step=4,
                                                update_every=2, groups=coupling.groups,
                                                budget=spec)
  for opt in (tx, gradual):
    p, state = params, opt.init(params)

    @jax.jit
    def step(p, state, opt=opt):
      updates, state = opt.update(jax.grad(loss)(p), state, p)
      return optax.apply_updates(p, updates), state

    for _ in range(6):
      p, state = step(p, state)
    if opt is tx:
      assert int(gsm_optax.selection_stats(state).held_sets) in (0, 1)
      p = gsm_optax.prune(p, 0.2, groups=coupling.groups, budget=spec)
    for name in ("Dense_0", "Dense_1"):
      assert np.any(np.asarray(p[name]["kernel"]) != 0), name


def test_a_residual_branch_may_be_emptied_when_asked(rng):
  coupling, params, x = _setup(rng, Residual(), "Dense_2")
  assert [s.name for s in coupling.sets if s.can_empty] == ["Dense_2"]
  with pytest.raises(ValueError, match="'Dense_0'"):
    coupling.allow_empty("Dense_0")
  ratio = 0.5  # 6 of the 12 groups: the quiet branch's 4 rank last
  with pytest.warns(UserWarning, match="'Dense_2'"):
    kept_one = gsm_optax.prune(params, ratio, groups=coupling.groups)
  assert _kept_units(kept_one, ["Dense_2"]).sum() == 1
  groups = coupling.allow_empty()
  assert [(g.name, g.min_kept) for g in groups] == [("Dense_0", 1), ("Dense_2", 0)]
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # neither prune nor narrow warns: this was asked for
    pruned = jax.jit(lambda p: gsm_optax.prune(p, ratio, groups=groups))(params)
    assert _kept_units(pruned, ["Dense_2"]).sum() == 0
    small = gsm_optax.narrow(coupling, {"params": pruned})
  assert small.widths["Dense_2"] == 0 and small.widths["Dense_0"] == 6
  full = Residual().apply({"params": pruned}, x)
  np.testing.assert_allclose(small.apply(small.variables, x), full, rtol=1e-5, atol=1e-6)
  # The skip still carries the inputs: the narrow model's outputs change with them.
  assert not np.allclose(small.apply(small.variables, x + 1.0), full)


def test_narrow_warns_when_a_layer_of_a_chain_is_emptied(rng):
  coupling, params, _ = _setup(rng, Chain(), "Dense_1")
  params["Dense_1"] = jax.tree_util.tree_map(jnp.zeros_like, params["Dense_1"])
  with pytest.warns(UserWarning, match=r"no channel of \[.*'Dense_1'\] is left"):
    small = gsm_optax.narrow(coupling, {"params": params})
  assert small.widths["Dense_1"] == 0


def test_min_kept_is_checked_at_init(rng):
  params = {"w": jnp.ones((2, 3))}
  with pytest.raises(ValueError, match=r"groups\['w'\].min_kept must be an int in \[0, 3\]"):
    gsm_optax.gsm(0.1, 0.5, groups=[Groups("w", 3, (GroupMember("w", 1),), min_kept=4)]).init(
        params)
