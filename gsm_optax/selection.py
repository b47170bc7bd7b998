"""Exact global top-k selection over a pytree, without concatenating or sorting.

Every score is mapped to an unsigned integer key whose order is the order of the
scores (NaN lowest), the k-th largest key is found by a radix select built from
small histograms, and ties at that key are broken by position. Every pass reads
each leaf in place and reduces it to a fixed-size histogram or a scalar, so the
selection keeps each leaf's sharding and needs only small all-reduces.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
PyTree = Any

_DIGIT_BITS = 16
_BINS = 1 << _DIGIT_BITS


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


def _replicated() -> jax.sharding.PartitionSpec | None:
  """Replicated output sharding under a mesh context (histograms are tiny)."""
  return None if jax.sharding.get_abstract_mesh().empty else jax.sharding.PartitionSpec()


def _histogram(keys: list[Array], prefix: Array, shift: int, key_dtype: Any) -> Array:
  """Counts of the 16-bit digit at ``shift`` among keys whose higher bits == prefix."""
  hist = jnp.zeros((_BINS,), jnp.int32)
  high = shift + _DIGIT_BITS
  nbits = np.iinfo(key_dtype).bits
  for key in keys:
    digit = ((key >> shift) & (_BINS - 1)).astype(jnp.int32)
    if high < nbits:
      in_prefix = (key >> high) == prefix
      digit = jnp.where(in_prefix, digit, _BINS)  # out of range: dropped
    hist = hist.at[digit].add(1, mode="drop", out_sharding=_replicated())
  return hist


def _kth_largest_key(keys: list[Array], k: Array, key_dtype: Any):
  """Radix select of the k-th largest key (1 <= k <= n).

  Returns the key, the number of keys strictly above it and the number equal.
  """
  nbits = np.iinfo(key_dtype).bits
  prefix = jnp.zeros((), key_dtype)
  above = jnp.zeros((), jnp.int32)
  equal = jnp.zeros((), jnp.int32)
  for shift in range(nbits - _DIGIT_BITS, -1, -_DIGIT_BITS):
    hist = _histogram(keys, prefix, shift, key_dtype)
    # at_least[j]: keys in this prefix whose digit is >= j; non-increasing in j.
    at_least = jnp.cumsum(hist[::-1])[::-1]
    digit = jnp.sum(above + at_least >= k) - 1
    equal = hist[digit]
    above = above + at_least[digit] - equal
    prefix = (prefix << _DIGIT_BITS) | digit.astype(key_dtype)
  return prefix, above, equal


def _flat_index(shape: tuple[int, ...]) -> Array:
  """Row-major flat index of every element, built from iotas (shards cleanly)."""
  index = jnp.zeros(shape, jnp.int32)
  stride = 1
  for dim in range(len(shape) - 1, -1, -1):
    index = index + lax.broadcasted_iota(jnp.int32, shape, dim) * stride
    stride *= shape[dim]
  return index


def _first_n_true(flags: Array, n: Array) -> Array:
  """Keeps the first ``n`` True entries of ``flags`` in row-major order.

  Bisects on the flat position P such that exactly n flags lie before P, which
  costs log2(size) counting passes and, unlike a cumulative sum, never moves
  data between shards.
  """
  index = _flat_index(flags.shape)

  def count_before(p):
    return jnp.sum(flags & (index < p), dtype=jnp.int32)

  def body(_, bounds):
    lo, hi = bounds  # count_before(lo) < n <= count_before(hi)
    mid = lo + (hi - lo) // 2
    below = count_before(mid) < n
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  steps = max(int(flags.size).bit_length(), 1)
  _, hi = lax.fori_loop(0, steps, body, (jnp.int32(0), jnp.int32(flags.size)))
  return flags & (index < hi)


def _break_ties(
    keys: list[Array], threshold: Array, slots: Array
) -> list[Array]:
  """Masks with every key > threshold and the first ``slots`` keys == threshold."""
  equal = [key == threshold for key in keys]
  counts = jnp.stack([jnp.sum(e, dtype=jnp.int32) for e in equal])
  before = jnp.cumsum(counts) - counts
  masks = []
  for key, eq, count, offset in zip(keys, equal, counts, before):
    need = jnp.clip(slots - offset, 0, count)
    partial = (need > 0) & (need < count)
    chosen = lax.cond(
        partial,
        _first_n_true,
        lambda e, n: e & (n > 0),
        eq,
        need,
    )
    masks.append((key > threshold) | chosen)
  return masks


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
    return Selection(jax.tree_util.tree_unflatten(treedef, mask), nan, jnp.int32(0))

  keys = [_to_key(leaf, float_dtype, key_dtype) for leaf in leaves]
  kth, above, equal = _kth_largest_key(keys, jnp.maximum(k, 1), key_dtype)
  slots = k - above  # how many keys equal to the threshold are kept
  masks = lax.cond(
      slots == equal,
      lambda: [key >= kth for key in keys],
      lambda: _break_ties(keys, kth, slots),
  )
  selected = k > 0
  masks = [m & selected for m in masks]
  threshold = jnp.where(selected, _from_key(kth, float_dtype, key_dtype), nan)
  num_greater = jnp.where(selected, above, 0)
  return Selection(jax.tree_util.tree_unflatten(treedef, masks), threshold, num_greater)


def global_topk_mask(scores: PyTree, k: int | Array) -> PyTree:
  """Boolean masks of the ``k`` largest scores across all leaves together.

  The order used is the numeric order of the scores, with ``-0 == +0``, ``+inf``
  above every finite value and NaN (of either sign) below everything, ``-inf``
  included. Among equal scores the earlier one wins: leaves in
  ``jax.tree_util`` flattening order, and within a leaf row-major order. So the
  result equals taking the first ``k`` indices of a stable descending sort of
  all scores concatenated in that order, but no concatenation or sort happens:
  a radix select over 16-bit digits finds the k-th score with a few histogram
  passes per leaf, so the cost is a few reads of the scores whatever ``k`` is,
  and every leaf keeps its sharding.

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
