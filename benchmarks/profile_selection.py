"""Where a gsm() step's time goes, stage by stage, at one model size.

Each row is a separately jitted function over the same data, timed warm
(median of repeats) in one process, as a multiple of the plain momentum step:

  python -m benchmarks.profile_selection --size 25.6M --keep 0.1
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gsm_optax
from benchmarks.step_time import SIZES, plain_tx
from gsm_optax import selection


def timed(fn, *args, repeats):
  """Median seconds of ``jax.jit(fn)(*args)`` over ``repeats`` calls, after one to compile."""
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="25.6M", choices=list(SIZES))
  parser.add_argument("--keep", type=float, default=0.1)
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()

  shapes = SIZES[args.size]
  rng = np.random.default_rng(0)
  params = {k: jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for k, s in shapes.items()}
  grads = {k: jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for k, s in shapes.items()}
  names = [k for k, s in shapes.items() if len(s) >= 2]
  n = sum(params[k].size for k in names)
  k = int(args.keep * n)

  order = selection._Order(jnp.float32, jnp.uint32)
  starts = tuple(int(x) for x in np.cumsum([0] + [params[name].size for name in names[:-1]]))

  def keys(g, p):
    return selection._flat_keys(scores(g, p), order, n, starts)

  def scores(g, p):
    return [jnp.abs(g[name] * p[name]) for name in names]

  def step(tx):
    def run(p, s, g):
      updates, s = tx.update(g, s, p)
      return optax.apply_updates(p, updates), s
    return run

  plain = plain_tx()
  gsm = gsm_optax.gsm(1e-2, args.keep)
  stages = [
      ("plain momentum step", step(plain), (params, plain.init(params), grads)),
      ("scores |g*w| only", lambda g, p: [jnp.sum(s) for s in scores(g, p)], (grads, params)),
      ("keys written into one buffer", lambda g, p: jnp.sum(keys(g, p) >> 16), (grads, params)),
      ("radix select: 2 histogram passes", lambda g, p: selection.radix.kth_key(
          keys(g, p), jnp.int32(k)), (grads, params)),
      ("global_topk_selection (+ masks)", lambda g, p: [
          jnp.sum(m) for m in selection.global_topk_selection(scores(g, p), k).mask],
       (grads, params)),
      ("gsm step", step(gsm), (params, gsm.init(params), grads)),
  ]
  print(f"{args.size} weights, keep {args.keep}, {jax.devices()[0].device_kind}")
  base = None
  for name, fn, fn_args in stages:
    seconds = timed(fn, *fn_args, repeats=args.repeats)
    base = base or seconds
    print(f"{name:36s} {seconds * 1e3:8.1f} ms  {seconds / base:5.2f}x plain")


if __name__ == "__main__":
  main()
