"""Widths in multiples: a set with ``multiple_of`` m keeps a multiple of m of its groups.

The selections are checked against a brute force written from the definition
(tests/reference.py's rounded_selection), on random problems with ties and floors, under
jit, for budgets in groups, costs and MACs; the uniform allocation against a grid search;
and a structured GSM run, its prune and its export end to end.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import gsm_optax
from gsm_optax import GroupMember, Groups, MacTerm
from tests.reference import rounded_selection, stable_topk_mask

SIZES = (16, 12, 8)
TERMS = (MacTerm(100.0, ("s0",)), MacTerm(30.0, ("s0", "s1")), MacTerm(20.0, ("s1", "s2")))


def _macs(kept):
  f = [kept[a:b].mean() for a, b in zip(np.cumsum((0,) + SIZES), np.cumsum(SIZES))]
  return 100 * f[0] + 30 * f[0] * f[1] + 20 * f[1] * f[2]


def _problem(rng):
  """Scores with many ties (RMS over two rows of small integers), random floors and multiples."""
  leaves = {f"s{i}": jnp.asarray(rng.integers(0, 4, (2, n)), jnp.float32)
            for i, n in enumerate(SIZES)}
  min_kept = [int(m) for m in rng.integers(0, 3, len(SIZES))]
  multiple_of = [int(rng.choice([d for d in (1, 2, 3, 4, 5, 8) if d <= n])) for n in SIZES]
  groups = [Groups(f"s{i}", n, (GroupMember(f"s{i}", 1),), cost=float(i + 1), min_kept=k,
                   multiple_of=m)
            for i, (n, k, m) in enumerate(zip(SIZES, min_kept, multiple_of))]
  rms = np.concatenate([np.sqrt(np.mean(np.asarray(leaves[f"s{i}"], np.float64) ** 2, axis=0))
                        for i in range(len(SIZES))])
  return leaves, groups, rms, min_kept, multiple_of


def _kept(mask):
  return np.concatenate([np.asarray(mask[f"s{i}"][0]) for i in range(len(SIZES))])


def _counts(kept):
  return [int(kept[a:b].sum()) for a, b in zip(np.cumsum((0,) + SIZES), np.cumsum(SIZES))]


@pytest.mark.parametrize("budget", ["groups", "cost", "macs"])
def test_global_selection_against_brute_force(rng, budget):
  leaves, groups, rms, min_kept, multiple_of = _problem(rng)
  cost = np.concatenate([[i + 1.0] * n for i, n in enumerate(SIZES)])
  spec = gsm_optax.mac_costs(groups, TERMS) if budget == "macs" else budget
  select = jax.jit(lambda p, r: (
      gsm_optax.prune_mask(p, r, groups=groups, budget=spec),
      gsm_optax.prune_readiness(p, r, groups=groups, budget=spec).held_sets))
  for ratio in rng.uniform(0.05, 1.0, 5):
    ratio = float(ratio)
    if budget == "groups":
      want, held = rounded_selection(rms, SIZES, min_kept, multiple_of,
                                     q=int(ratio * sum(SIZES)))
    else:
      total = cost.sum() if budget == "cost" else _macs(np.ones(sum(SIZES), bool))
      allowed = ratio * total * (1 + 2.0**-20)
      measure = (lambda kept: cost[kept].sum()) if budget == "cost" else _macs
      want, held = rounded_selection(rms, SIZES, min_kept, multiple_of,
                                     fits=lambda kept, a=allowed, f=measure: f(kept) <= a)
    mask, num_held = select(leaves, ratio)
    got = _kept(mask)
    np.testing.assert_array_equal(got, want, err_msg=f"{budget} {ratio} {min_kept} {multiple_of}")
    assert int(num_held) == held.sum(), (budget, ratio, min_kept, multiple_of)
    for count, n, m in zip(_counts(got), SIZES, multiple_of):
      assert count % m == 0 or count == n, (count, n, m)


@pytest.mark.parametrize("budget", ["groups", "macs"])
def test_uniform_allocation_keeps_rounded_shares(rng, budget):
  """The same fraction of every set, each share rounded down to its multiple: the largest
  fraction on the 1/1024 grid whose rounded shares fit (MACs), each set's best by RMS."""
  leaves, groups, rms, min_kept, multiple_of = _problem(rng)
  spec = gsm_optax.mac_costs(groups, TERMS) if budget == "macs" else budget
  offsets = np.cumsum((0,) + SIZES)
  reserve = [min(n, -(-k // m) * m) for n, k, m in zip(SIZES, min_kept, multiple_of)]

  def shares(fraction):
    out = []
    for n, m, r in zip(SIZES, multiple_of, reserve):
      c = int(np.floor(fraction * n + 1e-6))
      out.append(max(n if c == n else c // m * m, r))
    return out

  def kept_of(counts):
    return np.concatenate([stable_topk_mask(rms[a:b], c)
                           for a, b, c in zip(offsets, offsets[1:], counts)])

  for ratio in rng.uniform(0.1, 1.0, 4):
    ratio = float(ratio)
    if budget == "groups":
      fraction = np.float32(ratio)
    else:
      allowed = ratio * _macs(np.ones(sum(SIZES), bool)) * (1 + 2.0**-20)
      fraction = max([g for g in np.linspace(0, 1, 1025) if _macs(kept_of(shares(g))) <= allowed],
                     default=0.0)
    mask = jax.jit(lambda p, r: gsm_optax.prune_mask(p, r, groups=groups, budget=spec,
                                                     allocation="uniform"))(leaves, ratio)
    np.testing.assert_array_equal(_kept(mask), kept_of(shares(fraction)),
                                  err_msg=f"{budget} {ratio} {min_kept} {multiple_of}")


class Convs(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    return nn.Dense(5)(x.mean(axis=(1, 2)))


def test_structured_gsm_prune_and_export_keep_multiples(rng):
  """Structured GSM under a MAC budget with widths in multiples of 4: every step's kept
  groups, the prune and the narrow export keep multiples, and the export is exact."""
  model = Convs()
  x = jnp.asarray(rng.standard_normal((6, 8, 8, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 5, 6))
  variables = model.init(jax.random.PRNGKey(int(rng.integers(1 << 30))), x)
  coupling = gsm_optax.couple(model.apply, variables, x)
  groups = [g._replace(multiple_of=4) for g in coupling.groups]
  budget = gsm_optax.mac_costs(groups, coupling.mac_costs().terms)
  ratio = float(rng.uniform(0.5, 0.7))  # one multiple of every set fits
  tx = gsm_optax.gsm(0.05, ratio, momentum=0.9, weight_decay=1e-3, passive_weight_decay=0.1,
                     importance="group_rms", groups=groups, budget=budget)
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": p}, x), y).mean()

  @jax.jit
  def step(p, state):
    updates, state = tx.update(jax.grad(loss)(p), state, p)
    return optax.apply_updates(p, updates), state

  params, state = variables["params"], tx.init(variables["params"])
  sizes = {g.name: g.size for g in groups}
  for _ in range(5):
    params, state = step(params, state)
    kept = int(gsm_optax.selection_stats(state).keep_count)
    assert kept % 4 == 0, kept
  pruned = gsm_optax.prune(params, ratio, groups=groups, budget=budget)
  small = gsm_optax.narrow(coupling, {"params": pruned})
  assert all(w % 4 == 0 and 0 < w <= sizes[n] for n, w in small.widths.items()), small.widths
  assert small.macs <= ratio * coupling.macs * (1 + 1e-6)
  want = model.apply({"params": pruned}, x)
  np.testing.assert_allclose(small.apply(small.variables, x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value,error", [(0, ValueError), (9, ValueError), (2.0, TypeError)])
def test_multiple_of_is_checked_at_init(value, error):
  params = {"w": jnp.ones((2, 8))}
  groups = [Groups("w", 8, (GroupMember("w", 1),), multiple_of=value)]
  with pytest.raises(error, match=rf"groups\['w'\].multiple_of must be an int in \[1, 8\];"
                                  rf" got groups\['w'\].multiple_of={value!r}"):
    gsm_optax.keep_top_groups(0.5, groups).init(params)
  with pytest.raises(error, match=r"groups\['w'\].multiple_of"):
    gsm_optax.prune(params, 0.5, groups=groups)


@pytest.mark.parametrize("budget", ["groups", "macs"])
def test_normalized_allocation_against_brute_force(rng, budget):
  """allocation="normalized": the global selection (brute force, as for "global") of each
  set's RMS scores divided by their own root mean square, in float64; rescaling a set's
  weights by any factor leaves the selection as it is, where "global" follows the scale."""
  _, groups, _, min_kept, multiple_of = _problem(rng)
  scales = 10.0 ** rng.uniform(-2, 2, len(SIZES))
  leaves = {f"s{i}": jnp.asarray(scales[i] * rng.standard_normal((2, n)), jnp.float32)
            for i, n in enumerate(SIZES)}
  spec = gsm_optax.mac_costs(groups, TERMS) if budget == "macs" else budget

  def normalized_rms(p):
    out = []
    for i in range(len(SIZES)):
      rms = np.sqrt(np.mean(np.asarray(p[f"s{i}"], np.float64) ** 2, axis=0))
      out.append(rms / np.sqrt(np.mean(rms ** 2)))
    return np.concatenate(out)

  select = jax.jit(lambda p, r: gsm_optax.prune_mask(p, r, groups=groups, budget=spec,
                                                     allocation="normalized"))
  for ratio in rng.uniform(0.1, 1.0, 4):
    ratio = float(ratio)
    scores = normalized_rms(leaves)
    if budget == "groups":
      want, _ = rounded_selection(scores, SIZES, min_kept, multiple_of, q=int(ratio * sum(SIZES)))
    else:
      allowed = ratio * _macs(np.ones(sum(SIZES), bool)) * (1 + 2.0**-20)
      want, _ = rounded_selection(scores, SIZES, min_kept, multiple_of,
                                  fits=lambda kept, a=allowed: _macs(kept) <= a)
    got = _kept(select(leaves, ratio))
    np.testing.assert_array_equal(got, want, err_msg=f"{budget} {ratio} {min_kept} {multiple_of}")
    rescaled = {k: x * np.float32(10.0 ** rng.uniform(-2, 2)) for k, x in leaves.items()}
    np.testing.assert_array_equal(_kept(select(rescaled, ratio)), got)
  # One set's weights 1000x smaller (half the groups kept, no floors, any width): "global"
  # empties it, "normalized" keeps some of it, as its share of the ranking says.
  free = [g._replace(min_kept=0, multiple_of=1) for g in groups]
  small = {k: jnp.asarray(rng.standard_normal(x.shape) * (1e-3 if k == "s0" else 1), jnp.float32)
           for k, x in leaves.items()}
  plain, normalized = (_counts(_kept(jax.jit(lambda p, a=a: gsm_optax.prune_mask(
      p, 0.5, groups=free, allocation=a))(small))) for a in ("global", "normalized"))
  assert plain[0] == 0 < normalized[0], (plain, normalized)
