"""Counting select over one flat buffer of keys: what accelerators run.

No scatter (a loop over its updates on TPUs, an atomic each on GPUs) and no
sort of the keys: a sorted strided sample aims a pass that counts the keys
above five thresholds at once; passes repeat until the bracket around the
k-th key holds at most ``BUFFER`` keys or a single value. A band pass then
writes one bit mask per block of 8 keys, and either the band's keys are
gathered into a buffer and sorted, or, when the bracket is one tied value,
the cut among the ties is found by position from the bit masks. The bracket
loop (:func:`bracket_kth`) also serves leaves that stay in place when sharded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

ROWS = 8  # the buffer is read as 8 rows: one block is one element of each row
PROBES = 5  # thresholds counted per pass: six 4-bit counters fill a float32's 24 bits
SAMPLE = 1 << 16  # keys sampled to aim the first counting pass
BUFFER = 1 << 17  # most keys gathered for the exact selection within the bracket
INT32_MAX = np.iinfo(np.int32).max


class Bracket(NamedTuple):
  lo: Array  # the k-th largest key lies in [lo, hi]
  hi: Array
  at_least_lo: Array  # count(key >= lo)
  above_hi: Array  # count(key > hi)
  passes: Array  # counting passes made


def full_bracket(n: int, key_dtype: Any) -> Bracket:
  """The bracket of every key value, before any pass."""
  return Bracket(jnp.zeros((), key_dtype), jnp.asarray(np.iinfo(key_dtype).max, key_dtype),
                 jnp.int32(n), jnp.int32(0), jnp.int32(0))


def _narrow(bracket: Bracket, thresholds: Array, counts: Array, k: Array) -> Bracket:
  """Shrinks the bracket with ``counts[i] = count(key > thresholds[i])``."""
  lo, hi, at_least_lo, above_hi, passes = bracket
  low_side = counts >= k  # the k-th key is above these thresholds
  best_low = jnp.argmax(jnp.where(low_side, thresholds, 0))
  best_high = jnp.argmin(jnp.where(low_side, jnp.asarray(np.iinfo(thresholds.dtype).max,
                                                         thresholds.dtype), thresholds))
  new_lo = jnp.where(jnp.any(low_side), thresholds[best_low] + 1, lo)
  new_hi = jnp.where(jnp.any(~low_side), thresholds[best_high], hi)
  return Bracket(
      jnp.maximum(lo, new_lo), jnp.minimum(hi, new_hi),
      jnp.where(new_lo > lo, counts[best_low], at_least_lo),
      jnp.where(new_hi < hi, counts[best_high], above_hi), passes + 1)


def _probe_keys(bracket: Bracket, k: Array, sample: Array | None, n: int) -> Array:
  """``PROBES`` sorted thresholds in ``[lo, hi - 1]`` for the next counting pass.

  From the sample when it has keys inside the bracket: around the estimated
  position of the k-th key (the sample's spread about it is binomial), with
  the estimate itself and one less, so a value tied at the k-th is isolated in
  one pass. Otherwise the bracket is split evenly in key space.
  """
  lo, hi, at_least_lo, above_hi, _ = bracket
  key_dtype = lo.dtype
  span = hi - lo
  step = span // (PROBES + 1)
  even = lo + jnp.maximum(step * jnp.arange(1, PROBES + 1, dtype=key_dtype),
                          jnp.arange(PROBES, dtype=key_dtype))
  if sample is None:
    return jnp.minimum(even, hi - 1)
  first = jnp.searchsorted(sample, lo, side="left")
  last = jnp.searchsorted(sample, hi, side="right")  # sample[first:last] in [lo, hi]
  inside = last - first
  # Rank of the k-th key among the bracket's keys, from the top, as a fraction.
  fraction = (k - above_hi).astype(jnp.float32) / jnp.maximum(at_least_lo - above_hi, 1)
  estimate = fraction * inside.astype(jnp.float32)
  spread = jnp.sqrt(inside * fraction * (1 - fraction)) + 1.0

  def at(offset):  # sample key at `offset` spreads below the estimate (from the top)
    if n <= sample.size:  # the sample is every key: the rank is known exactly
      rank = k - above_hi - 1
    else:
      rank = (jnp.ceil(estimate + offset * spread) - 1).astype(jnp.int32)
    index = last - 1 - jnp.clip(rank, 0, jnp.maximum(inside - 1, 0))
    return sample[jnp.clip(index, 0, sample.size - 1)]

  upper, centre, lower = at(-1.5), at(0.0), at(1.5)
  one = jnp.ones((), key_dtype)
  guided = jnp.stack([upper, centre, jnp.maximum(centre, one) - one, lower,
                      jnp.maximum(lower, one) - one])
  probes = jnp.where(inside >= PROBES, guided, even)
  return jnp.sort(jnp.clip(probes, lo, jnp.maximum(hi, one) - one))


def bracket_kth(count_above: Callable[[Array], Array], k: Array, n: int, key_dtype: Any,
                sample: Array | None, stop_at: int) -> Bracket:
  """Counting passes until the bracket holds the k-th key and at most
  ``stop_at`` keys, or a single key value. ``count_above(thresholds)`` counts
  the keys above each of ``PROBES`` sorted thresholds; ``sample``, sorted keys
  that aim the passes, or None to split the bracket evenly."""

  def more(b):
    return (b.at_least_lo - b.above_hi > stop_at) & (b.lo < b.hi)

  def one_pass(b):
    probes = _probe_keys(b, k, sample, n)
    return _narrow(b, probes, count_above(probes), k)

  return lax.while_loop(more, one_pass, full_bracket(n, key_dtype))


def _block_sums(keys: Array, term: Callable[[Array, int], Array]) -> Array:
  """Per block of 8 keys, the float32 sum of ``term(key, row)``.

  The buffer is read as 8 rows of ``q = size // 8`` (block ``j`` holds
  positions ``i * q + j`` for rows ``i < 8``), plus one block for the
  ``size % 8`` trailing keys (positions ``8 * q + i``). Summing 8 rows
  elementwise is one fused loop that XLA vectorises along the rows. Terms are
  small integers whose sums stay below 2**24, so every sum is exact.
  """
  q, r = divmod(keys.size, ROWS)
  parts: list[Array] = []
  if q:
    rows = keys[:ROWS * q].reshape(ROWS, q)
    parts.append(sum((term(rows[i], i) for i in range(1, ROWS)), term(rows[0], 0)))
  if r:
    tail = keys[ROWS * q:]
    tail_sum = sum((term(tail[i], i) for i in range(1, r)), term(tail[0], 0))
    parts.append(tail_sum.reshape(1).astype(jnp.float32))
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def _packed_counts(keys: Array, thresholds: Array) -> Array:
  """``count(key > t)`` for each of ``PROBES`` sorted thresholds, in one pass:
  each key adds ``16 ** (number of thresholds below it)`` to its block's sum,
  so a block's sum holds six 4-bit counters (at most 8 each)."""
  powers = [np.float32(16.0 ** b) for b in range(PROBES + 1)]

  def term(x, row):
    del row
    value = jnp.float32(powers[0])
    for b in range(PROBES):
      value = jnp.where(x > thresholds[b], powers[b + 1], value)
    return value

  def add(a, b):
    return tuple(x + y for x, y in zip(a, b))

  packed = _block_sums(keys, term).astype(jnp.int32)
  # One reduction with six results, so that XLA computes the pass once.
  fields = tuple((packed >> (4 * b)) & 15 for b in range(PROBES + 1))
  per_bucket = jnp.stack(lax.reduce(fields, tuple(jnp.int32(0) for _ in fields), add, (0,)))
  # count(key > thresholds[m]) = keys in buckets m + 1 and above.
  return jnp.cumsum(per_bucket[::-1])[::-1][1:]


