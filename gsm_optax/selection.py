"""Exact global top-k selection over a pytree, without concatenating or sorting.

Every score is mapped to an unsigned integer key whose order is the order of the
scores (NaN lowest), the k-th largest key is found by a radix select built from
small histograms, and ties at that key are broken by position. Every pass reads
each leaf in place and reduces it to a fixed-size histogram or a scalar, so the
selection keeps each leaf's sharding and needs only small all-reduces.
"""

from __future__ import annotations

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

_DIGIT_BITS = 16
_BINS = 1 << _DIGIT_BITS
_CHUNK = 1 << 16  # elements scattered per loop iteration; see _leaf_histogram


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


def _mesh_of(x: Array) -> jax.sharding.AbstractMesh:
  """The mesh ``x`` is placed on as far as tracing can tell: the context's
  (``jax.set_mesh``), else the one its type carries (a plain ``jax.jit`` of
  arrays with a ``NamedSharding``); empty when neither is known."""
  mesh = jax.sharding.get_abstract_mesh()
  return mesh if not mesh.empty else jax.typeof(x).sharding.mesh


def _count_digits(hist: Array, digits: Array) -> Array:
  # Histograms are tiny: replicated, on the digits' mesh when they carry one.
  mesh = _mesh_of(digits)
  out = None if mesh.empty else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return hist.at[digits].add(1, mode="drop", out_sharding=out)


def _runs_on_one_device() -> bool:
  """Whether what is traced now runs on one device, however it is compiled.

  Under a plain ``jax.jit`` the shardings a leaf will have are only known at
  compilation (``in_shardings``, or the arguments' shardings with Auto axes),
  so the one sure sign at trace time is that there is nothing to shard over:
  no mesh in context and a single CPU device in all.
  """
  if not jax.sharding.get_abstract_mesh().empty:
    return False
  try:
    return jax.device_count("cpu") == 1
  except RuntimeError:  # no CPU backend: nothing is lowered for CPU
    return False


DigitFn = Callable[[Array, Array], Array]


def _leaf_histogram(hist: Array, leaf: Array, digit_fn: DigitFn) -> Array:
  """Adds ``digit_fn(values, flat_positions)`` of one leaf to ``hist``.

  Digits outside ``[0, len(hist))`` are not counted. XLA:CPU materialises a
  scatter's indices and updates, so scattering a whole leaf there writes and
  re-reads two arrays of its size (a reduction of a converted array is no
  better). On CPU the leaf is therefore read in chunks of ``_CHUNK`` by a loop,
  which keeps them in cache: several times faster, and no leaf-sized
  temporaries. Other backends fuse the digits into one scatter of the whole
  leaf, and so does CPU whenever the leaf could be sharded: the SPMD
  partitioner turns that scatter into a local histogram per device and an
  all-reduce, but it would all-gather a sharded leaf to slice chunks of it.
  Whether a leaf is sharded is often not known at trace time (a plain
  ``jax.jit`` learns its arguments' shardings only when it compiles), so CPU
  chunks only when there is a single CPU device and no mesh in context.
  """

  def whole(hist, leaf):
    return _count_digits(hist, digit_fn(leaf, _flat_index(leaf.shape)))

  def chunked(hist, leaf):
    flat = leaf.reshape(-1)
    chunks = flat.size // _CHUNK

    def body(i, hist):
      chunk = lax.dynamic_slice_in_dim(flat, i * _CHUNK, _CHUNK)
      positions = i * _CHUNK + lax.iota(jnp.int32, _CHUNK)
      return _count_digits(hist, digit_fn(chunk, positions))

    hist = lax.fori_loop(0, chunks, body, hist)
    start = chunks * _CHUNK
    if flat.size > start:
      tail = flat[start:]
      hist = _count_digits(hist, digit_fn(tail, start + lax.iota(jnp.int32, tail.size)))
    return hist

  if leaf.size <= _CHUNK or not _runs_on_one_device():
    return whole(hist, leaf)
  return lax.platform_dependent(hist, leaf, cpu=chunked, default=whole)


