"""Structured GSM: groups of weights ranked, masked, decayed and pruned as wholes.

The transformations are checked against float64 NumPy references written from the
equations (tests/reference.py), on random problems with fresh seeds.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gsm_optax
from gsm_optax import GroupMember, Groups
from tests.reference import (
    group_index,
    group_sums,
    min_kept_selection,
    stable_topk_mask,
    structured_gsm_reference,
)
from tests.trees import assert_follows

SHAPES = {"conv": {"kernel": (3, 3, 2, 4), "bias": (4,)},
          "dense": {"kernel": (8, 6), "bias": (6,)},
          "out": {"kernel": (6, 3), "bias": (3,)}}
# Leaves in jax.tree_util order (dict keys sorted).
LEAF = {"conv/bias": 0, "conv/kernel": 1, "dense/bias": 2, "dense/kernel": 3, "out/bias": 4,
        "out/kernel": 5}


def _is(names):
  return lambda p: {k: {kk: f"{k}/{kk}" in names for kk in v} for k, v in p.items()}


SPECS = {
    # Output filters and neurons with their biases, and the input rows of the last layer.
    "outputs and inputs": lambda p: (
        gsm_optax.output_groups(p, eligible=_is({"conv/kernel", "dense/kernel"}))
        + gsm_optax.input_groups(p, eligible=_is({"out/kernel"}))),
    # A filter with the rows of the next layer it feeds (flattened [2 positions, 4 channels]),
    # and a dense unit as its bias and outgoing row.
    "coupled by hand": lambda p: (
        Groups("filters", 4, (GroupMember("conv/kernel", -1), GroupMember("conv/bias", 0),
                              GroupMember("dense/kernel", 0))),
        Groups("units", 6, (GroupMember("dense/bias", 0), GroupMember("out/kernel", 0)))),
}


# The same groups, written from their definitions as (size, [(leaf, axis), ...]): a filter is
# the last axis of its kernel with its bias; a dense unit, the kernel's column with its bias; an
# input of the last layer, its kernel's row.
REFERENCE_SPECS = {
    "outputs and inputs": [(4, [(LEAF["conv/kernel"], 3), (LEAF["conv/bias"], 0)]),
                           (6, [(LEAF["dense/kernel"], 1), (LEAF["dense/bias"], 0)]),
                           (6, [(LEAF["out/kernel"], 0)])],
    "coupled by hand": [(4, [(LEAF["conv/kernel"], 3), (LEAF["conv/bias"], 0),
                             (LEAF["dense/kernel"], 0)]),
                        (6, [(LEAF["dense/bias"], 0), (LEAF["out/kernel"], 0)])],
}


def _reference_spec(name):
  return REFERENCE_SPECS[name]


def _params(rng):
  return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.standard_normal(s), jnp.float32),
                                SHAPES, is_leaf=lambda x: isinstance(x, tuple))


def _problem(rng, steps):
  w0 = jax.tree_util.tree_leaves(_params(rng))
  curv = [[rng.uniform(0.5, 2.0, x.shape) for x in w0] for _ in range(steps)]
  # Targets beyond the weights give g * w of both signs: the |sum| of a group matters.
  target = [[3 * rng.standard_normal(x.shape) for x in w0] for _ in range(steps)]

  def grad_np(t, w):
    return [c * (x - y) for c, x, y in zip(curv[t], w, target[t])]

  def grad_jax(t, w):
    return [jnp.asarray(c, jnp.float32) * (x - jnp.asarray(y, jnp.float32))
            for c, x, y in zip(curv[t], w, target[t])]

  return [np.asarray(x) for x in w0], grad_np, grad_jax


def _assert_follows(tx, tree, w0, grad_jax, reference, steps):
  """:func:`tests.trees.assert_follows` on the leaves ``w0``, given the tree ``tree`` builds."""
  return assert_follows(tx, tree([jnp.asarray(x) for x in w0]),
                        lambda t, p: tree(grad_jax(t, jax.tree.leaves(p))), reference, steps)


@pytest.mark.parametrize("options", [{}, {"passive": 3e-2}, {"ema": 0.7}])
@pytest.mark.parametrize("spec", sorted(SPECS))
def test_structured_gsm_matches_float64_reference(rng, spec, options):
  steps, ratio, beta, eta, lr = 30, 0.3, 0.9, 5e-3, 0.03
  w0, grad_np, grad_jax = _problem(rng, steps)
  treedef = jax.tree_util.tree_structure(_params(rng))
  tree = lambda leaves: jax.tree_util.tree_unflatten(treedef, leaves)
  num_groups = sum(size for size, _ in _reference_spec(spec))
  tx = gsm_optax.gsm(lr, ratio, momentum=beta, weight_decay=eta, groups=SPECS[spec],
                     passive_weight_decay=options.get("passive", 0.0),
                     importance_ema=options.get("ema", 0.0))
  reference = structured_gsm_reference(
      w0, _reference_spec(spec), grad_np, lr, int(ratio * num_groups), beta, eta, steps,
      passive_weight_decay=options.get("passive", 0.0), ema=options.get("ema", 0.0))
  _assert_follows(tx, tree, w0, grad_jax, reference, steps)


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_recommended_gsm_with_groups_matches_float64_reference(rng, spec):
  """recommended_gsm(groups=): groups ranked by RMS, every set keeping the same fraction of its
  groups, that fraction 1 -> r by a cubic, 100x passive decay; followed step by step in float64,
  the anneal reaching r of every set."""
  steps, final, beta, eta, lr, anneal = 30, 0.3, 0.9, 5e-3, 0.03, 20
  w0, grad_np, grad_jax = _problem(rng, steps)
  treedef = jax.tree_util.tree_structure(_params(rng))
  tree = lambda leaves: jax.tree_util.tree_unflatten(treedef, leaves)  # noqa: E731
  tx = gsm_optax.recommended_gsm(lr, final, anneal_steps=anneal, momentum=beta,
                                 weight_decay=eta, groups=SPECS[spec])

  def ratio(t):  # Zhu & Gupta's cubic
    frac = min(t / anneal, 1.0)
    return final + (1.0 - final) * (1.0 - frac) ** 3

  reference = structured_gsm_reference(
      w0, _reference_spec(spec), grad_np, lr, None, beta, eta, steps,
      passive_weight_decay=100 * eta, importance="group_rms", uniform=ratio)
  _, masks = _assert_follows(tx, tree, w0, grad_jax, reference, steps)
  assert len(masks) == steps
  assert int(masks[-1].sum()) == sum(max(int(final * size), 1)
                                     for size, _ in _reference_spec(spec))


def test_every_entry_of_a_group_shares_its_fate(rng):
  """The kept gradient is exactly g on kept groups and 0 elsewhere, biases included."""
  params = _params(rng)
  grads = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), params)
  tx = gsm_optax.keep_top_groups(0.5, "outputs")
  out, state = tx.update(grads, tx.init(params), params)
  for layer in ("conv", "dense", "out"):
    kernel, bias = np.asarray(out[layer]["kernel"]), np.asarray(out[layer]["bias"])
    kept = np.asarray(bias != 0)
    whole = np.all(kernel.reshape(-1, kernel.shape[-1]) != 0, axis=0)
    none = np.all(kernel.reshape(-1, kernel.shape[-1]) == 0, axis=0)
    np.testing.assert_array_equal(kept, whole)
    np.testing.assert_array_equal(~kept, none)
  assert int(gsm_optax.selection_stats(state).keep_count) == (4 + 6 + 3) // 2


def _brute_force_prefix(scores, costs, budget):
  order = np.lexsort((np.arange(scores.size), -scores))
  kept = np.zeros(scores.size, bool)
  total = 0.0
  for i in order:
    total += costs[i]
    if total > budget:
      break
    kept[i] = True
  return kept


def test_budget_selection_matches_brute_force(rng):
  sizes = [7, 1, 12]
  scores = [jnp.asarray(rng.integers(0, 5, s).astype(np.float32)) for s in sizes]  # many ties
  costs = [jnp.asarray(rng.uniform(0.5, 3.0, s).astype(np.float32)) for s in sizes]
  budget = float(rng.uniform(3, 20))
  got = gsm_optax.global_budget_selection(scores, costs, budget)
  want = _brute_force_prefix(np.concatenate([np.asarray(s) for s in scores]),
                             np.concatenate([np.asarray(c) for c in costs]), budget)
  np.testing.assert_array_equal(np.concatenate([np.asarray(m) for m in got.mask]), want)
  assert int(got.num_greater) == want.sum()
  # Unit costs and an integer budget: the exact top-k, ties and all.
  k = int(rng.integers(0, 20))
  unit = gsm_optax.global_budget_selection(scores, [1.0, 1.0, 1.0], k)
  chex.assert_trees_all_equal(unit.mask, gsm_optax.global_topk_mask(scores, k))


def _norm_ranking_reference(params, name, q=None, budget=None, cost_of_prefix=None):
  """Kept groups of a structured magnitude prune: RMS (L2 norm per weight), each set's best
  first (min_kept=1), then stable order, top-q or prefix."""
  leaves = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(params)]
  spec = _reference_spec(name)
  sizes = np.concatenate([[sum(leaves[i].size // s for i, _ in m)] * s for s, m in spec])
  norms = np.sqrt(np.concatenate(group_sums([x**2 for x in leaves], spec)) / sizes)
  fits = None if q is not None else (lambda kept: cost_of_prefix(kept) <= budget)
  kept, _ = min_kept_selection(norms, [s for s, _ in spec], [1] * len(spec), q=q, fits=fits)
  return kept, spec


def _expand(kept, spec, leaves):
  masks = [np.ones(x.shape, bool) for x in leaves]
  offset = 0
  for size, members in spec:
    for leaf, axis in members:
      masks[leaf] = kept[offset:offset + size][group_index(leaves[leaf].shape, axis, size)]
    offset += size
  return masks


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_prune_keeps_the_groups_of_largest_norm(rng, spec):
  params = _params(rng)
  n = sum(size for size, _ in _reference_spec(spec))
  ratio = float(rng.uniform(0.2, 0.8))
  kept, ref_spec = _norm_ranking_reference(params, spec, q=int(ratio * n))
  pruned = jax.jit(lambda p: gsm_optax.prune(p, ratio, groups=SPECS[spec]))(params)
  leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]
  for got, x, m in zip(jax.tree_util.tree_leaves(pruned), leaves, _expand(kept, ref_spec, leaves)):
    np.testing.assert_array_equal(got, np.where(m, x, 0))


def test_prune_within_a_weight_budget(rng):
  params = _params(rng)
  groups = SPECS["outputs and inputs"](params)
  shapes = [x.shape for x in jax.tree_util.tree_leaves(params)]
  per_group = np.concatenate([[sum(np.prod(shapes[leaf]) // size for leaf, _ in members)] * size
                              for size, members in _reference_spec("outputs and inputs")])
  ratio = float(rng.uniform(0.2, 0.8))
  kept, spec = _norm_ranking_reference(params, "outputs and inputs",
                                       budget=ratio * per_group.sum(),
                                       cost_of_prefix=lambda k: per_group[k].sum())
  mask = gsm_optax.prune_mask(params, ratio, groups=groups, budget="weights")
  leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]
  chex.assert_trees_all_equal(jax.tree_util.tree_leaves(mask), _expand(kept, spec, leaves))


def test_prune_within_a_mac_budget(rng):
  """MACs of a chain conv -> dense -> out: each layer scaled by its inputs' and outputs' kept
  fractions; brute force over the prefixes in norm order."""
  params = _params(rng)
  groups = SPECS["outputs and inputs"](params)
  terms = [gsm_optax.MacTerm(100.0 * 4, ("conv",)),
           gsm_optax.MacTerm(8 * 6, ("conv", "dense")),
           gsm_optax.MacTerm(6 * 3, ("dense", "out inputs"))]
  budget = gsm_optax.mac_costs(groups, terms)
  assert budget.total == 400 + 48 + 18

  def macs(k):
    conv, dense, out = k[:4].mean(), k[4:10].mean(), k[10:].mean()
    return 400 * conv + 48 * conv * dense + 18 * dense * out

  # From 0.3 up, one group of every set (min_kept, at most 100 + 12 + 18 MACs) fits the budget,
  # so the bound below holds; below it min_kept may exceed the budget, and says so
  # (tests/test_min_kept.py).
  ratio = float(rng.uniform(0.3, 0.8))
  kept, spec = _norm_ranking_reference(params, "outputs and inputs", budget=ratio * budget.total,
                                       cost_of_prefix=macs)
  mask = jax.jit(lambda p: gsm_optax.prune_mask(p, ratio, groups=groups, budget=budget))(params)
  leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]
  chex.assert_trees_all_equal(jax.tree_util.tree_leaves(mask), _expand(kept, spec, leaves))
  assert macs(kept) <= ratio * budget.total * (1 + 1e-6)


def test_readiness_of_a_structurally_sparse_model(rng):
  params = _params(rng)
  pruned = gsm_optax.prune(params, 0.4, groups="outputs")
  ready = gsm_optax.prune_readiness(pruned, 0.4, groups="outputs")
  assert float(ready.removed_l2_fraction) == 0.0
  assert int(ready.num_carrying) == 0
  before = gsm_optax.prune_readiness(params, 0.4, groups="outputs", eval_fn=lambda p: 1.0)
  assert 0 < float(before.removed_l2_fraction) < 1
  assert int(before.num_carrying) > 0


def test_structured_gradual_pruning_ends_with_whole_groups(rng):
  params = _params(rng)
  tx = gsm_optax.gradual_magnitude_pruning(optax.sgd(0.05), 0.3, begin_step=0, end_step=6,
                                           update_every=2, groups="outputs")
  state = tx.init(params)
  update = jax.jit(tx.update)
  kept_before = None
  for _ in range(8):
    grads = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), params)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    kept = np.concatenate([np.asarray(params[k]["bias"] != 0) for k in ("conv", "dense", "out")])
    if kept_before is not None:
      assert not np.any(kept & ~kept_before)  # the mask only shrinks
    kept_before = kept
  assert kept_before.sum() == int(0.3 * 13)
  for layer in ("conv", "dense", "out"):
    kernel = np.asarray(params[layer]["kernel"])
    cols = kernel.reshape(-1, kernel.shape[-1])
    np.testing.assert_array_equal(np.all(cols == 0, 0), np.asarray(params[layer]["bias"]) == 0)


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_structured_gradual_pruning_matches_float64_reference(rng, allocation):
  """Zhu & Gupta with groups, step by step against NumPy: at each mask update the groups not
  yet pruned are ranked by the RMS of the weights apply_updates is about to write (the pruned
  ones last); "global" keeps floor(r_t * G) of them (each set its best one first), "uniform"
  floor(r_t * size) (at least 1) of each set; every entry of a pruned group is held at 0."""
  params = _params(rng)
  params["conv"] = jax.tree_util.tree_map(lambda x: 3 * x, params["conv"])  # uniform != global
  spec = _reference_spec("coupled by hand")
  lr, final, begin, end, every = 0.5, 0.35, 0, 6, 2  # steps large enough to reorder groups
  tx = gsm_optax.gradual_magnitude_pruning(
      optax.sgd(lr), final, begin_step=begin, end_step=end, update_every=every,
      groups=SPECS["coupled by hand"](params), allocation=allocation)
  state, update = tx.init(params), jax.jit(tx.update)
  w = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(params)]
  keep = [np.ones(x.shape, bool) for x in w]  # True on out/bias, in no group, for good
  masked = sorted(leaf for _, m in spec for leaf, _ in m)
  sizes = [size for size, _ in spec]
  per_group = [sum(w[leaf].size // size for leaf, _ in members) for size, members in spec]
  pruned_once = 0
  for t in range(9):
    grads = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), params)
    g = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(grads)]
    written = [x - lr * np.where(k, d, 0) for x, k, d in zip(w, keep, g)]  # sgd on the mask
    if begin <= t <= end and ((t - begin) % every == 0 or t == end):
      r = final + (1 - final) * (1 - min(max((t - begin) / (end - begin), 0), 1)) ** 3
      rms = [np.sqrt(s / n) for s, n in zip(group_sums([x**2 for x in written], spec), per_group)]
      alive = [a > 0 for a in group_sums([k.astype(float) for k in keep], spec)]
      scores = [np.where(a, s, -1.0) for s, a in zip(rms, alive)]
      if allocation == "global":
        kept, _ = min_kept_selection(np.concatenate(scores), sizes, [1] * len(sizes),
                                     q=int(np.floor(r * sum(sizes))))
        kept = np.split(kept, np.cumsum(sizes)[:-1])
      else:
        kept = [stable_topk_mask(s, max(int(np.floor(r * size)), 1))
                for s, size in zip(scores, sizes)]
      for k_set, (size, members) in zip(kept, spec):
        for leaf, axis in members:
          keep[leaf] = k_set[group_index(w[leaf].shape, axis, size)]
    w = [np.where(k, x, 0.0) for x, k in zip(written, keep)]
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    for i, got in zip(masked, jax.tree_util.tree_leaves(state.mask)):  # MaskedNode elsewhere
      np.testing.assert_array_equal(np.asarray(got), keep[i], err_msg=f"step {t}, leaf {i}")
    for i, (got, x) in enumerate(zip(jax.tree_util.tree_leaves(params), w)):
      np.testing.assert_allclose(np.asarray(got), x, rtol=1e-5, atol=1e-6,
                                 err_msg=f"step {t}, leaf {i}")
    pruned_once = max(pruned_once, sum(int((~k).sum()) for k in keep))
  assert pruned_once > 0


@pytest.mark.parametrize("groups, error", [
    ([Groups("g", 4, (GroupMember("conv/kernal", -1),))], "conv/kernal"),
    ([Groups("g", 4, (GroupMember("conv/kernel", 4),))], "no axis 4"),
    ([Groups("g", 3, (GroupMember("conv/kernel", -1),))], "not a multiple of size=3"),
    ([Groups("a", 4, (GroupMember("conv/bias", 0),)),
      Groups("b", 4, (GroupMember("conv/bias", 0),))], "member of both"),
    ([], "non-empty"),
    ("neurons", "groups='neurons'"),
])
def test_bad_groups_are_named_at_init(rng, groups, error):
  params = _params(rng)
  with pytest.raises(ValueError, match=error):
    gsm_optax.gsm(0.1, 0.5, groups=groups).init(params)


def test_bad_group_arguments_fail_at_construction():
  with pytest.raises(ValueError, match="either groups or eligible"):
    gsm_optax.gsm(0.1, 0.5, groups="outputs", eligible=lambda p: p)
  with pytest.raises(ValueError, match="budget='weights' needs groups"):
    gsm_optax.gsm(0.1, 0.5, budget="weights")
  with pytest.raises(ValueError, match="allocation='uniform' needs groups"):
    gsm_optax.prune_mask({"w": jnp.ones((2, 2))}, 0.5, allocation="uniform")
  with pytest.raises(ValueError, match="budget must be one of"):
    gsm_optax.keep_top_groups(0.5, "outputs", budget="flops")
  with pytest.raises(ValueError, match="allocation must be one of"):
    gsm_optax.prune_readiness({"w": jnp.ones((2, 2))}, 0.5, groups="outputs",
                              allocation="layerwise")
  with pytest.raises(ValueError, match="keep_top_groups needs groups"):
    gsm_optax.keep_top_groups(0.5, None)  # type: ignore[arg-type]
  with pytest.raises(ValueError, match="not among the groups"):
    gsm_optax.mac_costs([Groups("a", 2, (GroupMember("w", 0),))], [gsm_optax.MacTerm(4, ("b",))])


def test_keep_ratio_that_keeps_no_group_fails_at_init(rng):
  with pytest.raises(ValueError, match="= 0 of the 13 groups"):
    gsm_optax.gsm(0.1, 0.05, groups="outputs").init(_params(rng))


def test_builtin_groups_of_a_flax_model():
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(5, (3, 3), name="conv")(x))
      return nn.Dense(2, name="head")(x.reshape(x.shape[0], -1))

  params = Net().init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)))["params"]
  outputs = gsm_optax.output_groups(params)
  assert [(g.name, g.size) for g in outputs] == [("conv", 5), ("head", 2)]
  assert outputs[0].members == (GroupMember("conv/kernel", 3), GroupMember("conv/bias", 0))
  inputs = gsm_optax.input_groups(params)
  assert [(g.name, g.size) for g in inputs] == [("conv inputs", 1), ("head inputs", 80)]


def test_uniform_allocation_keeps_the_same_fraction_of_every_set(rng):
  """Layer-wise baseline: every set keeps floor(r * size) (at least 1) of its largest groups."""
  params = _params(rng)
  groups = SPECS["outputs and inputs"](params)
  tx = gsm_optax.gradual_magnitude_pruning(optax.sgd(0.0), 0.5, begin_step=0, end_step=1,
                                           update_every=1, groups=groups, allocation="uniform")
  state = tx.init(params)
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  for _ in range(2):
    updates, state = tx.update(zero, state, params)
  pruned = optax.apply_updates(params, updates)
  leaves = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(params)]
  for g, (size, members) in zip(groups, _reference_spec("outputs and inputs")):
    squares = group_sums([x**2 for x in leaves], [(size, members)])[0]
    want = stable_topk_mask(squares, max(int(0.5 * size), 1))
    leaf, axis = members[0]
    got = np.any(np.moveaxis(np.asarray(jax.tree_util.tree_leaves(pruned)[leaf]), axis, 0)
                 .reshape(size, -1) != 0, axis=1)
    np.testing.assert_array_equal(got, want, err_msg=g.name)
  with pytest.raises(ValueError, match="allocation"):
    gsm_optax.gradual_magnitude_pruning(optax.sgd(0.1), 0.5, begin_step=0, end_step=1,
                                        update_every=1, allocation="uniform")


def test_mac_budget_ranked_per_mac(rng):
  """per_mac: score per MAC at full width (each set's best group first), prefix in that order
  while the MACs fit; in gsm, the costs follow the fractions kept at the last step."""
  params = _params(rng)
  groups = SPECS["outputs and inputs"](params)
  terms = [gsm_optax.MacTerm(400.0, ("conv",)), gsm_optax.MacTerm(48.0, ("conv", "dense")),
           gsm_optax.MacTerm(18.0, ("dense", "out inputs"))]
  budget = gsm_optax.mac_costs(groups, terms, per_mac=True)
  leaves = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(params)]
  spec = _reference_spec("outputs and inputs")
  sizes = np.concatenate([[sum(leaves[i].size // s for i, _ in m)] * s for s, m in spec])
  rms = np.sqrt(np.concatenate(group_sums([x**2 for x in leaves], spec)) / sizes)
  unit = np.concatenate([[(400 + 48) / 4] * 4, [(48 + 18) / 6] * 6, [18 / 6] * 6])
  density = rms / unit
  for lo, hi in ((0, 4), (4, 10), (10, 16)):
    density[lo + np.argmax(rms[lo:hi])] = np.inf

  def macs(k):
    conv, dense, out = k[:4].mean(), k[4:10].mean(), k[10:].mean()
    return 400 * conv + 48 * conv * dense + 18 * dense * out

  ratio = float(rng.uniform(0.05, 0.8))
  order = np.lexsort((np.arange(density.size), -density))
  kept = np.zeros(density.size, bool)
  for i in order:
    trial = kept.copy()
    trial[i] = True
    if macs(trial) > ratio * budget.total:
      break
    kept = trial
  kept[np.isinf(density)] = True  # each set's best stays, even beyond the budget
  mask = gsm_optax.prune_mask(params, ratio, groups=groups, budget=budget)
  chex.assert_trees_all_equal(jax.tree_util.tree_leaves(mask), _expand(kept, spec, leaves))

  tx = gsm_optax.keep_top_groups(ratio, groups, budget=budget)
  state = tx.init(params)
  chex.assert_trees_all_equal(state.kept_fractions, (1.0, 1.0, 1.0))
  grads = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), params)
  out, state = jax.jit(tx.update)(grads, state, params)
  kept_now = [float(np.mean(np.asarray(out[k]["bias"]) != 0)) for k in ("conv", "dense")]
  np.testing.assert_allclose(state.kept_fractions[:2], kept_now)
  assert all(f > 0 for f in state.kept_fractions)  # no set is emptied


def test_structured_gsm_with_uniform_allocation_keeps_every_layer_fraction(rng):
  """allocation="uniform": each set's top floor(r * size) groups by Taylor score get the
  gradient (float64 reference per set), and prune keeps the same fractions."""
  params = _params(rng)
  groups = SPECS["outputs and inputs"](params)
  grads = jax.tree_util.tree_map(lambda x: jnp.asarray(3 * rng.standard_normal(x.shape)), params)
  tx = gsm_optax.keep_top_groups(0.5, groups, allocation="uniform")
  out, _ = tx.update(grads, tx.init(params), params)
  leaves = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(params)]
  g_leaves = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(grads)]
  out_leaves = jax.tree_util.tree_leaves(out)
  for size, members in _reference_spec("outputs and inputs"):
    score = np.abs(group_sums([g * w for g, w in zip(g_leaves, leaves)], [(size, members)])[0])
    want = stable_topk_mask(score, max(int(0.5 * size), 1))
    leaf, axis = members[0]
    got = np.any(np.moveaxis(np.asarray(out_leaves[leaf]), axis, 0).reshape(size, -1) != 0, 1)
    np.testing.assert_array_equal(got, want)
  pruned = gsm_optax.prune(params, 0.5, groups=groups, allocation="uniform")
  assert [int(np.sum(np.asarray(pruned[k]["bias"]) != 0)) for k in ("conv", "dense")] == [2, 3]
  assert int(np.sum(np.any(np.asarray(pruned["out"]["kernel"]) != 0, 1))) == 3
  with pytest.raises(ValueError, match="allocation"):
    gsm_optax.gsm(0.1, 0.5, allocation="uniform")


@pytest.mark.parametrize("importance", ["group_taylor", "taylor", "taylor as a callable",
                                        "group_rms", "magnitude", "magnitude as a callable"])
def test_each_group_score_has_its_own_name(rng, importance):
  """keep_top_groups keeps the top-Q groups by |sum g*w| ("group_taylor"), by the RMS of the
  group's weights ("group_rms", sqrt(sum w**2 / n)), or by a weights' score summed ("taylor",
  sum |g*w|, and "magnitude", sum |w|: the same as gsm_optax.taylor and gsm_optax.magnitude),
  each against a float64 reference. The sets differ in group size (a filter with its bias, 19
  weights; an input row of the last layer, 3), where RMS and L2 norm rank differently."""
  params = _params(rng)
  grads = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), params)
  spec = _reference_spec("outputs and inputs")
  w = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(params)]
  g = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(grads)]
  if importance == "group_taylor":
    scores = np.abs(np.concatenate(group_sums([a * b for a, b in zip(g, w)], spec)))
  elif importance == "group_rms":
    per_group = [sum(w[leaf].size // size for leaf, _ in members) for size, members in spec]
    scores = np.concatenate([np.sqrt(s / n) for s, n in
                             zip(group_sums([x**2 for x in w], spec), per_group)])
  elif importance.startswith("taylor"):
    scores = np.concatenate(group_sums([np.abs(a * b) for a, b in zip(g, w)], spec))
  else:
    scores = np.concatenate(group_sums([np.abs(x) for x in w], spec))
  sizes = [size for size, _ in spec]
  q = int(0.4 * sum(sizes))
  want, _ = min_kept_selection(scores, sizes, [1] * len(sizes), q=q)
  callables = {"taylor as a callable": gsm_optax.taylor,
               "magnitude as a callable": gsm_optax.magnitude}
  tx = gsm_optax.keep_top_groups(0.4, SPECS["outputs and inputs"],
                                 importance=callables.get(importance, importance))
  out, state = jax.jit(tx.update)(grads, tx.init(params), params)
  passed = [(np.asarray(o) != 0).astype(np.float64) for o in jax.tree_util.tree_leaves(out)]
  got = np.concatenate(group_sums(passed, spec)) > 0
  np.testing.assert_array_equal(got, want)
  assert int(state.keep_count) == want.sum()


def test_group_scores_are_refused_for_weights():
  """The scores defined for groups only name the weights' score to use instead."""
  for group_score, weights_score in [("group_taylor", "'taylor'"), ("group_rms", "'magnitude'")]:
    with pytest.raises(ValueError, match=f"{group_score}.* scores groups.*{weights_score}"):
      gsm_optax.keep_top_gradients(0.5, importance=group_score)
    with pytest.raises(ValueError, match=f"{group_score}.* scores groups"):
      gsm_optax.gsm(0.1, 0.5, importance=group_score)


def test_gsm_chains_the_selection_stage_its_arguments_ask_for(rng):
  """gsm(..., groups=...) is keep_top_groups (with "group_taylor" by default) followed by the
  decay; gsm without groups, keep_top_gradients: the same updates as the chains built by hand."""
  params = _params(rng)
  grads = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), params)
  spec = SPECS["outputs and inputs"]
  for stage, kwargs in [(gsm_optax.keep_top_groups(0.5, spec), {"groups": spec}),
                        (gsm_optax.keep_top_gradients(0.5), {})]:
    decayed = ((lambda p: gsm_optax.grouping.member_mask(spec, p)) if kwargs
               else gsm_optax.default_eligible)
    by_hand = optax.chain(stage, optax.add_decayed_weights(1e-2, mask=decayed),
                          optax.trace(0.9), optax.scale_by_learning_rate(0.1))
    tx = gsm_optax.gsm(0.1, 0.5, momentum=0.9, weight_decay=1e-2, **kwargs)
    got, state = tx.update(grads, tx.init(params), params)
    want, _ = by_hand.update(grads, by_hand.init(params), params)
    chex.assert_trees_all_equal(got, want)
    assert (state[0].held_sets is None) == (not kwargs)


