"""Exported narrow models against dense ones: a ResNet-20 and a transformer at half their MACs.

Both models are random-initialised (the speed of a narrow model does not depend on its
values), coupled with ``gsm_optax.couple``, pruned by group magnitude within a MAC budget
chosen so that the exported model keeps half the dense model's MACs, and exported with
``gsm_optax.narrow``. The dense model (pruned units held at zero) and the exported one are
jitted and timed side by side in this process at batch 1 and 256: each repeat times both
in turn, and the medians are compared. Also prints how long ``couple`` takes on a ResNet-56
and a 12-layer transformer given shapes only.

  python -m benchmarks.structure_speed
  python -m benchmarks.structure_speed --batch-sizes 1 64 256 --repeats 9
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import gsm_optax
from gsm_optax.experiments.structured import time_side_by_side
from tests import structure_models as zoo


def _half_macs(name, model, x, rng, *, inner_only=False):
  """Random variables pruned to about half the MACs: every set of groups by the same
  fraction, or (``inner_only``) half the filters inside each residual block and none of the
  residual streams (Li et al. 2017 prune the first convolution of each block only)."""
  variables = zoo.random_variables(model, x, rng)
  coupling = gsm_optax.couple(model.apply, variables, x)
  if inner_only:
    streams = {s.name for s in coupling.sets
               if sum(m.path.endswith("kernel") for m in s.producers) > 1}
    groups = [g for g in coupling.groups if g.name not in streams]
    prune = jax.jit(lambda p: gsm_optax.prune(p, 0.5, groups=groups, allocation="uniform"))
  else:
    budget = coupling.mac_costs()
    fixed = coupling.macs - budget.total  # MACs that no group scales (stream, stem, head)
    ratio = (0.5 * coupling.macs - fixed) / budget.total
    prune = jax.jit(lambda p: gsm_optax.prune(p, ratio, groups=coupling.groups, budget=budget,
                                              allocation="uniform"))
  pruned = {**variables, "params": prune(variables["params"])}
  small = gsm_optax.narrow(coupling, pruned)
  diff = float(jnp.max(jnp.abs(jax.jit(model.apply)(pruned, x)
                               - jax.jit(small.apply)(small.variables, x))))
  print(f"{name}: {coupling.macs / 1e6:.2f} -> {small.macs / 1e6:.2f} MMACs per example"
        f" ({coupling.macs / small.macs:.2f}x fewer), {len(coupling.groups)} group sets,"
        f" max |logit diff| {diff:.1e}")
  return jax.jit(model.apply), pruned, jax.jit(small.apply), small.variables


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)

  print("coupling from shapes only (jax.ShapeDtypeStruct):")
  for name, model, shape in [
      ("ResNet-56", zoo.ResNet(9), (1, 32, 32, 3)),
      ("transformer, 12 layers, width 768, 12 heads",
       zoo.Transformer(depth=12, width=768, heads=12, hidden=3072), (1, 128, 768))]:
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    start = time.perf_counter()
    coupling = gsm_optax.couple(model.apply, variables, x)
    seconds = time.perf_counter() - start
    print(f"  {name}: {seconds:.2f} s, {len(coupling.groups)} group sets,"
          f" {coupling.macs / 1e9:.2f} GMACs per example")

  models = {
      "ResNet-20 uniform": (zoo.ResNet(3), (32, 32, 3), False),
      "ResNet-20 in-block": (zoo.ResNet(3), (32, 32, 3), True),
      "transformer 4x256": (zoo.Transformer(depth=4, width=256, heads=8, hidden=1024),
                            (64, 7), False),
  }
  rows = []
  for name, (model, shape, inner_only) in models.items():
    dense, dense_vars, narrow, narrow_vars = _half_macs(
        name, model, jnp.asarray(rng.normal(size=(2, *shape)), jnp.float32), rng,
        inner_only=inner_only)
    for batch in args.batch_sizes:
      x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)
      seconds = time_side_by_side({"dense": dense, "narrow": narrow},
                                  {"dense": (dense_vars, x), "narrow": (narrow_vars, x)},
                                  repeats=args.repeats)
      rows.append((name, batch, seconds["dense"], seconds["narrow"]))
  print(f"\n{'model':<20} {'batch':>5} {'dense ms':>10} {'exported ms':>12} {'speed-up':>9}")
  for name, batch, d, n in rows:
    print(f"{name:<20} {batch:>5} {1e3 * d:>10.2f} {1e3 * n:>12.2f} {d / n:>8.2f}x")


if __name__ == "__main__":
  main()
