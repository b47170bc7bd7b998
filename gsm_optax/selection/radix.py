"""Radix select over one flat buffer of keys: what one CPU device runs.

Two 16-bit passes (four for 64-bit keys) of a scatter-add histogram find the
k-th largest key; when the ties at that key are cut, a histogram of the ties
per block of positions, then one within the block, finds where the cut falls.
Over ``WARM_KEYS`` keys or more, a radix select of a strided sample of the
keys first estimates the k-th, and the first pass also counts the second digits
of the ``WINDOW`` first digits around the estimate's: when the k-th key's first
digit is one of them, that one pass finds both digits. On XLA:CPU it measured
faster than the counting passes (docs/PERFORMANCE.md); accelerators never
compile it: their scatters run as loops or atomics.
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
WINDOW = 4  # first digits around the estimate's whose second digits the first pass counts
WARM_KEYS = 1 << 20  # keys from which the first pass starts from a sample's estimate
SAMPLE_STRIDE = 61  # a prime: a stride dividing a leaf's rows would sample a single column
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


def _digit_pass(keys: Array, k: Array, shifts: list[int], high_masks: Array):
  """One histogram pass per remaining digit: ``(i, (prefix, above, equal))``
  -> the same with digit ``i`` found, counting the keys that share the
  digits found so far."""
  key_dtype = keys.dtype

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

  return one_pass


def _warm_first_pass(keys: Array, k: Array,
                     estimate: Array) -> tuple[tuple[Array, Array, Array], Array]:
  """The first pass, which also counts the second digits of the ``WINDOW``
  first digits nearest ``estimate`` (a key): ``(prefix, above, equal)`` with
  one or two digits found, and how many (the next pass's index)."""
  key_dtype = keys.dtype
  nbits = np.iinfo(key_dtype).bits
  top32 = lambda key: (key >> (nbits - 32)).astype(jnp.uint32)  # the first two digits
  guess = top32(estimate)
  # The window: the WINDOW first digits whose middle is nearest the estimate's top 32 bits.
  nearest = ((guess >> DIGIT_BITS) + ((guess >> (DIGIT_BITS - 1)) & 1)).astype(jnp.int32)
  lo = jnp.clip(nearest - WINDOW // 2, 0, BINS - WINDOW)
  lo_top = lo.astype(jnp.uint32) << DIGIT_BITS

  def digit_fn(key, positions):
    del positions
    top = top32(key)
    in_window = (top - lo_top) < WINDOW * BINS  # unsigned: below lo wraps around
    return jnp.where(in_window, BINS + (top - lo_top).astype(jnp.int32),
                     (top >> DIGIT_BITS).astype(jnp.int32))

  hist = histogram(jnp.zeros(((WINDOW + 1) * BINS,), jnp.int32), keys, digit_fn)
  window = hist[BINS:].reshape(WINDOW, BINS)
  # The window's first digits counted no key in the first BINS bins: their totals go there.
  first = lax.dynamic_update_slice_in_dim(hist[:BINS], window.sum(axis=1, dtype=jnp.int32), lo, 0)
  digit, higher, equal = first_reaching(first, k, from_top=True)
  hit = (digit >= lo) & (digit < lo + WINDOW)
  row = lax.dynamic_index_in_dim(window, jnp.clip(digit - lo, 0, WINDOW - 1), keepdims=False)
  second, higher2, equal2 = first_reaching(row, jnp.where(hit, k - higher, 1), from_top=True)
  one = digit.astype(key_dtype) << (nbits - DIGIT_BITS)
  two = one | (second.astype(key_dtype) << (nbits - 2 * DIGIT_BITS))
  found = (jnp.where(hit, two, one), jnp.where(hit, higher + higher2, higher),
           jnp.where(hit, equal2, equal))
  return found, jnp.where(hit, 2, 1)


def _sample_estimate(keys: Array, k: Array) -> Array:
  """The k-th largest key's estimate from the sample of every ``SAMPLE_STRIDE``-th
  key (the same rank among them), padded with zero keys to a multiple of ``CHUNK``."""
  sample = keys[::SAMPLE_STRIDE]
  size = sample.size
  sample = jnp.pad(sample, (0, -(-size // CHUNK) * CHUNK - size))
  rank = jnp.round(k.astype(jnp.float32) * (size / keys.size)).astype(jnp.int32)
  return _kth_key(sample, jnp.clip(rank, 1, size), warm=False)[0][0]


def kth_key(keys: Array, k: Array) -> tuple[Array, Array, Array]:
  """The k-th largest of ``keys`` (``1 <= k <= keys.size``), how many keys are
  above it and how many equal it: one histogram pass per 16-bit digit, from the
  top, each counting the keys that share the digits found so far; over
  ``WARM_KEYS`` keys, the first pass may find the second digit too."""
  return _kth_key(keys, k, warm=keys.size >= WARM_KEYS)[0]


def _kth_key(keys: Array, k: Array,
             warm: bool) -> tuple[tuple[Array, Array, Array], Array]:
  """:func:`kth_key` (from a sample's estimate when ``warm``) and the number of
  histogram passes made over ``keys``."""
  key_dtype = keys.dtype
  nbits = np.iinfo(key_dtype).bits
  shifts = list(range(nbits - DIGIT_BITS, -1, -DIGIT_BITS))
  # The bits above each pass's digit: those the digits found so far fix.
  high_masks = jnp.asarray([((1 << nbits) - 1) ^ ((1 << (s + DIGIT_BITS)) - 1) for s in shifts],
                           key_dtype)
  one_pass = _digit_pass(keys, k, shifts, high_masks)
  if not warm:
    start = (jnp.zeros((), key_dtype), jnp.int32(0), jnp.int32(0))
    return lax.fori_loop(0, len(shifts), one_pass, start), jnp.int32(len(shifts))
  found, done = _warm_first_pass(keys, k, _sample_estimate(keys, k))
  return lax.fori_loop(done, len(shifts), one_pass, found), len(shifts) - done + 1


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


def find_kth(keys: Array, k: Array) -> tuple[Array, Array, Array, Array]:
  """The k-th largest key (``1 <= k <= keys.size``, which is a multiple of
  ``CHUNK``), the number of keys above it, the position of the last tie kept
  (``INT32_MAX`` when every tie is kept) and the histogram passes made over
  the keys to find it."""
  (kth, above, equal), passes = _kth_key(keys, k, warm=keys.size >= WARM_KEYS)
  slots = k - above  # ties kept
  last = lax.cond(slots == equal, lambda: jnp.int32(INT32_MAX),
                  lambda: nth_tie(keys, kth, slots))
  return kth, above, last, passes
