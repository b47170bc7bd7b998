"""The two exact selections side by side, against a plain momentum step.

  radix     16-bit radix select from scatter-add histograms (what one CPU
            device runs)
  counting  sampled counting passes on 8-row block sums, then the band
            gathered and sorted (what accelerators run)

Both read one buffer of the scores' keys (leaves that may be sharded take a
third path, in place, which this script does not time).

Each row: the whole ``global_topk_selection`` of ``|g * w|`` over the eligible
leaves, jitted, warm, median of repeats, in one process, as a multiple of the
plain step; "passes" is how many counting passes the counting path made
before its final band pass (1 is the common case; more is its fallback).

  python -m benchmarks.selection_paths --sizes 25.6M --ratios 0.1
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import gsm_optax
from benchmarks.profile_selection import timed
from benchmarks.shapes import weights_and_gradients
from benchmarks.step_time import SIZES, plain_tx
from gsm_optax import selection


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", nargs="+", default=["25.6M"], choices=list(SIZES))
  parser.add_argument("--ratios", nargs="+", type=float, default=[0.01, 0.1, 0.5])
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()})")
  print(f"{'params':>7} {'keep':>5} {'plain ms':>9} {'radix ms':>9} {'count ms':>9}"
        f" {'radix/plain':>11} {'count/plain':>11} {'passes':>6} {'same':>5}")
  for size in args.sizes:
    shapes = SIZES[size]
    params, grads = weights_and_gradients(shapes)
    names = [k for k, f in gsm_optax.default_eligible(params).items() if f]
    n = sum(params[k].size for k in names)
    tx = plain_tx()
    plain = jax.jit(lambda p, s, g, tx=tx: tx.update(g, s, p))
    plain_s = timed(plain, params, tx.init(params), grads, repeats=args.repeats)
    for ratio in args.ratios:
      k = jnp.int32(int(ratio * n))
      row = {}
      for method in ("radix", "counting"):
        @jax.jit
        def select(g, p, k, method=method, names=tuple(names)):
          sel, found = selection._select([jnp.abs(g[m] * p[m]) for m in names], k, method)
          return sel.mask, found.passes

        row[method] = timed(select, grads, params, k, repeats=args.repeats)
        row[method + "_out"] = select(grads, params, k)
      same = all(bool(jnp.all(a == b)) for a, b in zip(row["radix_out"][0],
                                                      row["counting_out"][0]))
      print(f"{size:>7} {ratio:>5g} {plain_s * 1e3:>9.1f} {row['radix'] * 1e3:>9.1f}"
            f" {row['counting'] * 1e3:>9.1f} {row['radix'] / plain_s:>10.2f}x"
            f" {row['counting'] / plain_s:>10.2f}x {int(row['counting_out'][1]):>6}"
            f" {'yes' if same else 'NO':>5}", flush=True)


if __name__ == "__main__":
  main()
