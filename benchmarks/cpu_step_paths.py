"""gsm steps with each exact CPU selection, side by side with a plain step.

  radix  16-bit radix select from scatter-add histograms (what one CPU device runs)
  float  float counting passes aimed by a sample, radix as its fallback

One process, ResNet-50-shaped parameters (weights N(0, 0.05), gradients
N(0, 1e-3)), every step jitted once, warm, params and state donated; the
plain step and both gsm steps are timed in turn, ``--rounds`` times, each a
median of ``--repeats`` steps. "passes" and "fallback" come from the float path
on the same scores; "same" compares the kept sets of the two selections.

  taskset -c 1 python -m benchmarks.cpu_step_paths --sizes 25.6M
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import gsm_optax
from benchmarks.shapes import weights_and_gradients
from benchmarks.step_time import SIZES, make_step, plain_tx, time_steps
from gsm_optax import selection


def gsm_with(method, ratio):
  """gsm whose global selection runs ``method`` (patched in while tracing)."""
  tx = gsm_optax.gsm(1e-2, ratio, momentum=0.99, weight_decay=5e-4)
  original = selection._find_kth

  def find(leaves, order, k, n, key_dtype, _method="auto"):
    return original(leaves, order, k, n, key_dtype, method)

  def update(*args, **kwargs):
    selection._find_kth = find
    try:
      return tx.update(*args, **kwargs)
    finally:
      selection._find_kth = original

  return tx._replace(update=update)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", nargs="+", default=["25.6M"], choices=list(SIZES))
  parser.add_argument("--ratios", nargs="+", type=float, default=[0.01, 0.1, 0.5])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  print(f"{'params':>7} {'keep':>5} {'round':>5} {'plain ms':>9} {'radix/plain':>11}"
        f" {'float/plain':>11} {'passes':>6} {'fallback':>8} {'same':>5}")
  for size in args.sizes:
    shapes = SIZES[size]
    params, grads = weights_and_gradients(shapes)
    names = [k for k, s in shapes.items() if len(s) >= 2]
    n = sum(params[m].size for m in names)
    for ratio in args.ratios:
      steps = {}
      for name, tx in [("plain", plain_tx()), ("radix", gsm_with("radix", ratio)),
                       ("float", gsm_with("float", ratio))]:
        step = make_step(tx)
        p = jax.tree.map(jnp.copy, params)
        state = tx.init(p)
        p, state = step(p, state, grads)
        steps[name] = [step, p, state]

      def info(g, w, k, names=tuple(names)):
        scores = [jnp.abs(g[m] * w[m]) for m in names]
        a, found = selection._select(scores, k, "float")
        b = selection._select(scores, k, "radix")[0]
        same = jnp.all(jnp.stack([jnp.all(x == y) for x, y in zip(a.mask, b.mask)]))
        return found.passes, found.buffered, same

      passes, fallback, same = jax.jit(info)(grads, params, int(ratio * n))
      for r in range(args.rounds):
        ms = {}
        for name, entry in steps.items():
          step, p, state = entry
          seconds, entry[1], entry[2] = time_steps(step, p, state, grads, args.repeats)
          ms[name] = seconds * 1e3
        print(f"{size:>7} {ratio:>5g} {r + 1:>5} {ms['plain']:>9.1f}"
              f" {ms['radix'] / ms['plain']:>10.2f}x {ms['float'] / ms['plain']:>10.2f}x"
              f" {int(passes):>6} {str(bool(fallback)):>8} {str(bool(same)):>5}", flush=True)


if __name__ == "__main__":
  main()
