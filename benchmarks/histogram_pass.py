"""What one radix histogram pass costs on this backend, per key.

The CPU selection (``gsm_optax.selection.radix``) finds the k-th key with two
16-bit scatter-add histogram passes over one buffer of keys; in a whole training
step they are most of what GSM adds. This script times one pass, in one process,
against alternatives that would change the design:

  16-bit pass       ``radix.histogram`` as the selection runs it
  second pass       the selection's second pass: the same, every key outside one
                    top digit dropped (here about 1 in 256 is counted)
  11-bit, 8-bit     the same with fewer bins (three 11-bit passes cover 32 bits)
  two halves        two independent 16-bit loops over the two halves, summed:
                    whether XLA runs them side by side on a second core
  count >= t        one vectorised comparison and sum over the keys: what a read
                    of the buffer costs, for scale

  python -m benchmarks.histogram_pass                 # 2**22 keys
  python -m benchmarks.histogram_pass --log2-keys 24
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gsm_optax.selection import radix


def histogram_pass(bits: int, top_digit: int | None = None):
  """One ``radix.histogram`` pass of ``bits``-bit digits over all the keys; with ``top_digit``,
  only the keys whose top 8 bits equal it are counted (the others dropped), as in the
  selection's second pass."""

  def digit(key: jax.Array, positions: jax.Array) -> jax.Array:
    del positions
    d = (key >> 7) & ((1 << bits) - 1)
    return d if top_digit is None else jnp.where((key >> 23) == top_digit, d, 1 << bits)

  return lambda keys: radix.histogram(jnp.zeros((1 << bits,), jnp.int32), keys, digit)


def chunk_range_pass(lo: int, hi: int):
  """The 16-bit pass over the chunks [lo, hi) of the keys only (``radix.histogram``'s loop
  runs over all of them)."""

  def run(keys: jax.Array) -> jax.Array:
    def body(i, hist):
      chunk = lax.dynamic_slice_in_dim(keys, i * radix.CHUNK, radix.CHUNK)
      return hist.at[(chunk >> 7) & (radix.BINS - 1)].add(1, mode="drop")

    return lax.fori_loop(lo, hi, body, jnp.zeros((radix.BINS,), jnp.int32))

  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--log2-keys", type=int, default=22)
  parser.add_argument("--repeats", type=int, default=9)
  args = parser.parse_args()
  n = 1 << args.log2_keys
  if n % radix.CHUNK:
    parser.error(f"--log2-keys must be >= {radix.DIGIT_BITS}; got {args.log2_keys}.")
  keys = jnp.asarray(np.random.default_rng(0).integers(0, 2**31 - 1, n, dtype=np.int32))
  chunks = n // radix.CHUNK

  def halves(keys):
    return chunk_range_pass(0, chunks // 2)(keys) + chunk_range_pass(chunks // 2, chunks)(keys)

  fns = {"16-bit pass": histogram_pass(radix.DIGIT_BITS),
         "second pass": histogram_pass(radix.DIGIT_BITS, top_digit=77),
         "11-bit pass": histogram_pass(11), "8-bit pass": histogram_pass(8),
         "two halves": halves, "count >= t": lambda keys: jnp.sum(keys >= 2**30)}
  compiled = {name: jax.jit(fn).lower(keys).compile() for name, fn in fns.items()}
  np.testing.assert_array_equal(compiled["16-bit pass"](keys), compiled["two halves"](keys))
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(args.repeats + 1):  # the first round warms up and is dropped
    for name, fn in compiled.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(keys))
      times[name].append(time.perf_counter() - start)
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  print(f"{n:,} int32 keys, jax {jax.__version__}, {jax.devices()[0].platform},"
        f" load average {load}; median of {args.repeats}")
  base = float(np.median(times["16-bit pass"][1:]))
  print(f"{'':>12} {'ms':>7} {'ns/key':>7} {'/ 16-bit':>8}")
  for name, ts in times.items():
    t = float(np.median(ts[1:]))
    print(f"{name:>12} {1e3 * t:>7.2f} {1e9 * t / n:>7.2f} {t / base:>7.2f}x")


if __name__ == "__main__":
  main()
