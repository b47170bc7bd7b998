"""Step time and memory of gsm() against a plain momentum step and the naive design.

One process, jitted, warm, median of repeated runs. Prints a table of ratios:

  plain  optax.chain(add_decayed_weights, trace, scale_by_learning_rate)
  gsm    gsm_optax.gsm (the same chain behind the exact global selection)
  naive  the same, with the threshold from concatenating every score and
         jax.lax.top_k (skipped above 30M weights: minutes per step)

"exact" compares gsm's kept set with a NumPy reference (np.partition plus the
documented tie rule); "=naive" compares it with the naive design's set. Temp
columns are XLA's memory_analysis() temporary bytes as a multiple of the
weights' bytes. Runs on whatever backend JAX picks (CPU here, a GPU if present).

  python -m benchmarks.step_time                      # the full table (from the repo root)
  python -m benchmarks.step_time --sizes 1M --ratios 0.1
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gsm_optax
from benchmarks.shapes import (
    count,
    mlp_shapes,
    resnet50_shapes,
    transformer_shapes,
    weights_and_gradients,
)

SIZES = {"1M": mlp_shapes(), "25.6M": resnet50_shapes(), "100M": resnet50_shapes(width=2)}
# The sizes, and the parameter shapes of ``benchmarks.train_step``'s 6-layer
# transformer (width 256, 256 tokens; 4.78M prunable weights in 73 leaves).
SHAPES = {**SIZES, "transformer6": transformer_shapes(6, 256, vocab=256)}
NAIVE_LIMIT = 30_000_000
LR, MOMENTUM, DECAY = 1e-2, 0.99, 5e-4


def plain_tx(eligible=gsm_optax.default_eligible):
  """Momentum SGD with the weight decay on ``eligible``'s weights, as gsm() decays them."""
  return optax.chain(optax.add_decayed_weights(DECAY, mask=eligible),
                     optax.trace(MOMENTUM), optax.scale_by_learning_rate(LR))


def naive_keep_top(keep_ratio):
  """The obvious design: concatenate every score, lax.top_k for the threshold."""

  def init(params):
    return optax.EmptyState()

  def update(updates, state, params):
    flags = jax.tree.leaves(gsm_optax.default_eligible(params))
    leaves, treedef = jax.tree.flatten(updates)
    plist = treedef.flatten_up_to(params)
    scores = [jnp.abs(g * w) for g, w, f in zip(leaves, plist, flags) if f]
    flat = jnp.concatenate([s.ravel() for s in scores])
    k = int(keep_ratio * flat.size)
    threshold = jax.lax.top_k(flat, k)[0][-1]
    out = [jnp.where(jnp.abs(g * w) >= threshold, g, 0) if f else g
           for g, w, f in zip(leaves, plist, flags)]
    return jax.tree.unflatten(treedef, out), state

  return optax.GradientTransformation(init, update)


def make_step(tx):
  def step(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return jax.jit(step, donate_argnums=(0, 1))


def measure(tx, params, grads, repeats):
  """Median seconds per step and XLA's temporary bytes."""
  step = make_step(tx)
  opt_state = tx.init(params)
  compiled = step.lower(params, opt_state, grads).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  p = jax.tree.map(jnp.copy, params)
  p, opt_state = step(p, opt_state, grads)
  seconds, _, _ = time_steps(step, p, opt_state, grads, repeats)
  return seconds, temp


def time_steps(step, params, opt_state, grads, repeats):
  """Median seconds of ``repeats`` warm calls of ``step`` (which donates params and state),
  with the params and state it leaves, to carry on from."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    params, opt_state = step(params, opt_state, grads)
    jax.block_until_ready(params)
    times.append(time.perf_counter() - start)
  return float(np.median(times)), params, opt_state


def add_importance_flag(parser) -> None:
  """``--importance``: gsm's ranking in a benchmark, the paper's or the recipe's."""
  parser.add_argument("--importance", default="taylor", choices=["taylor", "magnitude"],
                      help="gsm's ranking: the paper's |g * w| or the recipe's |w|")


def print_header(header: str, note: str = "") -> None:
  """The device and versions (and ``note``), then a table's header and rule."""
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}),"
        f" jax {jax.__version__}, optax {optax.__version__}{note}")
  print(header)
  print("-" * len(header))


