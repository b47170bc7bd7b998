"""Radix select over one flat buffer of keys: what one CPU device runs.

Two 16-bit passes (four for 64-bit keys) of a scatter-add histogram find the
k-th largest key; when the ties at that key are cut, a histogram of the ties
per block of positions, then one within the block, finds where the cut falls.
On XLA:CPU it measured faster than the counting passes (docs/PERFORMANCE.md);
accelerators never compile it: their scatters run as loops or atomics.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

DIGIT_BITS = 16
BINS = 1 << DIGIT_BITS
CHUNK = BINS  # keys scattered per loop iteration, so that XLA:CPU keeps them in cache
INT32_MAX = np.iinfo(np.int32).max


def histogram(hist: Array, keys: Array, digit_fn: Callable[[Array, Array], Array]) -> Array:
  """Adds ``digit_fn(keys, positions)`` to ``hist`` in chunks of ``CHUNK`` (the
  size of ``keys`` is a multiple of it); digits outside ``[0, len(hist))`` are
  not counted."""
  def body(i, hist):
    chunk = lax.dynamic_slice_in_dim(keys, i * CHUNK, CHUNK)
    digits = digit_fn(chunk, i * CHUNK + lax.iota(jnp.int32, CHUNK))
    return hist.at[digits].add(1, mode="drop")

  return lax.fori_loop(0, keys.size // CHUNK, body, hist)


def _first_in_row(counts: Array, n: Array, from_top: bool) -> tuple[Array, Array]:
  """The first ``i`` of a short row whose running count reaches ``n`` (from the
  last with ``from_top``) and the count before it: every running count at once."""
  if from_top:
    counts = counts[::-1]
  iota = lax.iota(jnp.int32, counts.size)
  running = jnp.sum(jnp.where(iota[None, :] <= iota[:, None], counts[None, :], 0), axis=1)
  i = jnp.sum(running < n, dtype=jnp.int32)
  before = running[i] - counts[i]
  return (counts.size - 1 - i if from_top else i), before


def first_reaching(counts: Array, n: Array,
                   from_top: bool = False) -> tuple[Array, Array, Array]:
  """The first ``j`` whose running count ``sum(counts[:j + 1])`` reaches ``n``
  (counts non-negative, ``1 <= n <= sum(counts)``), ``sum(counts[:j])`` and
  ``counts[j]``; with ``from_top``, counting down from the last: the last
  ``j`` where ``sum(counts[j:])`` reaches ``n``, and ``sum(counts[j + 1:])``.

  The counts are read as a square of rows: the row, then the place in it,
  each from every running count of a short row at once. A cumulative sum
  instead compiles to a dozen kernels on CPU.
  """
  side = math.isqrt(counts.size - 1) + 1
  square = jnp.pad(counts, (0, side * side - counts.size)).reshape(side, side)
  row, before_row = _first_in_row(square.sum(axis=1, dtype=jnp.int32), n, from_top)
  row_counts = lax.dynamic_index_in_dim(square, row, keepdims=False)
  j, before_j = _first_in_row(row_counts, n - before_row, from_top)
  return row * side + j, before_row + before_j, row_counts[j]


def kth_key(keys: Array, k: Array) -> tuple[Array, Array, Array]:
  """The k-th largest of ``keys`` (``1 <= k <= keys.size``), how many keys are
  above it and how many equal it: one histogram pass per 16-bit digit, from the
  top, each counting the keys that share the digits found so far."""
  key_dtype = keys.dtype
  nbits = np.iinfo(key_dtype).bits
  shifts = list(range(nbits - DIGIT_BITS, -1, -DIGIT_BITS))
  # The bits above each pass's digit: those the digits found so far fix.
  high_masks = jnp.asarray([((1 << nbits) - 1) ^ ((1 << (s + DIGIT_BITS)) - 1) for s in shifts],
                           key_dtype)

  def one_pass(i, found):
    prefix, above, _ = found
    shift = jnp.asarray(shifts, key_dtype)[i]

    def digit_fn(key, positions):
      del positions
      digit = ((key >> shift) & (BINS - 1)).astype(jnp.int32)
      return jnp.where((key & high_masks[i]) == prefix, digit, BINS)  # others: dropped

    hist = histogram(jnp.zeros((BINS,), jnp.int32), keys, digit_fn)
    # From the top digit down, the first whose running count reaches the k-th.
    digit, higher, equal = first_reaching(hist, k - above, from_top=True)
    return prefix | (digit.astype(key_dtype) << shift), above + higher, equal

  start = (jnp.zeros((), key_dtype), jnp.int32(0), jnp.int32(0))
  return lax.fori_loop(0, len(shifts), one_pass, start)


def nth_tie(keys: Array, kth: Array, n: Array) -> Array:
  """Position of the n-th (1-based) key equal to ``kth``: a histogram of the
  ties per block of positions, then a search within the block."""
  block = keys.size // BINS  # keys.size is a multiple of CHUNK == BINS

  def per_block(key, positions):
    return jnp.where(key == kth, positions // block, BINS)

  hist = histogram(jnp.zeros((BINS,), jnp.int32), keys, per_block)
  first, before, _ = first_reaching(hist, n)
  ties = (lax.dynamic_slice_in_dim(keys, first * block, block) == kth).astype(jnp.int32)
  return first * block + first_reaching(ties, n - before)[0]


def find_kth(keys: Array, k: Array) -> tuple[Array, Array, Array]:
  """The k-th largest key (``1 <= k <= keys.size``, which is a multiple of
  ``CHUNK``), the number of keys above it and the position of the last tie
  kept (``INT32_MAX`` when every tie is kept)."""
  kth, above, equal = kth_key(keys, k)
  slots = k - above  # ties kept
  last = lax.cond(slots == equal, lambda: jnp.int32(INT32_MAX),
                  lambda: nth_tie(keys, kth, slots))
  return kth, above, last
