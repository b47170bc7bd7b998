"""What each building block of an exact CPU selection costs, against a plain step.

Every row is a separately jitted function over the same ResNet-50-shaped data
(scores ``|g * w|`` of the kernels), timed warm in one process, median of
repeats, printed as a multiple of the plain momentum step (params and state
donated). Run it with one core to itself where possible:

  taskset -c 1 python -m benchmarks.cpu_passes --size 25.6M
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gsm_optax
from benchmarks.profile_selection import timed
from benchmarks.shapes import weights_and_gradients
from benchmarks.step_time import SIZES, make_step, plain_tx, time_steps
from gsm_optax import selection


def timed_step(tx, params, grads, repeats):
  step = make_step(tx)
  state = tx.init(params)
  p = jax.tree.map(jnp.copy, params)
  p, state = step(p, state, grads)
  return time_steps(step, p, state, grads, repeats)[0]


def packed_term(x, thresholds, scale, base):
  """sum_j base**j * min(max(x - t_j, 0) * scale, 1): counts x > t_j in base ``base``."""
  total = None
  for j, t in enumerate(thresholds):
    term = jnp.minimum(jnp.maximum(x - t, 0) * scale, 1)
    term = term if j == 0 else term * np.float32(base ** j)
    total = term if total is None else total + term
  return total


def packed_counts(leaf, thresholds, rows):
  """Counts of ``leaf > t`` for each threshold, in one column reduction per leaf
  (the first design tried: XLA:CPU does not vectorise the column reduction)."""
  scale = np.float32(2.0 ** 127)
  base = rows + 1
  flat = leaf.reshape(-1)
  q = flat.size // rows
  out = []
  if q:
    cols = jnp.sum(packed_term(flat[:rows * q].reshape(rows, q), thresholds, scale, base), axis=0)
    out.append(cols)
  if flat.size > rows * q:
    out.append(jnp.sum(packed_term(flat[rows * q:], thresholds, scale, base)).reshape(1))
  packed = out[0] if len(out) == 1 else jnp.concatenate(out)
  counts = []
  for j in reversed(range(len(thresholds))):
    digit = jnp.floor(packed / np.float32(base ** j))
    packed = packed - digit * np.float32(base ** j)
    counts.append(jnp.sum(digit.astype(jnp.int32)))
  return jnp.stack(counts[::-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="25.6M", choices=list(SIZES))
  parser.add_argument("--keep", type=float, default=0.1)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--only", nargs="*", help="run only rows whose name contains one of these")
  args = parser.parse_args()

  shapes = SIZES[args.size]
  rng = np.random.default_rng(0)
  params, grads = weights_and_gradients(shapes, rng)
  names = [k for k, s in shapes.items() if len(s) >= 2]
  n = sum(params[k].size for k in names)
  k = int(args.keep * n)
  flat = np.concatenate([np.abs(np.asarray(grads[m]) * np.asarray(params[m])).ravel()
                         for m in names])
  kth = np.partition(flat, n - k)[n - k]
  ts = [jnp.float32(kth * f) for f in (0.999, 1.0, 1.001, 1.002, 1.003, 1.004)]

  def scores(g, p):
    return [jnp.abs(g[m] * p[m]) for m in names]

  def packed(rows, nt):
    def run(g, p, t):
      return sum(packed_counts(s, [t[j] for j in range(nt)], rows) for s in scores(g, p))
    return run

  def concat_scores(g, p):
    return jnp.concatenate([s.reshape(-1) for s in scores(g, p)])

  def packed_concat(rows, nt):
    def run(g, p, t):
      return packed_counts(concat_scores(g, p), [t[j] for j in range(nt)], rows)
    return run

  def min_above(g, p, t):
    return jnp.min(jnp.stack([jnp.min(jnp.where(s > t[1], s, jnp.inf)) for s in scores(g, p)]))

  def count_compare(g, p, t):
    return sum(jnp.sum(s > t[1], dtype=jnp.int32) for s in scores(g, p))

  t_arr = jnp.stack(ts)
  sample_keys = jnp.asarray(rng.random(1 << 16, dtype=np.float32))
  block_src = jnp.asarray(flat)
  block_idx = jnp.asarray(rng.choice(n // 1024, 64, replace=False).astype(np.int32))

  def gather_sort(x, idx):
    rows = x[: (n // 1024) * 1024].reshape(-1, 1024)[idx]
    return jnp.sort(rows.reshape(-1))

  def gsm_keys_mask_step(t):
    """plain step whose eligible gradients are masked by score > t (floats)."""
    def init(params):
      return optax.EmptyState()

    def update(updates, state, params):
      out = {m: (jnp.where(jnp.abs(updates[m] * params[m]) > t, updates[m], 0)
                 if m in names else updates[m]) for m in updates}
      return out, state
    return optax.chain(optax.GradientTransformation(init, update), plain_tx())

  rows_list = [
      ("plain step (donated)", lambda: timed_step(plain_tx(), params, grads, args.repeats)),
      ("plain step + float mask x > t", lambda: timed_step(
          gsm_keys_mask_step(jnp.float32(kth)), params, grads, args.repeats)),
      ("gsm step today", lambda: timed_step(gsm_optax.gsm(1e-2, args.keep, momentum=0.99,
                                                          weight_decay=5e-4),
                                            params, grads, args.repeats)),
      ("sum |g*w|", lambda: timed(lambda g, p: sum(jnp.sum(s) for s in scores(g, p)),
                                  grads, params, repeats=args.repeats)),
      ("int count x > t (1 threshold)", lambda: timed(count_compare, grads, params, t_arr,
                                                      repeats=args.repeats)),
      ("min{x > t}", lambda: timed(min_above, grads, params, t_arr, repeats=args.repeats)),
      ("materialise concatenated scores", lambda: timed(
          lambda g, p: concat_scores(g, p), grads, params, repeats=args.repeats)),
      ("sort 65,536 keys", lambda: timed(jnp.sort, sample_keys, repeats=args.repeats)),
      ("gather 64 blocks of 1024 + sort", lambda: timed(gather_sort, block_src, block_idx,
                                                        repeats=args.repeats)),
  ]
  rows_list += [
      ("sort 16,384 keys", lambda: timed(jnp.sort, sample_keys[:1 << 14], repeats=args.repeats)),
      ("float pass, 3 thresholds (selection.py)", lambda: timed(
          lambda g, p, t: selection._float_counts(scores(g, p), jnp.float32, t[:3]),
          grads, params, t_arr, repeats=args.repeats)),
      ("min{x > t} in floats (selection.py)", lambda: timed(
          lambda g, p, t: selection._float_min_above(scores(g, p), jnp.float32, t[1]),
          grads, params, t_arr, repeats=args.repeats)),
      ("whole float aim (sample + passes)", lambda: timed(
          lambda g, p: selection._float_aim(scores(g, p), selection._Order(jnp.float32, jnp.uint32),
                                            jnp.int32(k), n), grads, params, repeats=args.repeats)),
      ("radix select (today's CPU path)", lambda: timed(
          lambda g, p: selection._radix_find_kth(scores(g, p), selection._Order(
              jnp.float32, jnp.uint32), jnp.int32(k)), grads, params, repeats=args.repeats)),
  ]
  for rows, nt in [(255, 1), (255, 3), (15, 6), (63, 4)]:
    rows_list.append((f"packed pass R={rows} {nt} thresholds",
                      lambda rows=rows, nt=nt: timed(packed(rows, nt), grads, params, t_arr,
                                                     repeats=args.repeats)))
  rows_list.append(("packed pass R=255 3 thr, on concat (+write)",
                    lambda: timed(packed_concat(255, 3), grads, params, t_arr,
                                  repeats=args.repeats)))
  rows_list.append(("packed pass R=255 3 thr, concat given",
                    lambda: timed(lambda x, t: packed_counts(x, [t[0], t[1], t[2]], 255),
                                  block_src, t_arr, repeats=args.repeats)))

  # Exactness of the packed count on this data.
  got = np.asarray(jax.jit(packed(255, 3))(grads, params, t_arr))
  want = np.array([np.sum(flat > np.float32(t)) for t in ts[:3]])
  print(f"{args.size}: {n} scores, keep {args.keep}; packed counts exact: "
        f"{np.array_equal(got, want)} ({got} vs {want})")
  base = None
  for name, fn in rows_list:
    if args.only and not any(o in name for o in args.only) and base is not None:
      continue
    seconds = fn()
    base = base or seconds
    print(f"{name:44s} {seconds * 1e3:8.1f} ms  {seconds / base:5.2f}x plain", flush=True)


if __name__ == "__main__":
  main()