def kept_set(keep_top, params, grads):
  """Which eligible gradients a selection stage keeps (the grads have no zeros)."""
  updates, _ = jax.jit(keep_top.update)(grads, keep_top.init(params), params)
  flags = jax.tree.leaves(gsm_optax.default_eligible(params))
  return np.concatenate([np.asarray(u != 0).ravel()
                         for u, f in zip(jax.tree.leaves(updates), flags) if f])


def reference_set(params, grads, keep_ratio):
  flags = jax.tree.leaves(gsm_optax.default_eligible(params))
  scores = np.concatenate([
      np.abs(np.asarray(g) * np.asarray(w)).ravel()
      for g, w, f in zip(jax.tree.leaves(grads), jax.tree.leaves(params), flags) if f])
  k = int(keep_ratio * scores.size)
  threshold = np.partition(scores, scores.size - k)[scores.size - k]
  mask = scores > threshold
  ties = np.flatnonzero(scores == threshold)[: k - int(mask.sum())]
  mask[ties] = True
  return mask


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
  parser.add_argument("--ratios", nargs="+", type=float, default=[0.01, 0.1, 0.5])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--no-naive", action="store_true", help="skip the naive design")
  parser.add_argument("--json", help="also write the rows to this JSON file")
  args = parser.parse_args()

  print_header(f"{'params':>7} {'keep':>5} {'plain ms':>9} {'gsm ms':>8} {'naive ms':>9}"
               f" {'gsm/plain':>9} {'exact':>5} {'=naive':>6}"
               f" {'temp plain':>10} {'temp gsm':>8} {'temp naive':>10}")
  rows = []
  for size in args.sizes:
    shapes = SIZES[size]
    params, grads = weights_and_gradients(shapes)
    weight_bytes = 4 * count(shapes)
    plain_s, plain_temp = measure(plain_tx(), params, grads, args.repeats)
    for ratio in args.ratios:
      tx = gsm_optax.gsm(LR, ratio, momentum=MOMENTUM, weight_decay=DECAY)
      gsm_s, gsm_temp = measure(tx, params, grads, args.repeats)
      kept = kept_set(gsm_optax.keep_top_gradients(ratio), params, grads)
      reference = reference_set(params, grads, ratio)
      exact = bool(np.array_equal(kept, reference))
      naive_s = naive_temp = same = None
      if not args.no_naive and count(shapes) <= NAIVE_LIMIT:
        naive = optax.chain(naive_keep_top(ratio), plain_tx())
        naive_s, naive_temp = measure(naive, params, grads, max(args.repeats // 3, 1))
        same = bool(np.array_equal(kept, kept_set(naive_keep_top(ratio), params, grads)))
      row = dict(params=size, num_params=count(shapes), keep_ratio=ratio,
                 plain_ms=plain_s * 1e3, gsm_ms=gsm_s * 1e3,
                 naive_ms=None if naive_s is None else naive_s * 1e3,
                 ratio=gsm_s / plain_s, exact=exact, same_as_naive=same,
                 temp_plain=plain_temp / weight_bytes, temp_gsm=gsm_temp / weight_bytes,
                 temp_naive=None if naive_temp is None else naive_temp / weight_bytes)
      rows.append(row)
      naive_ms = "skipped" if naive_s is None else f"{naive_s * 1e3:.0f}"
      temp_naive = "-" if naive_temp is None else f"{row['temp_naive']:.2f}x"
      same_txt = "-" if same is None else ("yes" if same else "no")
      print(f"{size:>7} {ratio:>5g} {plain_s * 1e3:>9.1f} {gsm_s * 1e3:>8.1f} {naive_ms:>9}"
            f" {row['ratio']:>8.2f}x {'yes' if exact else 'NO':>5} {same_txt:>6}"
            f" {row['temp_plain']:>9.2f}x {row['temp_gsm']:>7.2f}x {temp_naive:>10}", flush=True)
  if any(r["naive_ms"] is None for r in rows) and not args.no_naive:
    print(f"naive skipped above {NAIVE_LIMIT:,} weights: minutes per step.")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": str(jax.devices()[0]), "backend": jax.default_backend(),
                 "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