def _kth_largest_key(leaves: list[Array], to_key: Callable[[Array], Array], k: Array,
                     key_dtype: Any) -> tuple[Array, Array, Array]:
  """Radix select of the k-th largest key (1 <= k <= n), 16 bits per pass.

  Each pass histograms the next 16-bit digit of the keys that share the
  digits found so far; the running count of keys above that prefix tells
  which digit holds the k-th key. Returns the key, the number of keys strictly
  above it and the number equal to it.
  """
  nbits = np.iinfo(key_dtype).bits
  prefix = jnp.zeros((), key_dtype)
  above = jnp.zeros((), jnp.int32)
  equal = jnp.zeros((), jnp.int32)
  for shift in range(nbits - _DIGIT_BITS, -1, -_DIGIT_BITS):
    high = shift + _DIGIT_BITS

    def digit_fn(scores, positions, shift=shift, high=high, prefix=prefix):
      del positions
      key = to_key(scores)
      digit = ((key >> shift) & (_BINS - 1)).astype(jnp.int32)
      if high < nbits:  # keys outside the prefix go out of range: dropped
        digit = jnp.where((key >> high) == prefix, digit, _BINS)
      return digit

    hist = jnp.zeros((_BINS,), jnp.int32)
    for leaf in leaves:
      hist = _leaf_histogram(hist, leaf, digit_fn)
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


def _nth_tie_position(leaf: Array, is_tie: Callable[[Array], Array], n: Array) -> Array:
  """Row-major flat position of the n-th tie (1-based ``n``) in ``leaf``.

  A radix select on positions: one histogram of the ties per block of
  ``ceil(size / 2**16)`` positions finds the block holding the n-th tie, and a
  second histogram within that block finds its position.
  """
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


def _tie_cutoffs(leaves: list[Array], to_key: Callable[[Array], Array], threshold: Array,
                 slots: Array) -> list[Array]:
  """Per leaf, the position before which keys equal to ``threshold`` are kept.

  The first ``slots`` equal keys in flattening order are kept: whole leaves
  while slots remain, then a prefix of the one leaf where they run out (found
  in that leaf alone, one ``lax.switch`` branch per leaf).
  """
  def is_tie(values):
    return to_key(values) == threshold

  def tie_count(leaf):
    one_bin = jnp.zeros((1,), jnp.int32)
    return _leaf_histogram(one_bin, leaf, lambda v, p: jnp.where(is_tie(v), 0, 1))[0]

  counts = jnp.stack([tie_count(leaf) for leaf in leaves])
  before = jnp.cumsum(counts) - counts
  need = jnp.clip(slots - before, 0, counts)
  sizes = jnp.asarray([leaf.size for leaf in leaves], jnp.int32)
  partial = (need > 0) & (need < counts)  # at most one leaf
  branches = [
      lambda i=i: _nth_tie_position(leaves[i], is_tie, need[i]) + 1
      for i in range(len(leaves))
  ]
  cut = lax.switch(jnp.argmax(partial), branches)
  cutoffs = jnp.where(partial, cut, jnp.where(need > 0, sizes, 0))
  return [cutoffs[i] for i in range(len(leaves))]


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

  def to_key(x):
    return _to_key(x, float_dtype, key_dtype)

  kth, above, equal = _kth_largest_key(leaves, to_key, jnp.maximum(k, 1), key_dtype)
  slots = k - above  # how many keys equal to the threshold are kept
  cutoffs = lax.cond(
      slots == equal,  # every equal key fits: no position needed
      lambda: [jnp.int32(leaf.size) for leaf in leaves],
      lambda: _tie_cutoffs(leaves, to_key, kth, slots),
  )
  masks = []
  for leaf, cutoff in zip(leaves, cutoffs):
    key = to_key(leaf)
    tie = (key == kth) & (_flat_index(leaf.shape) < cutoff)
    masks.append((key > kth) | tie)
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
