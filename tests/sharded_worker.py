"""Runs gsm() on parameters sharded over 8 simulated CPU devices; prints JSON.

Started by tests/test_sharding.py in its own process, because the device count
must be set before JAX is imported.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import gsm_optax  # noqa: E402
from tests.hlo import largest_collective  # noqa: E402

SHAPES = {"embed": (1024, 64), "w1": (512, 256), "b1": (256,), "w2": (256, 128),
          "conv": (3, 3, 64, 128), "b2": (128,)}
SPECS_1D = {"embed": P("data", None), "w1": P("data", None), "b1": P(None),
            "w2": P(None, "data"), "conv": P(None, None, None, "data"), "b2": P("data")}
SPECS_2D = {"embed": P("data", "model"), "w1": P("data", "model"), "b1": P("model"),
            "w2": P("model", "data"), "conv": P(None, None, "data", "model"), "b2": P(None)}
def keeps_sharding(tree, mesh, specs):
  return {k: tree[k].sharding.is_equivalent_to(NamedSharding(mesh, specs[k]), len(SHAPES[k]))
          for k in SHAPES}


def run(mesh, specs, seed, steps=3):
  rng = np.random.default_rng(seed)
  host_params = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
  host_grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
                for _ in range(steps)]
  # Small integers in one step: ties at the threshold exercise the tie rule.
  host_grads[1] = {k: rng.integers(-2, 3, s).astype(np.float32) for k, s in SHAPES.items()}
  tx = gsm_optax.gsm(optax.linear_schedule(0.1, 0.01, 10), 0.05, momentum=0.9)
  select = gsm_optax.keep_top_gradients(0.05)

  def place(tree):
    if mesh is None:
      return jax.tree.map(jnp.asarray, tree)
    return {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}

  def go():
    params = place(host_params)
    state = jax.jit(tx.init)(params)
    update = jax.jit(tx.update)
    sel = jax.jit(select.update)
    masks, hlo = [], None
    for g in host_grads:
      grads = place(g)
      kept, _ = sel(grads, select.init(params), params)
      masks.append({k: np.asarray(v != 0) for k, v in kept.items()})
      if hlo is None:
        hlo = update.lower(grads, state, params).compile().as_text()
      updates, state = update(grads, state, params)
      params = optax.apply_updates(params, updates)
    return params, state, masks, hlo

  if mesh is None:
    return go()
  with jax.set_mesh(mesh):
    return go()


def main():
  seed = int(sys.argv[1])
  ref_params, ref_state, ref_masks, _ = run(None, None, seed)
  results = []
  for axis_type in (AxisType.Explicit, AxisType.Auto):
    for shape, names, specs in [((8,), ("data",), SPECS_1D),
                                ((2, 4), ("data", "model"), SPECS_2D)]:
      mesh = jax.make_mesh(shape, names, axis_types=(axis_type,) * len(shape))
      params, state, masks, hlo = run(mesh, specs, seed)
      same_params = all(np.array_equal(np.asarray(params[k]), np.asarray(ref_params[k]))
                        for k in SHAPES)
      same_state = all(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
                       for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)))
      same_masks = all(np.array_equal(m[k], r[k]) for m, r in zip(masks, ref_masks)
                       for k in SHAPES)
      kept = [int(sum(m[k].sum() for k in SHAPES if len(SHAPES[k]) >= 2)) for m in masks]
      trace = state[2].trace

      results.append(dict(
          mesh=f"{shape} {axis_type.name}", same_params=same_params, same_state=same_state,
          same_masks=same_masks, kept=kept,
          params_keep_sharding=keeps_sharding(params, mesh, specs),
          trace_keeps_sharding=keeps_sharding(trace, mesh, specs),
          collectives=largest_collective(hlo),
          num_devices=len(params["w1"].sharding.device_set)))
  print(json.dumps(results))


if __name__ == "__main__":
  main()
