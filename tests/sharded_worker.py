"""Runs gsm() and global_topk_mask() on parameters sharded over 8 simulated CPU
devices, with and without a mesh context; prints JSON.

Started by tests/test_sharding.py in its own processes, because the device
count must be set before JAX is imported: ``sharded_worker.py SEED reference
FILE`` saves the results of one device (the only one) to FILE, and
``sharded_worker.py SEED sharded FILE`` compares the sharded runs with them.
"""

import os
import sys

DEVICES = 8 if sys.argv[2] == "sharded" else 1
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}")

import contextlib  # noqa: E402
import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import gsm_optax  # noqa: E402
from tests.hlo import collectives, largest_collective  # noqa: E402

SHAPES = {"embed": (1024, 64), "w1": (512, 256), "b1": (256,), "w2": (256, 128),
          "conv": (3, 3, 64, 128), "b2": (128,)}
SPECS_1D = {"embed": P("data", None), "w1": P("data", None), "b1": P(None),
            "w2": P(None, "data"), "conv": P(None, None, None, "data"), "b2": P("data")}
SPECS_2D = {"embed": P("data", "model"), "w1": P("data", "model"), "b1": P("model"),
            "w2": P("model", "data"), "conv": P(None, None, "data", "model"), "b2": P(None)}
KEEP = 0.05


def keeps_sharding(tree, mesh, specs):
  return {k: tree[k].sharding.is_equivalent_to(NamedSharding(mesh, specs[k]), len(SHAPES[k]))
          for k in SHAPES}


def data(seed, steps=3):
  rng = np.random.default_rng(seed)
  host_params = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
  host_grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
                for _ in range(steps)]
  # Small integers in one step: ties at the threshold exercise the tie rule.
  host_grads[1] = {k: rng.integers(-2, 3, s).astype(np.float32) for k, s in SHAPES.items()}
  return host_params, host_grads


def run(mesh, specs, seed, context):
  """Three gsm() steps; with ``context`` under ``jax.set_mesh``, else the arrays
  alone carry their shardings into a plain ``jax.jit``."""
  host_params, host_grads = data(seed)
  tx = gsm_optax.gsm(optax.linear_schedule(0.1, 0.01, 10), KEEP, momentum=0.9)
  select = gsm_optax.keep_top_gradients(KEEP)

  def place(tree):
    if mesh is None:
      return jax.tree.map(jnp.asarray, tree)
    return {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}

  def go():
    params = place(host_params)
    # JAX needs a mesh context to create Explicit-sharded zeros in a jit.
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
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

  with jax.set_mesh(mesh) if context else contextlib.nullcontext():
    return go()


def topk_masks(mesh, specs, seed, context):
  """global_topk_mask of tied scores passed as sharded arrays and, on Auto
  axes, as host arrays given their shardings by ``in_shardings`` (the tracer
  then sees no sharding at all; on Explicit axes it would type them replicated
  and gather them, as it does for any function). Returns results and HLOs."""
  _, host_grads = data(seed)
  scores = host_grads[1]
  k = int(KEEP * sum(v.size for v in scores.values()))
  fn = lambda s: gsm_optax.global_topk_mask(s, k)
  if mesh is None:
    return {"ref": jax.tree.map(np.asarray, jax.jit(fn)(scores))}, {}
  shardings = {name: NamedSharding(mesh, specs[name]) for name in scores}
  out, hlos = {}, {}
  with jax.set_mesh(mesh) if context else contextlib.nullcontext():
    placed = {name: jax.device_put(v, shardings[name]) for name, v in scores.items()}
    ways = [("arrays", jax.jit(fn), placed)]
    if mesh.axis_types[0] == AxisType.Auto:
      ways.append(("in_shardings", jax.jit(fn, in_shardings=(shardings,)), scores))
    for how, f, arg in ways:
      hlos[how] = f.lower(arg).compile().as_text()
      out[how] = jax.tree.map(np.asarray, f(arg))
  return out, hlos


def reference(seed, path):
  """One device's results; on CPU its selection reads big leaves in chunks."""
  assert jax.device_count() == 1, jax.devices()
  params, state, masks, _ = run(None, None, seed, context=False)
  topk = topk_masks(None, None, seed, context=False)[0]["ref"]
  arrays = {f"params/{k}": v for k, v in params.items()}
  arrays.update({f"state/{i}": v for i, v in enumerate(jax.tree.leaves(state))})
  arrays.update({f"masks/{i}/{k}": v for i, m in enumerate(masks) for k, v in m.items()})
  arrays.update({f"topk/{k}": v for k, v in topk.items()})
  np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})


def main():
  seed, mode, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
  if mode == "reference":
    return reference(seed, path)
  ref = np.load(path)
  ref_params = {k: ref[f"params/{k}"] for k in SHAPES}
  ref_state = [ref[f"state/{i}"] for i in range(sum(k[:6] == "state/" for k in ref.files))]
  ref_masks = [{k: ref[f"masks/{i}/{k}"] for k in SHAPES} for i in range(3)]
  ref_topk = {k: ref[f"topk/{k}"] for k in SHAPES}
  results = []
  for axis_type in (AxisType.Explicit, AxisType.Auto):
    for shape, names, specs in [((8,), ("data",), SPECS_1D),
                                ((2, 4), ("data", "model"), SPECS_2D)]:
      mesh = jax.make_mesh(shape, names, axis_types=(axis_type,) * len(shape))
      for context in (True, False):
        case = dict(mesh=f"{shape} {axis_type.name}", context=context)
        try:
          params, state, masks, hlo = run(mesh, specs, seed, context)
          topk, topk_hlos = topk_masks(mesh, specs, seed, context)
        except Exception as e:  # noqa: BLE001  (reported per case by the tests)
          results.append(dict(case, error=f"{type(e).__name__}: {e}"[:2000]))
          continue
        same_params = all(np.array_equal(np.asarray(params[k]), np.asarray(ref_params[k]))
                          for k in SHAPES)
        same_state = all(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
                         for a, b in zip(jax.tree.leaves(state), ref_state, strict=True))
        same_masks = all(np.array_equal(m[k], r[k]) for m, r in zip(masks, ref_masks)
                         for k in SHAPES)
        same_topk = {how: all(np.array_equal(m[k], ref_topk[k]) for k in SHAPES)
                     for how, m in topk.items()}
        kept = [int(sum(m[k].sum() for k in SHAPES if len(SHAPES[k]) >= 2)) for m in masks]
        trace = state[2].trace
        hlos = {"gsm update": hlo}
        hlos.update({f"global_topk_mask ({how})": h for how, h in topk_hlos.items()})

        results.append(dict(
            case, error=None, same_params=same_params, same_state=same_state,
            same_masks=same_masks, same_topk=same_topk, kept=kept,
            params_keep_sharding=keeps_sharding(params, mesh, specs),
            trace_keeps_sharding=keeps_sharding(trace, mesh, specs),
            collectives={fn: largest_collective(h) for fn, h in hlos.items()},
            # Every distinct data-moving collective, for the failure message.
            moved={fn: sorted({f"{op} {ty}" for op, ty, _ in collectives(h)})
                   for fn, h in hlos.items()},
            num_devices=len(params["w1"].sharding.device_set)))
  print(json.dumps(results))


if __name__ == "__main__":
  main()
