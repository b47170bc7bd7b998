"""Exact global top-k selection over a pytree, without concatenating or sorting it.

Every score is mapped to an unsigned integer key whose order is the order of the
scores (NaN lowest), the k-th largest key is found by passes that read each
leaf in place, and ties at that key are broken by position. Two implementations
give the same result: on one CPU device, a radix select from chunked histograms
(measured faster there); elsewhere, counting passes aimed by a sample, then the
few keys left in the bracket gathered and sorted, with no scatter over the
scores (a scatter is a loop over its updates on TPUs, an atomic each on GPUs).
A third, for one CPU device, counts in float arithmetic only (three thresholds
packed in one float per 248 scores) until a threshold has exactly k scores
above it, and hands over to the radix select whenever that cannot be exact;
it gives the same result but did not measure reliably faster than radix, so
it is not the default (docs/PERFORMANCE.md; ``_select(..., "float")``).
Leaves that may be sharded are only ever reduced to scalars, so the selection
keeps each leaf's sharding and needs only scalar all-reduces.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gsm_optax import _utils

Array = jax.Array
PyTree = Any

_ROWS = 8  # a leaf is read as 8 rows: one block is one element of each row
_PROBES = 5  # thresholds counted per pass: six 4-bit counters fill a float32's 24 bits
_SAMPLE = 1 << 16  # keys sampled to aim the first counting pass
_BUFFER = 1 << 17  # most keys gathered for the exact selection within the bracket


class Selection(NamedTuple):
  """Result of :func:`global_topk_selection`.

  Attributes:
    mask: pytree of bool arrays shaped like the scores; exactly ``k`` entries
      are True in total.
    threshold: the k-th largest score (float32, or float64 when any score leaf
      is float64); NaN when ``k`` is 0.
    num_greater: how many scores are strictly above ``threshold`` (int32).
  """

  mask: PyTree
  threshold: Array
  num_greater: Array


def keep_count(keep_ratio: float | Array, num_eligible: int) -> int | Array:
  """Q = floor(keep_ratio * num_eligible), the number of weights kept.

  A Python float gives a Python int computed in float64, as the authors'
  ``int(keep_ratio * n)``. An array (a schedule's value, or a ratio injected
  with ``optax.inject_hyperparams``) gives a traced int32 computed in float32:
  a product within float32 rounding (2**-20 relative) of an integer is taken
  as that integer, so that a schedule's 0.09999996 for 0.1 (XLA computes
  ``count / T`` as ``count * (1 / T)``) still keeps 10% of the weights. The
  result is clipped to ``[1, num_eligible]``; NaN keeps every weight.

  Args:
    keep_ratio: fraction of eligible weights to keep.
    num_eligible: number of eligible weights.

  Returns:
    The keep count.
  """
  if _utils.is_concrete_number(keep_ratio) and not isinstance(keep_ratio, jax.Array):
    return int(math.floor(float(keep_ratio) * num_eligible))
  product = jnp.asarray(keep_ratio, jnp.float32) * jnp.float32(num_eligible)
  nearest = jnp.round(product)
  k = jnp.where(jnp.abs(product - nearest) <= product * 2.0**-20, nearest, jnp.floor(product))
  k = jnp.where(jnp.isnan(k), num_eligible, k)
  return jnp.clip(k, 1, num_eligible).astype(jnp.int32)


def _key_dtypes(leaves: list[Array]) -> tuple[Any, Any]:
  """The float type scores are compared in and the matching unsigned key type."""
  for leaf in leaves:
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      raise TypeError(
          f"scores must be floating point arrays; got a leaf of dtype {leaf.dtype}"
          f" and shape {leaf.shape}."
      )
  if any(leaf.dtype == jnp.float64 for leaf in leaves):
    return jnp.float64, jnp.uint64
  return jnp.float32, jnp.uint32


def _to_key(x: Array, float_dtype: Any, key_dtype: Any) -> Array:
  """Maps floats to unsigned keys with the same order; -0 == +0, NaN lowest.

  Works on the bit patterns alone: XLA on CPU may treat subnormal floats as
  zero in float comparisons, which would tie them with 0.
  """
  nbits = np.iinfo(key_dtype).bits
  sign = jnp.asarray(1 << (nbits - 1), key_dtype)
  exponent_bits = {32: 8, 64: 11}[nbits]
  inf_bits = jnp.asarray(((1 << exponent_bits) - 1) << (nbits - 1 - exponent_bits), key_dtype)
  bits = lax.bitcast_convert_type(x.astype(float_dtype), key_dtype)
  bits = jnp.where(bits == sign, jnp.zeros((), key_dtype), bits)  # -0 -> +0
  key = jnp.where((bits & sign) != 0, ~bits, bits | sign)
  # Every NaN (either sign) becomes 0; every other value maps above 0.
  return jnp.where((bits & ~sign) > inf_bits, jnp.zeros((), key_dtype), key)


def _from_key(key: Array, float_dtype: Any, key_dtype: Any) -> Array:
  nbits = np.iinfo(key_dtype).bits
  sign = jnp.asarray(1 << (nbits - 1), key_dtype)
  bits = jnp.where((key & sign) != 0, key & ~sign, ~key)
  value = lax.bitcast_convert_type(bits, float_dtype)
  return jnp.where(key == 0, jnp.asarray(jnp.nan, float_dtype), value)


def _flat_index(shape: tuple[int, ...]) -> Array:
  """Row-major flat index of every element, built from iotas (shards cleanly)."""
  index = jnp.zeros(shape, jnp.int32)
  stride = 1
  for dim in range(len(shape) - 1, -1, -1):
    index = index + lax.broadcasted_iota(jnp.int32, shape, dim) * stride
    stride *= shape[dim]
  return index


def _leaves_may_be_sharded() -> bool:
  """Whether what is traced now may run on sharded leaves.

  Under a plain ``jax.jit`` the shardings a leaf will have are only known at
  compilation (``in_shardings``, or the arguments' shardings with Auto axes),
  so the one sure sign at trace time that no leaf is sharded is that there is
  nothing to shard over: no mesh in context and a single device in all.
  """
  if not jax.sharding.get_abstract_mesh().empty:
    return True
  return jax.device_count() != 1


class _Order(NamedTuple):
  """The order of the scores as keys, and when float compares agree with it."""

  float_dtype: Any
  key_dtype: Any

  def key(self, x: Array) -> Array:
    return _to_key(x, self.float_dtype, self.key_dtype)

  def value(self, key: Array) -> Array:
    return _from_key(key, self.float_dtype, self.key_dtype)

  def floats_agree(self, keys: Array) -> Array:
    """Whether comparing scores with the floats of ``keys`` (as XLA does, maybe
    flushing subnormals to zero) orders every score as comparing keys would:
    true when every key is a normal or infinite float."""
    value = self.value(keys)
    tiny = jnp.asarray(jnp.finfo(self.float_dtype).tiny, self.float_dtype)
    return jnp.all(jnp.abs(value) >= tiny)  # False for NaN, zeros and subnormals


def _block_sums(leaf: Array, read: Callable[[Array], Array],
                term: Callable[[Array, int], Array]) -> Array:
  """Per block of 8 elements of ``leaf``, the float32 sum of ``term(read(x), row)``.

  The flattened leaf is read as 8 rows of ``q = size // 8`` (block ``j`` holds
  flat positions ``i * q + j`` for rows ``i < 8``), plus one block for the
  ``size % 8`` trailing elements (positions ``8 * q + i``). Summing 8 rows
  elementwise is one fused loop that XLA vectorises along the rows, as cheap
  as a plain float reduction of the leaf on XLA:CPU, where reductions of
  compares or integers are several times slower. Terms are small integers
  whose sums stay below 2**24, so every sum is exact.
  """
  flat = leaf.reshape(-1)
  q, r = divmod(flat.size, _ROWS)
  parts = []
  if q:
    rows = flat[:_ROWS * q].reshape(_ROWS, q)
    parts.append(sum(term(read(rows[i]), i) for i in range(_ROWS)))
  if r:
    keys = read(flat[_ROWS * q:])
    parts.append(sum(term(keys[i], i) for i in range(r)).reshape(1).astype(jnp.float32))
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def _num_blocks(size: int) -> int:
  return -(-size // _ROWS)


def _in_floats_if_exact(order: _Order, bounds: Array, make_pass: Callable[[Callable, Array], Any]):
  """Runs ``make_pass(read, bounds)`` comparing floats when that is exact for
  these bounds (a few instructions fewer per score), else comparing keys."""
  def as_floats():
    return make_pass(lambda x: x.astype(order.float_dtype), order.value(bounds))

  def as_keys():
    return make_pass(order.key, bounds)

  return lax.cond(order.floats_agree(bounds), as_floats, as_keys)


def _packed_counts(leaves: list[Array], order: _Order, thresholds: Array) -> Array:
  """``count(key > t)`` over all leaves for each of ``_PROBES`` sorted thresholds.

  One pass: each score adds ``16 ** (number of thresholds below it)`` to its
  block's sum, so a block's sum holds six 4-bit counters (at most 8 each).
  """
  powers = [np.float32(16.0 ** b) for b in range(_PROBES + 1)]

  def make_pass(read, bounds):
    def term(x, row):
      del row
      value = jnp.float32(powers[0])
      for b in range(_PROBES):
        value = jnp.where(x > bounds[b], powers[b + 1], value)
      return value

    def add(a, b):
      return tuple(x + y for x, y in zip(a, b))

    per_bucket = jnp.zeros((_PROBES + 1,), jnp.int32)
    for leaf in leaves:
      packed = _block_sums(leaf, read, term).astype(jnp.int32)
      # One reduction with six results, so that XLA computes the pass once.
      fields = tuple((packed >> (4 * b)) & 15 for b in range(_PROBES + 1))
      zeros = tuple(jnp.int32(0) for _ in fields)
      per_bucket = per_bucket + jnp.stack(lax.reduce(fields, zeros, add, (0,)))
    return per_bucket

  per_bucket = _in_floats_if_exact(order, thresholds, make_pass)
  # count(key > thresholds[m]) = keys in buckets m + 1 and above.
  return jnp.cumsum(per_bucket[::-1])[::-1][1:]


def _plain_counts(leaves: list[Array], order: _Order, thresholds: Array) -> Array:
  """``count(key > t)`` for each threshold: scalar reductions that shard cleanly."""
  total = jnp.zeros((_PROBES,), jnp.int32)
  for leaf in leaves:
    key = order.key(leaf)
    total = total + jnp.stack([jnp.sum(key > thresholds[b], dtype=jnp.int32)
                               for b in range(_PROBES)])
  return total


def _sample(leaves: list[Array], order: _Order, n: int) -> Array:
  """Sorted keys of a deterministic strided sample of about ``_SAMPLE`` scores
  (every score when there are fewer)."""
  stride = max(1, n // _SAMPLE)
  keys = [order.key(leaf.reshape(-1)[min(stride // 2, leaf.size - 1)::stride])
          for leaf in leaves if leaf.size]
  return jnp.sort(jnp.concatenate(keys))


class _Bracket(NamedTuple):
  lo: Array  # the k-th largest key lies in [lo, hi]
  hi: Array
  at_least_lo: Array  # count(key >= lo)
  above_hi: Array  # count(key > hi)
  passes: Array  # counting passes made


def _narrow(bracket: _Bracket, thresholds: Array, counts: Array, k: Array) -> _Bracket:
  """Shrinks the bracket with ``counts[i] = count(key > thresholds[i])``."""
  lo, hi, at_least_lo, above_hi, passes = bracket
  low_side = counts >= k  # the k-th key is above these thresholds
  best_low = jnp.argmax(jnp.where(low_side, thresholds, 0))
  best_high = jnp.argmin(jnp.where(low_side, jnp.asarray(np.iinfo(thresholds.dtype).max,
                                                         thresholds.dtype), thresholds))
  new_lo = jnp.where(jnp.any(low_side), thresholds[best_low] + 1, lo)
  new_hi = jnp.where(jnp.any(~low_side), thresholds[best_high], hi)
  return _Bracket(
      jnp.maximum(lo, new_lo), jnp.minimum(hi, new_hi),
      jnp.where(new_lo > lo, counts[best_low], at_least_lo),
      jnp.where(new_hi < hi, counts[best_high], above_hi), passes + 1)


def _probe_keys(bracket: _Bracket, k: Array, sample: Array | None, n: int) -> Array:
  """``_PROBES`` sorted thresholds in ``[lo, hi - 1]`` for the next counting pass.

  From the sample when it has keys inside the bracket: around the estimated
  position of the k-th key (the sample's spread about it is binomial), with
  the estimate itself and one less, so a value tied at the k-th is isolated in
  one pass. Otherwise the bracket is split evenly in key space.
  """
  lo, hi, at_least_lo, above_hi, _ = bracket
  key_dtype = lo.dtype
  span = hi - lo
  step = span // (_PROBES + 1)
  even = lo + jnp.maximum(step * jnp.arange(1, _PROBES + 1, dtype=key_dtype),
                          jnp.arange(_PROBES, dtype=key_dtype))
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
  probes = jnp.where(inside >= _PROBES, guided, even)
  return jnp.sort(jnp.clip(probes, lo, jnp.maximum(hi, one) - one))


def _bracket_kth(leaves: list[Array], order: _Order, k: Array, n: int, key_dtype: Any,
                 counts_fn: Callable[[list[Array], _Order, Array], Array],
                 sample: Array | None, stop_at: int) -> _Bracket:
  """Counting passes until the bracket holds the k-th key and at most
  ``stop_at`` keys, or a single key value."""
  start = _Bracket(jnp.zeros((), key_dtype), jnp.asarray(np.iinfo(key_dtype).max, key_dtype),
                   jnp.int32(n), jnp.int32(0), jnp.int32(0))

  def more(b):
    return (b.at_least_lo - b.above_hi > stop_at) & (b.lo < b.hi)

  def one_pass(b):
    probes = _probe_keys(b, k, sample, n)
    return _narrow(b, probes, counts_fn(leaves, order, probes), k)

  return lax.while_loop(more, one_pass, start)


def _select_in_buffer(leaves, order, k, bracket, band_masks, sizes, key_dtype, buffer):
  """The k-th key and its position when the bracket holds at most ``buffer`` keys.

  The band's keys are gathered into a buffer: each slot finds its block by
  descending a tree of per-block counts (8 children per node), then its row by
  the block's bit mask; each leaf gathers the slots that fall in it.
  """
  counts = jnp.concatenate([lax.population_count(m) for m in band_masks])
  masks = jnp.concatenate(band_masks)
  levels = [counts]
  while levels[-1].size > 512:
    top = levels[-1]
    pad = -top.size % _ROWS
    levels.append(jnp.pad(top, (0, pad)).reshape(-1, _ROWS).sum(axis=1))
  top = levels[-1]
  top_end = jnp.cumsum(top)
  slot = jnp.arange(buffer, dtype=jnp.int32)
  band = top_end[-1]
  node = jnp.minimum(jnp.searchsorted(top_end, slot, side="right"), top.size - 1).astype(jnp.int32)
  rest = slot - (top_end[node] - top[node])
  for level in reversed(levels[:-1]):
    children = jnp.pad(level, (0, -level.size % _ROWS))
    child = jnp.zeros_like(node)
    before = jnp.zeros_like(rest)
    end = jnp.zeros_like(rest)
    for i in range(_ROWS):  # the first child whose running count passes `rest`
      end = end + children[_ROWS * node + i]
      passed = end <= rest
      child = child + passed.astype(jnp.int32)
      before = jnp.where(passed, end, before)
    child = jnp.minimum(child, _ROWS - 1)
    rest = rest - before
    node = _ROWS * node + child
  block = jnp.minimum(node, masks.size - 1)
  bits = (masks[block][:, None] >> jnp.arange(_ROWS, dtype=jnp.int32)) & 1
  ends = jnp.cumsum(bits, axis=1)
  row = jnp.minimum(jnp.sum(ends <= rest[:, None], axis=1), _ROWS - 1).astype(jnp.int32)
  # Which leaf each block belongs to, and the flat position within it.
  block_starts = np.cumsum([0] + [_num_blocks(s) for s in sizes])
  elem_starts = np.cumsum([0] + list(sizes))
  leaf_of = jnp.clip(jnp.searchsorted(jnp.asarray(block_starts[1:], jnp.int32), block,
                                      side="right"), 0, len(sizes) - 1)
  local_block = block - jnp.asarray(block_starts[:-1], jnp.int32)[leaf_of]
  q = jnp.asarray([s // _ROWS for s in sizes], jnp.int32)[leaf_of]
  local = jnp.where(local_block < q, row * q + local_block, _ROWS * q + row)
  valid = slot < band
  # Slots are in block order, so each leaf's slots are one run: a leaf gathers a
  # window of min(size, buffer) slots from its run's start; later leaves overwrite
  # what spills past its run.
  per_leaf = jnp.stack([jnp.sum(c) for c in jnp.split(counts, block_starts[1:-1])]) if len(
      sizes) > 1 else jnp.sum(counts)[None]
  run_starts = jnp.cumsum(per_leaf) - per_leaf
  width = max(min(s, buffer) for s in sizes)
  local_padded = jnp.pad(local, (0, width))
  keys = jnp.zeros((buffer + width,), key_dtype)
  for i, leaf in enumerate(leaves):
    if not leaf.size:
      continue
    w = min(leaf.size, buffer)
    idx = lax.dynamic_slice_in_dim(local_padded, run_starts[i], w)
    got = order.key(leaf.reshape(-1)[jnp.clip(idx, 0, leaf.size - 1)])
    keys = lax.dynamic_update_slice_in_dim(keys, got, run_starts[i], 0)
  keys = jnp.where(valid, keys[:buffer], jnp.zeros((), key_dtype))
  position = jnp.where(valid, jnp.asarray(elem_starts[:-1], jnp.int32)[leaf_of] + local,
                       jnp.int32(np.iinfo(np.int32).max))
  # The k-th largest key: the buffer holds the keys ranked above_hi + 1 ... .
  rank = k - bracket.above_hi  # 1-based within the band
  kth = jnp.sort(keys)[buffer - rank]
  above_in_band = jnp.sum(valid & (keys > kth), dtype=jnp.int32)
  ties = jnp.sort(jnp.where(valid & (keys == kth), position, jnp.int32(np.iinfo(np.int32).max)))
  last = ties[rank - above_in_band - 1]
  return kth, bracket.above_hi + above_in_band, last


def _nth_set_in_leaf(mask: Array, size: int, n: Array) -> Array:
  """Flat position of the n-th (1-based) set bit of a leaf's block masks,
  in position order: row by row, then the tail block."""
  q, r = divmod(size, _ROWS)
  body = mask[:q]
  row_bits = [(body >> i) & 1 for i in range(_ROWS)]
  per_row = jnp.stack([jnp.sum(b) for b in row_bits])
  tail_bits = ((mask[q] >> jnp.arange(_ROWS, dtype=jnp.int32)) & 1) if r else jnp.zeros(
      (_ROWS,), jnp.int32)
  ends = jnp.cumsum(per_row)
  row = jnp.sum(ends < n).astype(jnp.int32)  # 8: the tail block
  before = jnp.where(row > 0, ends[jnp.maximum(row - 1, 0)], 0)
  m = n - before
  tail_pos = _ROWS * q + jnp.argmax(jnp.cumsum(tail_bits) >= m).astype(jnp.int32)
  if not q:
    return tail_pos
  bits = lax.switch(jnp.minimum(row, _ROWS - 1), [lambda b=b: b for b in row_bits])
  chunk = 1024
  padded = jnp.pad(bits, (0, -q % chunk)).reshape(-1, chunk)
  chunk_ends = jnp.cumsum(padded.sum(axis=1))
  c = jnp.minimum(jnp.sum(chunk_ends < m), padded.shape[0] - 1).astype(jnp.int32)
  m_in = m - jnp.where(c > 0, chunk_ends[jnp.maximum(c - 1, 0)], 0)
  j = c * chunk + jnp.argmax(jnp.cumsum(padded[c]) >= m_in).astype(jnp.int32)
  return jnp.where(row < _ROWS, row * q + j, tail_pos)


def _select_tie(k, bracket, band_masks, sizes):
  """Position of the kept tie ranked last when the bracket is one key value."""
  rank = k - bracket.above_hi  # 1-based among the ties, in position order
  per_leaf = jnp.stack([jnp.sum(lax.population_count(m)) for m in band_masks])
  ends = jnp.cumsum(per_leaf)
  leaf = jnp.minimum(jnp.sum(ends < rank), len(sizes) - 1).astype(jnp.int32)
  within = rank - (ends[leaf] - per_leaf[leaf])
  elem_starts = np.cumsum([0] + list(sizes))
  branches = [lambda i=i: _nth_set_in_leaf(band_masks[i], sizes[i], within) + int(elem_starts[i])
              if sizes[i] else jnp.int32(0) for i in range(len(sizes))]
  return lax.cond(rank == ends[-1], lambda: jnp.int32(np.iinfo(np.int32).max),
                  lambda: lax.switch(leaf, branches).astype(jnp.int32))


def _nth_tie_sharded(leaves, order, kth, rank, n):
  """Global position of the rank-th key equal to ``kth``, by counting passes
  over positions (scalar reductions only)."""
  starts = np.cumsum([0] + [leaf.size for leaf in leaves])

  def counts(probes):  # count(key == kth and position <= p)
    total = jnp.zeros((_PROBES,), jnp.int32)
    for leaf, start in zip(leaves, starts):
      tie = order.key(leaf) == kth
      pos = _flat_index(leaf.shape) + int(start)
      total = total + jnp.stack([jnp.sum(tie & (pos <= probes[b]), dtype=jnp.int32)
                                 for b in range(_PROBES)])
    return total

  def more(state):
    lo, hi = state
    return lo < hi

  def one_pass(state):  # answer in [lo, hi]
    lo, hi = state
    step = (hi - lo) // (_PROBES + 1)
    probes = jnp.minimum(lo + jnp.maximum(step * jnp.arange(1, _PROBES + 1), jnp.arange(_PROBES)),
                         hi - 1)
    enough = counts(probes) >= rank
    new_hi = jnp.min(jnp.where(enough, probes, hi))
    new_lo = jnp.max(jnp.where(enough, lo, probes + 1))
    return new_lo, new_hi

  return lax.while_loop(more, one_pass, (jnp.int32(0), jnp.int32(n - 1)))[1]


# --- The CPU path: radix select with chunked scatter-add histograms. ---
# On XLA:CPU, one device, it measured faster than the counting path below (see
# docs/PERFORMANCE.md); accelerators never compile it (``lax.platform_dependent``).

_DIGIT_BITS = 16
_BINS = 1 << _DIGIT_BITS
_CHUNK = 1 << 16  # elements scattered per loop iteration


def _leaf_histogram(hist: Array, leaf: Array, digit_fn: Callable[[Array, Array], Array]) -> Array:
  """Adds ``digit_fn(values, flat_positions)`` of one leaf to ``hist``, reading
  the leaf in chunks of ``_CHUNK`` so that XLA:CPU keeps them in cache. Digits
  outside ``[0, len(hist))`` are not counted."""
  flat = leaf.reshape(-1)
  chunks = flat.size // _CHUNK

  def count(hist, values, positions):
    return hist.at[digit_fn(values, positions)].add(1, mode="drop")

  def body(i, hist):
    chunk = lax.dynamic_slice_in_dim(flat, i * _CHUNK, _CHUNK)
    return count(hist, chunk, i * _CHUNK + lax.iota(jnp.int32, _CHUNK))

  if chunks:
    hist = lax.fori_loop(0, chunks, body, hist)
  start = chunks * _CHUNK
  if flat.size > start:
    tail = flat[start:]
    hist = count(hist, tail, start + lax.iota(jnp.int32, tail.size))
  return hist


def _radix_kth_key(leaves: list[Array], order: _Order, k: Array) -> tuple[Array, Array, Array]:
  """Radix select of the k-th largest key (1 <= k <= n), 16 bits per pass:
  the key, the number of keys above it and the number equal to it."""
  key_dtype = order.key_dtype
  nbits = np.iinfo(key_dtype).bits
  prefix = jnp.zeros((), key_dtype)
  above = jnp.zeros((), jnp.int32)
  equal = jnp.zeros((), jnp.int32)
  for shift in range(nbits - _DIGIT_BITS, -1, -_DIGIT_BITS):
    high = shift + _DIGIT_BITS

    def digit_fn(scores, positions, shift=shift, high=high, prefix=prefix):
      del positions
      key = order.key(scores)
      digit = ((key >> shift) & (_BINS - 1)).astype(jnp.int32)
      if high < nbits:  # keys outside the prefix go out of range: dropped
        digit = jnp.where((key >> high) == prefix, digit, _BINS)
      return digit

    hist = jnp.zeros((_BINS,), jnp.int32)
    for leaf in leaves:
      hist = _leaf_histogram(hist, leaf, digit_fn)
    at_least = jnp.cumsum(hist[::-1])[::-1]  # keys in this prefix with digit >= j
    digit = jnp.sum(above + at_least >= k) - 1
    equal = hist[digit]
    above = above + at_least[digit] - equal
    prefix = (prefix << _DIGIT_BITS) | digit.astype(key_dtype)
  return prefix, above, equal


def _radix_nth_tie(leaf: Array, is_tie: Callable[[Array], Array], n: Array) -> Array:
  """Flat position of the n-th (1-based) tie in ``leaf``: a histogram of the ties
  per block of positions, then one within the block."""
  block = max(1, -(-leaf.size // _BINS))

  def per_block(values, positions):
    return jnp.where(is_tie(values), positions // block, _BINS)

  hist = _leaf_histogram(jnp.zeros((_BINS,), jnp.int32), leaf, per_block)
  running = jnp.cumsum(hist)
  first_block = jnp.argmax(running >= n).astype(jnp.int32)
  if block == 1:
    return first_block
  n = n - (running[first_block] - hist[first_block])

  def in_block(values, positions):
    inside = is_tie(values) & (positions // block == first_block)
    return jnp.where(inside, positions - first_block * block, block)

  hist = _leaf_histogram(jnp.zeros((block,), jnp.int32), leaf, in_block)
  return first_block * block + jnp.argmax(jnp.cumsum(hist) >= n).astype(jnp.int32)


def _radix_find_kth(leaves: list[Array], order: _Order, k: Array) -> tuple[Array, Array, Array]:
  """The k-th largest key, the count above it and the global position of the
  last kept tie, by radix select (the CPU path)."""
  kth, above, equal = _radix_kth_key(leaves, order, k)
  slots = k - above  # ties kept

  def is_tie(values):
    return order.key(values) == kth

  def last_tie():
    counts = jnp.stack([_leaf_histogram(jnp.zeros((1,), jnp.int32), leaf,
                                        lambda v, p: jnp.where(is_tie(v), 0, 1))[0]
                        for leaf in leaves])
    ends = jnp.cumsum(counts)
    leaf = jnp.minimum(jnp.sum(ends < slots), len(leaves) - 1).astype(jnp.int32)
    starts = np.cumsum([0] + [x.size for x in leaves])
    branches = [lambda i=i: _radix_nth_tie(leaves[i], is_tie, slots - (ends[i] - counts[i]))
                + int(starts[i]) for i in range(len(leaves))]
    return lax.switch(leaf, branches).astype(jnp.int32)

  last = lax.cond(slots == equal, lambda: jnp.int32(np.iinfo(np.int32).max), last_tie)
  return kth, above, last


# --- The CPU path: float counting passes aimed by a sample, radix as the fallback. ---
# On XLA:CPU a reduction of compares or integers runs several times slower than a
# plain float sum, and one body feeding several reductions slower still; but an
# elementwise sum of a few rows of a leaf, whatever float arithmetic it computes,
# runs at the speed of reading the leaf (docs/PERFORMANCE.md, benchmarks/cpu_passes.py).

_FLOAT_ROWS = 8  # level 1: a leaf is read as 8 rows summed elementwise
_FLOAT_GROUP = 31  # level 2: 31 level-1 sums summed again: a field holds at most 248 (+ 7)
_FLOAT_BASE = 256  # one 8-bit field per threshold
_FLOAT_PROBES = 3  # three 8-bit fields fill a float32's 24-bit significand exactly
_FLOAT_SAMPLE = 1 << 14  # keys sampled to aim the first pass
_FLOAT_PASSES = 8  # counting passes before falling back to the radix select


def _float_limits(float_dtype: Any) -> tuple[Any, Any, Any]:
  """The saturating scale, the smallest threshold magnitude compared exactly,
  and the largest finite float.

  ``min(max(x - t, 0) * scale, 1)`` is 1 exactly when ``x > t`` provided the
  smallest positive ``x - t`` is a normal float (XLA:CPU flushes subnormal
  results to zero): true when ``|t|`` is at least ``tiny * 2**(mantissa + 2)``
  (then ``x - t`` is either large or at least one ulp of ``t``).
  """
  info = jnp.finfo(float_dtype)
  scale = np.asarray(2.0 ** (info.maxexp - 1), float_dtype)
  safe = np.asarray(float(info.tiny) * 2.0 ** (info.nmant + 2), float_dtype)
  return scale, safe, np.asarray(info.max, float_dtype)


def _fold(leaf: Array, body: Callable[[Array], Array],
          combine: Callable[[Array, Array], Array]) -> list[Array]:
  """``body`` of every element of ``leaf``, combined (an associative float
  operation) in groups of at most ``_FLOAT_ROWS * _FLOAT_GROUP`` elements: a
  list of small flat arrays whose elements, combined, give the whole.

  The leaf is viewed as ``(rows, minor)`` with its minor dimension kept (a 1-D
  leaf as 8 rows), and rows are combined elementwise, 8 then 31 at a time:
  loops that XLA:CPU vectorises along the minor dimension, where a reduction
  of the same body, or any view that splits the minor dimension, runs several
  times slower. The rows left over at each level are reduced along axis 0.
  """
  if leaf.ndim >= 2:
    x = leaf.reshape(-1, leaf.shape[-1])
    return _fold_level(body(x), combine, first=True)
  x = leaf.reshape(-1)
  q = x.size // _FLOAT_ROWS
  parts = [body(x[_FLOAT_ROWS * q:])] if x.size % _FLOAT_ROWS else []
  if not q:
    return parts
  level = _combine_rows(body(x[:_FLOAT_ROWS * q].reshape(_FLOAT_ROWS, q)), _FLOAT_ROWS,
                        combine)[0][0]
  q2 = q // _FLOAT_GROUP
  if q % _FLOAT_GROUP:
    parts.append(level[_FLOAT_GROUP * q2:])
  if q2:
    folded, _ = _combine_rows(level[:_FLOAT_GROUP * q2].reshape(_FLOAT_GROUP, q2),
                              _FLOAT_GROUP, combine)
    parts.append(folded[0])
  return parts


def _combine_rows(x: Array, rows: int, combine: Callable[[Array, Array], Array]
                  ) -> tuple[Array | None, Array | None]:
  """``x`` (shape ``(m, minor)``) with groups of ``m // rows`` rows combined
  elementwise (``None`` when ``m < rows``), and the ``m % rows`` rows left over
  combined along axis 0 (``None`` when none are)."""
  q, r = divmod(x.shape[0], rows)
  folded = None
  for i in range(rows if q else 0):
    part = x[i * q:(i + 1) * q]
    folded = part if folded is None else combine(folded, part)
  rest = None
  if r:
    rest = x[rows * q:]
    rest = functools.reduce(combine, [rest[i] for i in range(r)])
  return folded, rest


def _fold_level(x: Array, combine, first: bool = False) -> list[Array]:
  parts = []
  for rows in ((_FLOAT_ROWS, _FLOAT_GROUP) if first else (_FLOAT_GROUP,)):
    x, rest = _combine_rows(x, rows, combine)
    if rest is not None:
      parts.append(rest.reshape(-1))
    if x is None:
      return parts
  return parts + [x.reshape(-1)]


def _float_counts(leaves: list[Array], float_dtype: Any, thresholds: Array) -> tuple[Array, Array]:
  """``count(x > t)`` over all leaves for ``_FLOAT_PROBES`` safe thresholds, and
  whether the counts are valid (no NaN score reached them).

  One fused pass per leaf: each score adds ``256**j`` for each threshold ``j``
  it exceeds, as the float ``min(max(x - t_j, 0) * scale, 1)``; 8 rows of the
  leaf are summed elementwise into blocks (fields at most 8), 31 blocks
  elementwise again (fields at most 248), and only these small sums are
  decoded as integers. Every partial sum is an integer below 2**24: exact.
  """
  scale, _, _ = _float_limits(float_dtype)

  def term(x):
    total = None
    for j in range(_FLOAT_PROBES):
      bit = jnp.minimum(jnp.maximum(x - thresholds[j], 0) * scale, 1)
      bit = bit if j == 0 else bit * np.asarray(float(_FLOAT_BASE ** j), float_dtype)
      total = bit if total is None else total + bit
    return total

  counts = jnp.zeros((_FLOAT_PROBES,), jnp.int32)
  nan = jnp.asarray(False)
  for leaf in leaves:
    # One leaf after the other, each decoded on its own: XLA:CPU otherwise
    # fuses the leaves' loops together and the pass runs 4-5x slower.
    leaf, counts, nan = lax.optimization_barrier((leaf, counts, nan))
    parts = _fold(leaf.astype(float_dtype), term, jnp.add)
    packed = jnp.concatenate(parts) if len(parts) > 1 else parts[0]
    nan = nan | jnp.any(jnp.isnan(packed))
    fields = jnp.where(jnp.isnan(packed), 0, packed).astype(jnp.int32)
    counts = counts + jnp.stack([jnp.sum((fields >> (8 * j)) & (_FLOAT_BASE - 1),
                                         dtype=jnp.int32) for j in range(_FLOAT_PROBES)])
  return counts, ~nan


def _float_min_above(leaves: list[Array], float_dtype: Any, t: Array) -> Array:
  """``min{x > t}`` over all leaves (the largest float when none), in float
  arithmetic only: ``max(x, t) + (1 - [x > t]) * max_float``."""
  scale, _, big = _float_limits(float_dtype)

  def body(x):
    above = jnp.minimum(jnp.maximum(x - t, 0) * scale, 1)
    return jnp.maximum(x, t) + (1 - above) * big

  result = jnp.asarray(big, float_dtype)
  for leaf in leaves:
    leaf, result = lax.optimization_barrier((leaf, result))
    parts = _fold(leaf.astype(float_dtype), body, jnp.minimum)
    result = jnp.minimum(result, jnp.min(jnp.concatenate(parts) if len(parts) > 1 else parts[0]))
  return result


class _Aim(NamedTuple):
  lo: Array  # count(x > lo) = c_lo > k (lo may be -max_float, c_lo = n assumed)
  c_lo: Array
  hi: Array  # count(x > hi) = c_hi < k (hi may be max_float, c_hi = 0 assumed)
  c_hi: Array
  found: Array  # a threshold t with count(x > t) == k was counted
  t: Array
  ok: Array  # every pass so far was exact
  passes: Array
  stalled: Array  # the last pass shrank the bracket by less than half


def _float_probes(a: _Aim, k: Array, order: _Order) -> Array:
  """Three thresholds strictly inside ``(lo, hi)``, sorted.

  Linear interpolation in value between the bracket's ends aims at ranks k - d,
  k and k + d with ``d ~ sqrt(m)`` for ``m`` scores in the bracket (the spread of
  a rank estimated from ``m`` roughly uniform values), or, when the last pass
  barely shrank the bracket, the bracket is split in four in key space.
  """
  float_dtype = order.float_dtype
  lo, hi = a.lo, a.hi
  m = (a.c_lo - a.c_hi).astype(float_dtype)
  d = jnp.maximum(jnp.ceil(jnp.sqrt(m)), 1)
  ranks = jnp.stack([k + d, k.astype(float_dtype), k - d]).astype(float_dtype)
  frac = (a.c_lo.astype(float_dtype) - ranks) / jnp.maximum(m, 1)
  interp = lo + (hi - lo) * jnp.clip(frac, 0, 1)
  klo, khi = order.key(lo), order.key(hi)
  third = (khi - klo) // 3
  inf = jnp.asarray(jnp.inf, float_dtype)
  # Stalled: thirds in key space, and the float just below hi, which tells at
  # once whether hi is the k-th score, tied (then nothing lies strictly inside).
  keyed = jnp.stack([order.value(klo + third), order.value(klo + 2 * third),
                     jnp.nextafter(hi, -inf)])
  probes = jnp.where(a.stalled | ~jnp.all(jnp.isfinite(interp)), keyed, interp)
  probes = jnp.clip(probes, jnp.nextafter(lo, inf), jnp.nextafter(hi, -inf))
  return jnp.sort(probes)


def _float_aim(leaves: list[Array], order: _Order, k: Array, n: int) -> _Aim:
  """Counting passes until one threshold has exactly ``k`` scores above it, or
  the passes can no longer be exact (a NaN score, a threshold too close to 0,
  a bracket holding one tied value) or ``_FLOAT_PASSES`` are spent."""
  float_dtype = order.float_dtype
  _, safe, big = _float_limits(float_dtype)
  stride = max(1, n // _FLOAT_SAMPLE)
  sample = jnp.sort(jnp.concatenate([
      leaf.reshape(-1)[min(stride // 2, leaf.size - 1)::stride].astype(float_dtype)
      for leaf in leaves]))  # NaN sorts last
  s = sample.size
  p = k.astype(jnp.float32) / n
  centre = s - 1 - p * s  # the sample index whose value has about k scores above it
  spread = 3 * jnp.sqrt(s * p * (1 - p)) + 1
  index = jnp.stack([centre - spread, centre, centre + spread])
  first = sample[jnp.clip(jnp.round(index), 0, s - 1).astype(jnp.int32)]
  # A value repeated in the sample is likely tied at the k-th score: probe around it.
  inf = jnp.asarray(jnp.inf, float_dtype)
  first = jnp.stack([jnp.where(first[0] == first[1], jnp.nextafter(first[1], -inf), first[0]),
                     first[1],
                     jnp.where(first[2] == first[1], jnp.nextafter(first[1], inf), first[2])])
  start = _Aim(jnp.asarray(-big, float_dtype), jnp.int32(n), jnp.asarray(big, float_dtype),
               jnp.int32(0), jnp.asarray(False), jnp.asarray(0, float_dtype), jnp.asarray(True),
               jnp.int32(0), jnp.asarray(False))

  def more(a):
    return ~a.found & a.ok & (a.passes < _FLOAT_PASSES)

  def one_pass(a):
    probes = lax.cond(a.passes == 0, lambda: jnp.sort(first), lambda: _float_probes(a, k, order))
    inside = (probes > a.lo) & (probes < a.hi) & (jnp.abs(probes) >= safe)
    counts, valid = _float_counts(leaves, float_dtype, probes)
    hit = counts == k
    below = counts > k  # the k-th score is above these thresholds
    new_lo = jnp.max(jnp.where(below, probes, a.lo))
    new_c_lo = jnp.where(jnp.any(below) & (new_lo > a.lo),
                         jnp.min(jnp.where(below, counts, n)).astype(jnp.int32), a.c_lo)
    new_hi = jnp.min(jnp.where(~below & ~hit, probes, a.hi))
    new_c_hi = jnp.where(jnp.any(~below & ~hit) & (new_hi < a.hi),
                         jnp.max(jnp.where(~below & ~hit, counts, 0)).astype(jnp.int32), a.c_hi)
    new_lo = jnp.maximum(new_lo, a.lo)
    new_hi = jnp.minimum(new_hi, a.hi)
    ok = valid & jnp.all(inside) & jnp.all(jnp.isfinite(probes))
    # One tied value left: no float strictly inside the bracket.
    ok = ok & (jnp.any(hit) | (jnp.nextafter(new_lo, jnp.inf) < new_hi))
    stalled = 2 * (new_c_lo - new_c_hi) > (a.c_lo - a.c_hi)
    return _Aim(new_lo, new_c_lo, new_hi, new_c_hi, jnp.any(hit) & ok,
                jnp.max(jnp.where(hit, probes, -jnp.inf)), ok, a.passes + 1, stalled)

  return lax.while_loop(more, one_pass, start)


def _float_find_kth(leaves: list[Array], order: _Order, k: Array, n: int) -> _Found:
  """The CPU path: float counting passes, the radix select when they cannot
  be exact. When a pass finds ``t`` with exactly ``k`` scores above it, the
  k-th score is ``min{x > t}`` and every score equal to it is kept."""
  aim = _float_aim(leaves, order, k, n)
  _, safe, _ = _float_limits(order.float_dtype)
  value = _float_min_above(leaves, order.float_dtype, aim.t)
  fast = aim.found & (jnp.abs(value) >= safe) & (value < np.inf)

  def from_counts():
    return order.key(value), jnp.int32(0), jnp.int32(np.iinfo(np.int32).max)

  kth, above, last = lax.cond(fast, from_counts, lambda: _radix_find_kth(leaves, order, k))
  # Outside the cond, so that XLA drops this pass when nobody reads num_greater.
  above = jnp.where(fast, _float_counts(leaves, order.float_dtype, jnp.stack([value] * 3))[0][0],
                    above)
  return _Found(kth, above, last, aim.passes, ~fast)


class _Found(NamedTuple):
  kth: Array  # the k-th largest key
  above: Array  # count(key > kth)
  last: Array  # global position of the last kept key equal to kth
  passes: Array  # counting passes before the final one
  buffered: Array  # counting path: the band was gathered; float path: it fell back to radix


def _find_kth(leaves: list[Array], order: _Order, k: Array, n: int, key_dtype: Any,
              method: str = "auto") -> _Found:
  """The k-th largest key (1 <= k <= n) and where its ties stop."""
  leaves = [leaf for leaf in leaves if leaf.size]  # empty leaves hold no position
  if _leaves_may_be_sharded():
    b = _bracket_kth(leaves, order, k, n, key_dtype, _plain_counts, None, 0)
    ties = b.at_least_lo - b.above_hi
    rank = k - b.above_hi
    last = lax.cond(rank == ties, lambda: jnp.int32(np.iinfo(np.int32).max),
                    lambda: _nth_tie_sharded(leaves, order, b.lo, rank, n))
    return _Found(b.lo, b.above_hi, last, b.passes, jnp.asarray(False))
  def radix():
    return _Found(*_radix_find_kth(leaves, order, k), jnp.int32(0), jnp.asarray(False))

  def floats():
    return _float_find_kth(leaves, order, k, n)

  def counting():
    return _counting_find_kth(leaves, order, k, n, key_dtype)

  if method == "counting":
    return counting()
  if method == "radix":
    return radix()
  if method == "float":
    return floats()
  return lax.platform_dependent(cpu=radix, default=counting)


def _counting_find_kth(leaves: list[Array], order: _Order, k: Array, n: int,
                       key_dtype: Any) -> _Found:
  """The k-th largest key on one device: sampled counting passes, then the band."""
  sizes = [int(leaf.size) for leaf in leaves]
  buffer = min(_BUFFER, 1 << max(n - 1, 1).bit_length())
  if n <= buffer:  # every key fits in the buffer: no counting pass
    b = _Bracket(jnp.zeros((), key_dtype), jnp.asarray(np.iinfo(key_dtype).max, key_dtype),
                 jnp.int32(n), jnp.int32(0), jnp.int32(0))
  else:
    sample = _sample(leaves, order, n)
    b = _bracket_kth(leaves, order, k, n, key_dtype, _packed_counts, sample, buffer)

  def band_pass(read, bounds):
    def term(x, row):
      inside = (x >= bounds[0]) & (x <= bounds[1])
      return jnp.where(inside, np.float32(2.0 ** row), np.float32(0))

    return [_block_sums(leaf, read, term).astype(jnp.int32) for leaf in leaves]

  band_masks = _in_floats_if_exact(order, jnp.stack([b.lo, b.hi]), band_pass)

  def buffered():
    return _select_in_buffer(leaves, order, k, b, band_masks, sizes, key_dtype, buffer)

  if n <= buffer:
    kth, above, last = buffered()
    return _Found(kth, above, last, b.passes, jnp.asarray(True))

  def tie():
    return b.lo, b.above_hi, _select_tie(k, b, band_masks, sizes)

  single = b.lo == b.hi
  kth, above, last = lax.cond(single, tie, buffered)
  return _Found(kth, above, last, b.passes, ~single)


def _select(scores: PyTree, k: int | Array,
            method: str = "auto") -> tuple[Selection, _Found | None]:
  """:func:`global_topk_selection` and how it was found. ``method`` is "auto"
  (radix on one CPU device, counting elsewhere), "counting" or "radix"
  (either on any backend, for tests and benchmarks)."""
  leaves, treedef = jax.tree_util.tree_flatten(scores)
  float_dtype, key_dtype = _key_dtypes(leaves)
  n = sum(int(np.prod(leaf.shape)) for leaf in leaves)
  if n >= 2**31 - 1:
    raise ValueError(f"at most 2**31 - 2 scores are supported; got {n}.")
  if isinstance(k, (int, np.integer)):
    if not 0 <= k <= n:
      raise ValueError(f"k must be in [0, {n}] (the number of scores); got k={k}.")
  elif not jnp.issubdtype(jnp.result_type(k), jnp.integer):
    raise TypeError(f"k must be an integer; got {k!r} of dtype {jnp.result_type(k)}.")
  k = jnp.clip(jnp.asarray(k, jnp.int32), 0, n)
  nan = jnp.asarray(jnp.nan, float_dtype)
  if n == 0:
    mask = [jnp.zeros(leaf.shape, bool) for leaf in leaves]
    return Selection(jax.tree_util.tree_unflatten(treedef, mask), nan, jnp.int32(0)), None

  order = _Order(float_dtype, key_dtype)
  found = _find_kth(leaves, order, jnp.maximum(k, 1), n, key_dtype, method)
  selected = k > 0
  masks, start = [], 0
  for leaf in leaves:
    key = order.key(leaf)
    # Ties are kept up to and including global position `last`.
    cutoff = jnp.clip(found.last - start, -1, leaf.size).astype(jnp.int32)
    tie = (key == found.kth) & (_flat_index(leaf.shape) <= cutoff)
    masks.append(((key > found.kth) | tie) & selected)
    start += leaf.size
  threshold = jnp.where(selected, _from_key(found.kth, float_dtype, key_dtype), nan)
  num_greater = jnp.where(selected, found.above, 0)
  return Selection(jax.tree_util.tree_unflatten(treedef, masks), threshold, num_greater), found


def global_topk_selection(scores: PyTree, k: int | Array) -> Selection:
  """Selects the ``k`` largest scores across all leaves of a pytree.

  Same contract as :func:`global_topk_mask`, and also returns the threshold
  score and the number of scores strictly above it.

  Args:
    scores: pytree of floating point arrays.
    k: number of entries to select; a Python int or a (possibly traced) integer
      scalar. Traced values are clipped to ``[0, n]``.

  Returns:
    A :class:`Selection`.
  """
  return _select(scores, k)[0]


def global_topk_mask(scores: PyTree, k: int | Array) -> PyTree:
  """Boolean masks of the ``k`` largest scores across all leaves together.

  The order used is the numeric order of the scores, with ``-0 == +0``, ``+inf``
  above every finite value and NaN (of either sign) below everything, ``-inf``
  included. Among equal scores the earlier one wins: leaves in
  ``jax.tree_util`` flattening order, and within a leaf row-major order. So the
  result equals taking the first ``k`` indices of a stable descending sort of
  all scores concatenated in that order, but no concatenation or sort of the
  scores happens: a few passes over each leaf find the k-th score (a radix
  select on one CPU device, sampled counting passes elsewhere), so the cost is
  a few reads of the scores whatever ``k`` is, and every leaf keeps its
  sharding.

  Args:
    scores: pytree of floating point arrays (any shapes, any float dtypes;
      narrower floats are compared exactly in float32, float64 in float64).
    k: number of entries to select, ``0 <= k <= n`` where ``n`` is the total
      number of scores. A Python int is checked; a traced integer is clipped
      to ``[0, n]``.

  Returns:
    A pytree of bool arrays with the structure and shapes of ``scores`` and
    exactly ``k`` True entries in total.

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import global_topk_mask
    >>> global_topk_mask({"a": jnp.array([3., 1.]), "b": jnp.array([2.])}, 2)
    {'a': Array([ True, False], dtype=bool), 'b': Array([ True], dtype=bool)}
  """
  return global_topk_selection(scores, k).mask


def global_budget_selection(
    scores: PyTree, costs: PyTree | Callable[[list[Array]], Array], budget: float | Array,
) -> Selection:
  """Keeps the highest scores, best first, while their total cost fits a budget.

  The entries are taken in the order of :func:`global_topk_mask` (descending
  score, NaN last, ties by flattening position) and kept as long as the cost
  of what is kept stays within ``budget``: the longest such prefix. With every
  cost 1 and an integer budget this is exactly ``global_topk_selection(scores,
  budget)``. It is meant for small pytrees, such as one score per neuron or
  filter: it sorts the concatenated scores, where :func:`global_topk_selection`
  needs no sort and keeps each leaf's sharding.

  Args:
    scores: pytree of floating point arrays.
    costs: what a prefix costs. Either a pytree with the structure of
      ``scores`` (arrays of their shapes, or a scalar per leaf) of
      non-negative costs that add up, or a callable that gets, for each leaf
      (in flattening order), how many of its entries the first ``i + 1``
      entries of the order hold (a list of int32 arrays of length ``n``) and
      returns the cost of each of those ``n`` prefixes, non-decreasing: a
      cost that is not a sum, such as the multiply-accumulates of layers
      whose input and output widths both shrink.
    budget: the cost allowed, a number or a traced scalar.

  Returns:
    A :class:`Selection`: the mask, the score of the last entry kept (NaN when
    none is) and the number of entries kept (in ``num_greater``'s place).

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import global_budget_selection
    >>> s = global_budget_selection([jnp.array([3., 1., 2.])], [jnp.array([2., 1., 2.])], 3.)
    >>> s.mask
    [Array([ True, False, False], dtype=bool)]
  """
  leaves, treedef = jax.tree_util.tree_flatten(scores)
  float_dtype, key_dtype = _key_dtypes(leaves)
  sizes = [int(np.prod(leaf.shape)) for leaf in leaves]
  if sum(sizes) == 0:
    mask = [jnp.zeros(leaf.shape, bool) for leaf in leaves]
    return Selection(jax.tree_util.tree_unflatten(treedef, mask),
                     jnp.asarray(jnp.nan, float_dtype), jnp.int32(0))
  keys = jnp.concatenate([_to_key(leaf, float_dtype, key_dtype).reshape(-1) for leaf in leaves])
  flat_scores = jnp.concatenate([leaf.astype(float_dtype).reshape(-1) for leaf in leaves])
  order = jnp.argsort(~keys, stable=True)  # descending keys, earlier position first on ties
  if callable(costs):
    owner = np.repeat(np.arange(len(leaves)), sizes)
    counts = [jnp.cumsum(jnp.asarray(owner == i)[order], dtype=jnp.int32)
              for i in range(len(leaves))]
    prefix_cost = jnp.asarray(costs(counts), float_dtype)
  else:
    cost = jnp.concatenate([
        jnp.broadcast_to(jnp.asarray(c, float_dtype), leaf.shape).reshape(-1)
        for c, leaf in zip(treedef.flatten_up_to(costs), leaves)])
    prefix_cost = jnp.cumsum(cost[order])
  fits = prefix_cost <= jnp.asarray(budget, float_dtype)
  kept_sorted = jnp.cumsum(~fits) == 0  # the prefix before the first entry that does not fit
  kept = jnp.zeros(keys.shape, bool).at[order].set(kept_sorted)
  count = jnp.sum(kept_sorted, dtype=jnp.int32)
  last = flat_scores[order][jnp.maximum(count - 1, 0)]
  threshold = jnp.where(count > 0, last, jnp.asarray(jnp.nan, float_dtype))
  masks, start = [], 0
  for leaf, size in zip(leaves, sizes):
    masks.append(kept[start:start + size].reshape(leaf.shape))
    start += size
  return Selection(jax.tree_util.tree_unflatten(treedef, masks), threshold, count)