def _sample(keys: Array) -> Array:
  """Sorted keys of a strided sample of about ``SAMPLE`` keys."""
  stride = max(1, keys.size // SAMPLE)
  return jnp.sort(keys[stride // 2::stride])


def _select_in_buffer(keys: Array, k: Array, bracket: Bracket, band_masks: Array,
                      buffer: int) -> tuple[Array, Array, Array]:
  """The k-th key, the keys above it and the last tie kept, when the bracket
  holds at most ``buffer`` keys.

  The band's keys are gathered into a buffer: each slot finds its block by
  descending a tree of per-block counts (8 children per node), then its row by
  the block's bit mask.
  """
  counts = lax.population_count(band_masks)
  levels = [counts]
  while levels[-1].size > 512:
    top = levels[-1]
    levels.append(jnp.pad(top, (0, -top.size % ROWS)).reshape(-1, ROWS).sum(axis=1))
  top = levels[-1]
  top_end = jnp.cumsum(top)
  slot = jnp.arange(buffer, dtype=jnp.int32)
  node = jnp.minimum(jnp.searchsorted(top_end, slot, side="right"), top.size - 1).astype(jnp.int32)
  rest = slot - (top_end[node] - top[node])
  for level in reversed(levels[:-1]):
    children = jnp.pad(level, (0, -level.size % ROWS))
    child = jnp.zeros_like(node)
    before = jnp.zeros_like(rest)
    end = jnp.zeros_like(rest)
    for i in range(ROWS):  # the first child whose running count passes `rest`
      end = end + children[ROWS * node + i]
      passed = end <= rest
      child = child + passed.astype(jnp.int32)
      before = jnp.where(passed, end, before)
    rest = rest - before
    node = ROWS * node + jnp.minimum(child, ROWS - 1)
  block = jnp.minimum(node, band_masks.size - 1)
  bits = (band_masks[block][:, None] >> jnp.arange(ROWS, dtype=jnp.int32)) & 1
  row = jnp.minimum(jnp.sum(jnp.cumsum(bits, axis=1) <= rest[:, None], axis=1),
                    ROWS - 1).astype(jnp.int32)
  q = keys.size // ROWS
  position = jnp.where(block < q, row * q + block, ROWS * q + row)
  valid = slot < top_end[-1]
  band = jnp.where(valid, keys[jnp.clip(position, 0, keys.size - 1)], jnp.zeros((), keys.dtype))
  position = jnp.where(valid, position, INT32_MAX)
  # The buffer holds the keys ranked above_hi + 1 ...: the k-th is among them.
  rank = k - bracket.above_hi  # 1-based within the band
  kth = jnp.sort(band)[buffer - rank]
  above_in_band = jnp.sum(valid & (band > kth), dtype=jnp.int32)
  ties = jnp.sort(jnp.where(valid & (band == kth), position, INT32_MAX))
  return kth, bracket.above_hi + above_in_band, ties[rank - above_in_band - 1]


def _nth_set(band_masks: Array, size: int, n: Array) -> Array:
  """Position of the n-th (1-based) set bit of the block masks, in position
  order: row by row, then the tail block."""
  q, r = divmod(size, ROWS)
  row_bits = [(band_masks[:q] >> i) & 1 for i in range(ROWS)]
  per_row = jnp.stack([jnp.sum(b) for b in row_bits])
  tail_bits = ((band_masks[q] >> jnp.arange(ROWS, dtype=jnp.int32)) & 1) if r else jnp.zeros(
      (ROWS,), jnp.int32)
  ends = jnp.cumsum(per_row)
  row = jnp.sum(ends < n).astype(jnp.int32)  # 8: the tail block
  m = n - jnp.where(row > 0, ends[jnp.maximum(row - 1, 0)], 0)
  tail_pos = ROWS * q + jnp.argmax(jnp.cumsum(tail_bits) >= m).astype(jnp.int32)
  if not q:
    return tail_pos
  bits = lax.switch(jnp.minimum(row, ROWS - 1), [lambda b=b: b for b in row_bits])
  chunk = 1024
  padded = jnp.pad(bits, (0, -q % chunk)).reshape(-1, chunk)
  chunk_ends = jnp.cumsum(padded.sum(axis=1))
  c = jnp.minimum(jnp.sum(chunk_ends < m), padded.shape[0] - 1).astype(jnp.int32)
  m_in = m - jnp.where(c > 0, chunk_ends[jnp.maximum(c - 1, 0)], 0)
  j = c * chunk + jnp.argmax(jnp.cumsum(padded[c]) >= m_in).astype(jnp.int32)
  return jnp.where(row < ROWS, row * q + j, tail_pos)


def find_kth(keys: Array, k: Array) -> tuple[Array, Array, Array, Array]:
  """The k-th largest key (``1 <= k <= keys.size``), the number of keys above
  it, the position of the last tie kept (``INT32_MAX`` when every tie is
  kept) and the counting passes made before the band pass."""
  n = keys.size
  buffer = min(BUFFER, 1 << max(n - 1, 1).bit_length())
  if n <= buffer:  # every key fits in the buffer: no counting pass
    b = full_bracket(n, keys.dtype)
  else:
    b = bracket_kth(lambda t: _packed_counts(keys, t), k, n, keys.dtype, _sample(keys), buffer)

  def band(x, row):
    return jnp.where((x >= b.lo) & (x <= b.hi), np.float32(2.0 ** row), np.float32(0))

  band_masks = _block_sums(keys, band).astype(jnp.int32)

  def buffered():
    return _select_in_buffer(keys, k, b, band_masks, buffer)

  if n <= buffer:
    return (*buffered(), b.passes)

  def tie():  # the bracket is one value: cut its ties by position
    rank = k - b.above_hi
    last = lax.cond(rank == jnp.sum(lax.population_count(band_masks)),
                    lambda: jnp.int32(INT32_MAX), lambda: _nth_set(band_masks, n, rank))
    return b.lo, b.above_hi, last.astype(jnp.int32)

  return (*lax.cond(b.lo == b.hi, tie, buffered), b.passes)
