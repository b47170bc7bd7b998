"""Counting select over leaves left in place: what possibly sharded leaves run.

Each leaf is only ever reduced to scalars (the keys above a threshold, the
ties up to a position), so every leaf keeps its sharding and the devices
exchange scalar all-reduces only: no leaf is gathered or concatenated.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gsm_optax import _utils
from gsm_optax.selection import counting

Array = jax.Array
Keys = Callable[[Array], Array]  # a leaf's scores to their keys


def flat_index(shape: tuple[int, ...]) -> Array:
  """Row-major flat index of every element, built from iotas (shards cleanly)."""
  if not shape:
    return jnp.zeros((), jnp.int32)
  index = lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1)
  stride = shape[-1]
  for dim in range(len(shape) - 2, -1, -1):
    index = index + lax.broadcasted_iota(jnp.int32, shape, dim) * stride
    stride *= shape[dim]
  return index


def _nth_tie(leaves: list[Array], starts: tuple[Array, ...], key: Keys, kth: Array,
             rank: Array, n: int) -> Array:
  """Global position of the rank-th key equal to ``kth``, by counting passes
  over positions (scalar reductions only), given each leaf's first position."""
  def counts(probes):  # count(key == kth and position <= p)
    total = jnp.zeros((counting.PROBES,), jnp.int32)
    for leaf, start in zip(leaves, starts):
      tie = key(leaf) == kth
      pos = flat_index(leaf.shape)
      total = total + jnp.stack([jnp.sum(tie & (pos <= probes[b] - start), dtype=jnp.int32)
                                 for b in range(counting.PROBES)])
    return total

  def more(state):
    lo, hi = state
    return lo < hi

  def one_pass(state):  # the answer is in [lo, hi]
    lo, hi = state
    step = (hi - lo) // (counting.PROBES + 1)
    probes = jnp.minimum(lo + jnp.maximum(step * jnp.arange(1, counting.PROBES + 1),
                                          jnp.arange(counting.PROBES)), hi - 1)
    enough = counts(probes) >= rank
    return jnp.max(jnp.where(enough, lo, probes + 1)), jnp.min(jnp.where(enough, probes, hi))

  return lax.while_loop(more, one_pass, (jnp.int32(0), jnp.int32(n - 1)))[1]


def find_kth(leaves: list[Array], key: Keys, k: Array, n: int,
             key_dtype) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
  """The k-th largest key over all leaves (``1 <= k <= n``), the number of keys
  above it, the global position of the last tie kept (``INT32_MAX`` when every
  tie is kept) and the counting passes made; and each leaf's first position,
  an operand of the kernels (see ``_utils.int_operands``), for :func:`masks`."""
  offsets = [int(start) for start in np.cumsum([0] + [leaf.size for leaf in leaves[:-1]])]
  sized = [i for i, leaf in enumerate(leaves) if leaf.size]  # empty leaves hold no position

  def count_above(thresholds):
    total = jnp.zeros((counting.PROBES,), jnp.int32)
    for i in sized:
      keys = key(leaves[i])
      total = total + jnp.stack([jnp.sum(keys > thresholds[b], dtype=jnp.int32)
                                 for b in range(counting.PROBES)])
    return total

  b = counting.bracket_kth(count_above, k, n, key_dtype, None, 0)
  rank = k - b.above_hi
  every_tie = rank == b.at_least_lo - b.above_hi
  starts = _utils.int_operands(offsets, every_tie)
  last = lax.cond(every_tie, lambda: jnp.int32(counting.INT32_MAX),
                  lambda: _nth_tie([leaves[i] for i in sized], tuple(starts[i] for i in sized),
                                   key, b.lo, rank, n))
  return (b.lo, b.above_hi, last, b.passes), starts


def masks(leaf_keys: list[Array], starts: tuple[Array, ...], kth: Array,
          last: Array) -> list[Array]:
  """Each leaf's keys above ``kth``, and its ties up to global position ``last``,
  given each leaf's keys and first position. ``last`` is ``INT32_MAX`` when
  every tie is kept: ``last - start`` is then above every position of a leaf,
  since all of them are below ``2**31 - 1``."""
  out = []
  for keys, start in zip(leaf_keys, starts):
    kth_each = jnp.broadcast_to(kth, keys.shape)  # once for both comparisons
    out.append((keys > kth_each) | ((keys == kth_each) & (flat_index(keys.shape) <= last - start)))
  return out
