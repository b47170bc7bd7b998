"""Radix select over one flat buffer of keys: what one CPU device runs.

Two 16-bit passes (four for 64-bit keys) of a scatter-add histogram find the
k-th largest key; when the ties at that key are cut, a histogram of the ties
per block of positions, then one within the block, finds where the cut falls.
On XLA:CPU it measured faster than the counting passes (docs/PERFORMANCE.md);
accelerators never compile it: their scatters run as loops or atomics.
"""

from __future__ import annotations

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
    at_least = jnp.cumsum(hist[::-1])[::-1]  # keys in this prefix with digit >= j
    digit = jnp.sum(above + at_least >= k) - 1
    equal = hist[digit]
    return prefix | (digit.astype(key_dtype) << shift), above + at_least[digit] - equal, equal

  start = (jnp.zeros((), key_dtype), jnp.int32(0), jnp.int32(0))
  return lax.fori_loop(0, len(shifts), one_pass, start)


def nth_tie(keys: Array, kth: Array, n: Array) -> Array:
  """Position of the n-th (1-based) key equal to ``kth``: a histogram of the
  ties per block of positions, then a running count within the block."""
  block = keys.size // BINS  # keys.size is a multiple of CHUNK == BINS

  def per_block(key, positions):
    return jnp.where(key == kth, positions // block, BINS)

  hist = histogram(jnp.zeros((BINS,), jnp.int32), keys, per_block)
  running = jnp.cumsum(hist)
  first = jnp.argmax(running >= n).astype(jnp.int32)
  n = n - (running[first] - hist[first])
  ties = lax.dynamic_slice_in_dim(keys, first * block, block) == kth
  return first * block + jnp.argmax(jnp.cumsum(ties, dtype=jnp.int32) >= n).astype(jnp.int32)


def find_kth(keys: Array, k: Array) -> tuple[Array, Array, Array]:
  """The k-th largest key (``1 <= k <= keys.size``, which is a multiple of
  ``CHUNK``), the number of keys above it and the position of the last tie
  kept (``INT32_MAX`` when every tie is kept)."""
  kth, above, equal = kth_key(keys, k)
  slots = k - above  # ties kept
  last = lax.cond(slots == equal, lambda: jnp.int32(INT32_MAX),
                  lambda: nth_tie(keys, kth, slots))
  return kth, above, last