BAD_GROUP_OPTIONS = [
    ({"budget": "flops"}, "budget must be one of"),
    ({"allocation": "layerwise", "groups": "outputs"}, "allocation must be one of"),
    ({"budget": "weights"}, "budget='weights' needs groups"),
    ({"allocation": "uniform"}, "allocation='uniform' needs groups"),
    ({"groups": "outputs", "eligible": lambda p: p}, "either groups or eligible"),
]
PRUNING_FUNCTIONS = {
    "gsm": lambda **kw: gsm_optax.gsm(0.1, 0.5, **kw),
    "prune": lambda **kw: gsm_optax.prune({"w": jnp.ones((2, 2))}, 0.5, **kw),
    "prune_mask": lambda **kw: gsm_optax.prune_mask({"w": jnp.ones((2, 2))}, 0.5, **kw),
    "prune_readiness": lambda **kw: gsm_optax.prune_readiness({"w": jnp.ones((2, 2))}, 0.5, **kw),
    "gradual_magnitude_pruning": lambda **kw: gsm_optax.gradual_magnitude_pruning(
        optax.sgd(0.1), 0.5, begin_step=0, end_step=2, update_every=1, **kw),
}


@pytest.mark.parametrize("function", sorted(PRUNING_FUNCTIONS))
@pytest.mark.parametrize("options,error", BAD_GROUP_OPTIONS,
                         ids=[e for _, e in BAD_GROUP_OPTIONS])
