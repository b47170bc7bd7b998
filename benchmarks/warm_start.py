"""Would a warm start make the radix select cheaper? (Tried for issue 22; not chosen.)

On one CPU device the selection finds the k-th largest key with two histogram
passes over every key (``gsm_optax.selection.radix``). A warm start skips the
second whenever a guess of the k-th key is good enough: the first pass also
counts the second digits of the ``WINDOW`` first digits around the guess, and
when the k-th key's first digit is one of them that one pass finds both
digits (otherwise the second pass runs as before: exact either way). This
script measures, on a 6-layer transformer trained by ``gsm`` itself on fresh
random token batches (scores ``|g * w|``, or ``|w|`` with ``--importance
magnitude``; keep ``KEEP``), the two things the
idea needs:

  hit rate    how often the k-th key's first digit falls in the window around
              a guess: the previous step's threshold (what the optimizer's
              state holds), or the same rank in a sample of every 61st key
              (a radix select of the sample, every step)
  cost        CPU time of the k-th key's search on one step's key buffer:
              the two passes (today), the warm start when it hits and when
              it misses; and the CPU seconds to lower and compile each

  python -m benchmarks.warm_start                 # width 256, 30 steps
  python -m benchmarks.warm_start --steps 60 --repeats 21
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import gsm_optax
from benchmarks.compile_cost import KEEP
from benchmarks.step_time import DECAY, LR, MOMENTUM
from benchmarks.train_step import make_step, transformer6
from gsm_optax import selection
from gsm_optax.selection import radix

WINDOWS = (2, 4, 8)
SAMPLE_STRIDE = 61  # a prime: a stride dividing a leaf's rows would sample a single column
ORDER = selection._Order(jnp.float32, jnp.uint32)


def window_start(guess: jax.Array, window: int) -> jax.Array:
  """The first of the ``window`` first digits whose middle is nearest ``guess`` (a key)."""
  nearest = ((guess >> 16) + ((guess >> 15) & 1)).astype(jnp.int32)
  return jnp.clip(nearest - window // 2, 0, radix.BINS - window)


def sample_estimate(keys: jax.Array, k: jax.Array) -> jax.Array:
  """The key of the same rank among every ``SAMPLE_STRIDE``-th key."""
  sample = keys[::SAMPLE_STRIDE]
  size = sample.size
  sample = jnp.pad(sample, (0, -(-size // radix.CHUNK) * radix.CHUNK - size))
  rank = jnp.round(k.astype(jnp.float32) * (size / keys.size)).astype(jnp.int32)
  return radix.kth_key(sample, jnp.clip(rank, 1, size))[0]


def warm_kth_key(keys: jax.Array, k: jax.Array, guess: jax.Array,
                 window: int) -> tuple[jax.Array, jax.Array]:
  """The k-th largest key, from a first pass that also counts the second digits
  of the first digits around ``guess``; and whether it found both digits."""
  lo = window_start(guess, window)
  lo_key = lo.astype(jnp.uint32) << 16

  def digit_fn(key, positions):
    del positions
    inside = (key - lo_key) < window * radix.BINS  # unsigned: below lo wraps around
    return jnp.where(inside, radix.BINS + (key - lo_key).astype(jnp.int32),
                     (key >> 16).astype(jnp.int32))

  hist = radix.histogram(jnp.zeros(((window + 1) * radix.BINS,), jnp.int32), keys, digit_fn)
  rows = hist[radix.BINS:].reshape(window, radix.BINS)
  first = lax.dynamic_update_slice_in_dim(hist[:radix.BINS], rows.sum(axis=1), lo, 0)
  digit, higher, _ = radix.first_reaching(first, k, from_top=True)
  hit = (digit >= lo) & (digit < lo + window)

  def second_digit_from_rows():
    row = lax.dynamic_index_in_dim(rows, digit - lo, keepdims=False)
    return radix.first_reaching(row, k - higher, from_top=True)[0]

  def second_pass():  # the keys of the k-th's first digit, counted by their second
    def in_digit(key, positions):
      del positions
      return jnp.where((key >> 16).astype(jnp.int32) == digit,
                       (key & (radix.BINS - 1)).astype(jnp.int32), radix.BINS)
    counts = radix.histogram(jnp.zeros((radix.BINS,), jnp.int32), keys, in_digit)
    return radix.first_reaching(counts, k - higher, from_top=True)[0]

  second = lax.cond(hit, second_digit_from_rows, second_pass)
  return (digit.astype(jnp.uint32) << 16) | second.astype(jnp.uint32), hit


def key_buffer(scores: list[jax.Array]) -> jax.Array:
  keys = jnp.concatenate([ORDER.key(s).reshape(-1) for s in scores])
  return jnp.pad(keys, (0, -(-keys.size // radix.CHUNK) * radix.CHUNK - keys.size))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--repeats", type=int, default=11)
  parser.add_argument("--importance", choices=["taylor", "magnitude"], default="taylor")
  args = parser.parse_args()
  model, inputs, labels = transformer6(args.width)
  variables = model.init(jax.random.key(0), inputs, train=False)
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  tx = gsm_optax.gsm(LR, KEEP, momentum=MOMENTUM, weight_decay=DECAY, importance=args.importance)
  opt_state = tx.init(params)
  step = jax.jit(make_step(model, tx))
  eligible = [p.ndim >= 2 for p in jax.tree.leaves(params)]
  n = sum(p.size for p, e in zip(jax.tree.leaves(params), eligible) if e)
  k = jnp.int32(int(KEEP * n))

  @jax.jit
  def probe(params, inputs, labels):
    """The step's key buffer, its exact k-th key and the sample's estimate."""
    def loss(p):
      logits, _ = model.apply({"params": p, **model_state}, inputs, train=True,
                              mutable=list(model_state))
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    grads = jax.grad(loss)(params)
    score = (lambda g, w: jnp.abs(g * w)) if args.importance == "taylor" else (
        lambda g, w: jnp.abs(w))
    keys = key_buffer([score(g, w) for g, w, e in zip(
        jax.tree.leaves(grads), jax.tree.leaves(params), eligible) if e])
    return keys, radix.kth_key(keys, k)[0], sample_estimate(keys, k)

  rng = np.random.default_rng(0)
  exact, estimates, previous = [], [], []
  for _ in range(args.steps):
    tokens = jnp.asarray(rng.integers(0, 256, (16, 65)))
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    keys, kth, estimate = probe(params, inputs, labels)
    previous.append(int(ORDER.key(gsm_optax.selection_stats(opt_state).threshold)))
    params, opt_state, model_state, _ = step(params, opt_state, model_state, inputs, labels)
    # The optimizer's own threshold is this step's k-th score: the probe scores as gsm does.
    assert int(ORDER.key(gsm_optax.selection_stats(opt_state).threshold)) == int(kth)
    exact.append(int(kth))
    estimates.append(int(estimate))

  exact_keys = np.array(exact, np.int64)
  print(f"transformer width {args.width}: {n:,} eligible weights, {args.importance} scores,"
        f" keep {KEEP}, {args.steps} steps"
        f", load average {os.getloadavg()[0]:.1f}")
  print(f"median |k-th key - guess| in keys: previous threshold "
        f"{np.median(np.abs(exact_keys[1:] - np.array(previous[1:]))):,.0f}, sample "
        f"{np.median(np.abs(exact_keys - np.array(estimates))):,.0f}")
  print(f"{'window':>6} {'hit: previous threshold':>24} {'hit: sample':>12}")
  for window in WINDOWS:
    def hits(guesses, exact_keys, window=window):
      lo = np.asarray(window_start(jnp.asarray(guesses, jnp.uint32), window))
      return np.mean((exact_keys >> 16 >= lo) & (exact_keys >> 16 < lo + window))
    # The first step has no previous threshold (NaN): it is left out of that column.
    print(f"{window:>6} {hits(previous[1:], exact_keys[1:]):>24.2f}"
          f" {hits(estimates, exact_keys):>12.2f}")

  cold = jax.jit(lambda keys: radix.kth_key(keys, k)[0])
  print(f"\nthe k-th key's search on the last step's {keys.size:,} keys: CPU ms (median of"
        f" {args.repeats}, the rows interleaved) and lower+compile CPU s")
  rows = {"two passes (today)": (cold, ())}
  for window in WINDOWS:
    warm = jax.jit(lambda keys, guess, w=window: warm_kth_key(keys, k, guess, w))
    rows[f"warm, window {window}, hit"] = (warm, (jnp.uint32(exact[-1]),))
    rows[f"warm, window {window}, miss"] = (warm, (jnp.uint32(0xFF000000),))
    rows[f"warm, window {window}, + sample"] = (
        jax.jit(lambda keys, w=window: warm_kth_key(keys, k, sample_estimate(keys, k), w)), ())
  compile_s, compiled, times = {}, set(), {name: [] for name in rows}
  for name, (fn, extra) in rows.items():
    if fn not in compiled:  # a miss row shares its hit row's function
      start = time.process_time()
      fn.lower(keys, *extra).compile()
      compile_s[name] = time.process_time() - start
      compiled.add(fn)
    assert int(jax.tree.leaves(fn(keys, *extra))[0]) == exact[-1]
  for _ in range(args.repeats):  # the rows interleaved, so that a busier moment hits all
    for name, (fn, extra) in rows.items():
      start = time.process_time()
      jax.block_until_ready(fn(keys, *extra))
      times[name].append(time.process_time() - start)
  today = np.median(times["two passes (today)"])
  print(f"{'':>32} {'CPU ms':>8} {'/ today':>8} {'compile s':>10}")
  for name in rows:
    ms = np.median(times[name])
    seconds = f"{compile_s[name]:.2f}" if name in compile_s else "-"
    print(f"{name:>32} {1e3 * ms:8.2f} {ms / today:7.2f}x {seconds:>10}", flush=True)

if __name__ == "__main__":
  main()
