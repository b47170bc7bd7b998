"""Exact global top-k selection over a pytree: the contract and the key order.

Every score is mapped to an unsigned integer key whose order is the order of
the scores (NaN lowest), the k-th largest key is found, and ties at that key
are broken by position. Where no leaf can be sharded, the keys are written
once into one flat buffer (the size of the scores in float32) and one of two
exact paths finds the k-th key over that buffer, so the compiled selection is
the same size whatever the number of leaves: a radix select on one CPU device
(:mod:`gsm_optax.selection.radix`) and, elsewhere, counting passes with no
scatter over the keys (:mod:`gsm_optax.selection.counting`). Leaves that may
be sharded stay in place and are only reduced to scalars
(:mod:`gsm_optax.selection.sharded`), so each keeps its sharding.
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
from gsm_optax.selection import counting, radix, sharded

Array = jax.Array
PyTree = Any


class Selection(NamedTuple):
  """Result of :func:`global_topk_selection`.

  Attributes:
    mask: pytree of bool arrays shaped like the scores; exactly ``k`` entries
      are True in total.
    threshold: the k-th largest score (float32, or float64 when any score leaf
      is float64); NaN when ``k`` is 0.
    num_greater: how many scores are strictly above ``threshold`` (int32).

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import global_topk_selection
    >>> global_topk_selection([jnp.array([3., 1., 2.])], 2).threshold
    Array(2., dtype=float32)
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

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import keep_count
    >>> keep_count(0.1, 25)  # floor(2.5)
    2
    >>> keep_count(jnp.asarray(0.1), 30)  # an array: a traced count
    Array(3, dtype=int32)
  """
  if _utils.is_concrete_number(keep_ratio) and not isinstance(keep_ratio, jax.Array):
    product = float(keep_ratio) * num_eligible
    if math.isnan(product):
      return num_eligible
    return math.floor(min(max(product, 1), num_eligible))
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
  """Maps floats to unsigned keys with the same order; -0 == +0, NaN lowest."""
  return _bits_to_key(lax.bitcast_convert_type(x.astype(float_dtype), key_dtype))


def _bits_to_key(bits: Array) -> Array:
  """Maps the bit patterns of floats to unsigned keys with the same order.

  Works on the bit patterns alone: XLA on CPU may treat subnormal floats as
  zero in float comparisons, which would tie them with 0.
  """
  key_dtype = bits.dtype
  nbits = np.iinfo(key_dtype).bits
  sign = jnp.asarray(1 << (nbits - 1), key_dtype)
  exponent_bits = {32: 8, 64: 11}[nbits]
  inf_bits = jnp.asarray(((1 << exponent_bits) - 1) << (nbits - 1 - exponent_bits), key_dtype)
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
  """The order of the scores as keys."""

  float_dtype: Any
  key_dtype: Any

  def key(self, x: Array) -> Array:
    return _to_key(x, self.float_dtype, self.key_dtype)

  def value(self, key: Array) -> Array:
    return _from_key(key, self.float_dtype, self.key_dtype)


class _Found(NamedTuple):
  kth: Array  # the k-th largest key
  above: Array  # count(key > kth)
  last: Array  # global position of the last kept key equal to kth (INT32_MAX: every one)
  passes: Array  # counting passes made (0 for the radix select)


def _flat_keys(leaves: list[Array], order: _Order, n: int, starts: tuple[Array, ...]) -> Array:
  """Every leaf's keys, in order, in one buffer padded with zero keys (NaN's,
  the lowest; the padding comes last, so it loses every tie) to a multiple of
  ``radix.CHUNK``. Each leaf's bits are written in place into the buffer at
  its start (an operand: see ``_utils.int_operands``), so that XLA computes
  them there rather than leaf by leaf before a copy, and the buffer is mapped
  to keys once, in place: a leaf adds a write, not the key's operations."""
  nan_bits = lax.bitcast_convert_type(jnp.asarray(jnp.nan, order.float_dtype), order.key_dtype)
  bits = jnp.full((-(-n // radix.CHUNK) * radix.CHUNK,), nan_bits, order.key_dtype)
  for leaf, start in zip(leaves, starts):
    leaf_bits = lax.bitcast_convert_type(leaf.astype(order.float_dtype), order.key_dtype)
    bits = lax.dynamic_update_slice_in_dim(bits, leaf_bits.reshape(-1), start, 0,
                                           allow_negative_indices=False)

  # Mapped in place, a slice at a time: an elementwise map of the whole buffer
  # would be written to a second one. Slices of up to 16 chunks keep the loop
  # short (a kernel launch each on accelerators).
  width = radix.CHUNK * math.gcd(bits.size // radix.CHUNK, 16)

  def to_keys(i, bits):
    return lax.dynamic_update_slice_in_dim(
        bits, _bits_to_key(lax.dynamic_slice_in_dim(bits, i * width, width)), i * width, 0)

  return lax.fori_loop(0, bits.size // width, to_keys, bits)


def _flat_masks(keys: Array, leaves: list[Array], starts: tuple[Array, ...], kth: Array,
                last: Array) -> list[Array]:
  """Each leaf's mask, given the buffer of every key: the keys above ``kth``
  and the ties up to position ``last`` are marked once over the buffer, and
  each leaf's mask is its slice of the marks (XLA computes each slice where
  the mask is used: no buffer of marks is held)."""
  marks = (keys > kth) | ((keys == kth) & (lax.iota(jnp.int32, keys.size) <= last))
  return [lax.dynamic_slice_in_dim(marks, start, leaf.size, allow_negative_indices=False)
          .reshape(leaf.shape) for leaf, start in zip(leaves, starts)]


def _find_kth_flat(keys: Array, k: Array, method: str) -> _Found:
  """The k-th largest of one flat buffer of keys (1 <= k <= keys.size)."""
  def by_radix():
    return _Found(*radix.find_kth(keys, k), jnp.int32(0))

  def by_counting():
    return _Found(*counting.find_kth(keys, k))

  if method == "counting":
    return by_counting()
  if method == "radix":
    return by_radix()
  return lax.platform_dependent(cpu=by_radix, default=by_counting)


def _select(scores: PyTree, k: int | Array,
            method: str = "auto") -> tuple[Selection, _Found | None]:
  """:func:`global_topk_selection` and how it was found. ``method`` is "auto"
  (radix on one CPU device, counting elsewhere), "counting" or "radix"
  (either on any backend, for tests and benchmarks); leaves that may be
  sharded always take the sharded path."""
  if method not in ("auto", "counting", "radix"):
    raise ValueError(f"method must be 'auto', 'counting' or 'radix'; got {method!r}.")
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
  selected = k > 0
  # With k = 0 no key reaches the largest key value (+inf's is below it): nothing is kept.
  top = jnp.asarray(np.iinfo(key_dtype).max, key_dtype)
  if _leaves_may_be_sharded():
    found_tuple, starts = sharded.find_kth(leaves, order.key, jnp.maximum(k, 1), n, key_dtype)
    found = _Found(*found_tuple)
    kth = jnp.where(selected, found.kth, top)
    masks = [mask.reshape(leaf.shape) for mask, leaf in zip(
        sharded.masks([order.key(leaf) for leaf in leaves], starts, kth, found.last), leaves)]
  else:
    # Any runtime value will do for the cond that makes the starts operands.
    first = next(leaf for leaf in leaves if leaf.size).reshape(-1)[0]
    offsets = [int(start) for start in np.cumsum([0] + [leaf.size for leaf in leaves[:-1]])]
    starts = _utils.int_operands(offsets, jnp.isnan(first))
    keys = _flat_keys(leaves, order, n, starts)
    found = _find_kth_flat(keys, jnp.maximum(k, 1), method)
    masks = _flat_masks(keys, leaves, starts, jnp.where(selected, found.kth, top), found.last)
  threshold = jnp.where(selected, order.value(found.kth), nan)
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

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import global_topk_selection
    >>> s = global_topk_selection({"a": jnp.array([3., 1.]), "b": jnp.array([2.])}, 2)
    >>> s.mask
    {'a': Array([ True, False], dtype=bool), 'b': Array([ True], dtype=bool)}
    >>> float(s.threshold), int(s.num_greater)
    (2.0, 1)
  """
  return _select(scores, k)[0]


def global_topk_mask(scores: PyTree, k: int | Array) -> PyTree:
  """Boolean masks of the ``k`` largest scores across all leaves together.

  The order used is the numeric order of the scores, with ``-0 == +0``, ``+inf``
  above every finite value and NaN (of either sign) below everything, ``-inf``
  included. Among equal scores the earlier one wins: leaves in
  ``jax.tree_util`` flattening order, and within a leaf row-major order. So the
  result equals taking the first ``k`` indices of a stable descending sort of
  all scores concatenated in that order, but no sort of the scores happens: a
  few passes over their keys find the k-th score (a radix select on one CPU
  device, sampled counting passes elsewhere), so the cost is a few reads of
  the scores whatever ``k`` is. The keys are written once into one buffer the
  size of the scores in float32, so the compiled selection does not grow with
  the number of leaves; leaves that may be sharded are read in place instead,
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
        # jaxlib ships no stub for PyTreeDef, so mypy cannot see its methods.
        for c, leaf in zip(treedef.flatten_up_to(costs), leaves)])  # type: ignore[attr-defined]
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