def test_every_pruning_function_checks_the_group_options_alike(function, options, error):
  with pytest.raises(ValueError, match=error):
    PRUNING_FUNCTIONS[function](**options)


def test_structured_gsm_with_normalized_allocation_ranks_each_set_on_its_own_scale(rng):
  """allocation="normalized": the global top-Q of the Taylor scores, each set's divided by
  their root mean square (float64 reference), get the gradient; scaling one layer's gradients
  changes nothing, and gsm accepts the allocation (prune's is tests/test_multiple_of.py's)."""
  params = _params(rng)
  groups = SPECS["outputs and inputs"](params)
  grads = jax.tree_util.tree_map(lambda x: jnp.asarray(3 * rng.standard_normal(x.shape)), params)
  tx = gsm_optax.keep_top_groups(0.5, groups, allocation="normalized")
  update = jax.jit(tx.update)
  out, _ = update(grads, tx.init(params), params)
  leaves = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(params)]
  g_leaves = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(grads)]
  spec = _reference_spec("outputs and inputs")
  scores = []
  for size, members in spec:
    s = np.abs(group_sums([g * w for g, w in zip(g_leaves, leaves)], [(size, members)])[0])
    scores.append(s / np.sqrt(np.mean(s**2)))
  sizes = [size for size, _ in spec]
  want, _ = min_kept_selection(np.concatenate(scores), sizes, [1] * len(sizes),
                               q=int(0.5 * sum(sizes)))
  out_leaves = jax.tree_util.tree_leaves(out)

  def kept(tree_leaves):
    masks = []
    for size, members in spec:
      leaf, axis = members[0]
      x = np.moveaxis(np.asarray(tree_leaves[leaf]), axis, 0).reshape(size, -1)
      masks.append(np.any(x != 0, 1))
    return np.concatenate(masks)

  np.testing.assert_array_equal(kept(out_leaves), want)
  louder = dict(grads, conv=jax.tree_util.tree_map(lambda x: 1e3 * x, grads["conv"]))
  out2, _ = update(louder, tx.init(params), params)
  np.testing.assert_array_equal(kept(jax.tree_util.tree_leaves(out2)), want)
  gsm_optax.gsm(0.1, 0.5, groups=groups, allocation="normalized")  # accepted by the optimizer
