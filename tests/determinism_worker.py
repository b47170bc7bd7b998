"""GSM masks and parameters on N simulated CPU devices; run by test_determinism.py.

  python tests/determinism_worker.py --devices 8 --out result.npz

XLA_FLAGS must be set before JAX is imported, hence a process per device count.
With more than one device every weight leaf is sharded over a 1-D mesh.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--devices", type=int, required=True)
  p.add_argument("--eager", action="store_true", help="also run without jit")
  p.add_argument("--out", required=True)
  args = p.parse_args(argv)
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"

  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax.sharding import AxisType, NamedSharding
  from jax.sharding import PartitionSpec as P

  import gsm_optax

  assert jax.device_count() == args.devices, jax.devices()
  rng = np.random.default_rng(0)
  shapes = {"w1": (64, 48), "b1": (48,), "w2": (48, 16), "conv": (3, 3, 8, 16)}
  specs = {"w1": P("x", None), "b1": P(), "w2": P(None, "x"), "conv": P(None, None, None, "x")}
  # Small integers times 1/8: many exact ties in |g * w|, so the tie rule is exercised.
  w0 = {k: (rng.integers(-8, 9, s) / 8).astype(np.float32) for k, s in shapes.items()}
  target = {k: (rng.integers(-8, 9, s) / 8).astype(np.float32) for k, s in shapes.items()}
  tx = gsm_optax.gsm(optax.linear_schedule(0.05, 0.01, 20),
                     optax.linear_schedule(0.5, 0.05, 15), momentum=0.9, nesterov=True)

  def step(params, state):
    grads = jax.tree.map(lambda w, t: w - t, params, target)  # elementwise: no reductions
    scores = {k: gsm_optax.taylor(params[k], grads[k]) for k in ["w1", "w2", "conv"]}
    updates, state = tx.update(grads, state, params)
    mask = gsm_optax.global_topk_mask(scores, gsm_optax.selection_stats(state).keep_count)
    return optax.apply_updates(params, updates), state, mask

  prune = jax.jit(lambda p: gsm_optax.prune(p, 0.1))

  def run(params, step_fn, steps=20):
    state = tx.init(params)
    masks = []
    for _ in range(steps):
      params, state, mask = step_fn(params, state)
      masks.append(mask)
    masks = jax.tree.map(lambda *m: np.stack([np.asarray(x) for x in m]), *masks)
    pruned = prune(params)
    return {"params": params, "masks": masks, "pruned": pruned,
            "threshold": gsm_optax.selection_stats(state).threshold}

  params = {k: jnp.asarray(v) for k, v in w0.items()}
  info = {"devices": args.devices}
  if args.devices > 1:
    mesh = jax.make_mesh((args.devices,), ("x",), axis_types=(AxisType.Auto,))
    params = jax.device_put(params, {k: NamedSharding(mesh, s) for k, s in specs.items()})
  jitted = jax.jit(step)
  results = {"jit": run(params, jitted), "jit_again": run(params, jitted)}
  if args.devices > 1:
    info["sharding"] = str(results["jit"]["params"]["w1"].sharding.spec)
    try:  # jax.make_mesh's default, Explicit axes: recorded, not required.
      mesh = jax.make_mesh((args.devices,), ("x",), axis_types=(AxisType.Explicit,))
      with jax.set_mesh(mesh):
        explicit = jax.device_put(params, {k: NamedSharding(mesh, s) for k, s in specs.items()})
        results["explicit"] = run(explicit, jax.jit(step), steps=3)
      info["explicit"] = "ok"
    except Exception as e:  # noqa: BLE001 - reported to the test
      info["explicit"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
  if args.eager:
    results["jit3"] = run(params, jitted, steps=3)
    results["eager"] = run(params, step, steps=3)  # op by op, no jit

  flat = {}
  for run_name, tree in results.items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      value = np.asarray(jax.device_get(leaf))
      flat[run_name + jax.tree_util.keystr(path)] = value.view(f"u{value.itemsize}") if (
          value.dtype != bool) else value
  np.savez(args.out, **flat)
  print(json.dumps(info))
  return 0


if __name__ == "__main__":
  sys.exit(main())
