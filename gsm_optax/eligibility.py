"""Which parameters are prunable: optax-style masks over a params pytree.

One rule for the whole package: :func:`gsm_optax.prune`, :func:`gsm_optax.gsm`,
:func:`gsm_optax.sparsity_report` and the rest resolve ``eligible`` through
:func:`eligible_flags`, so they agree on what is prunable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Eligible = None | PyTree | Callable[[PyTree], PyTree]


def default_eligible(params: PyTree) -> PyTree:
  """The authors' rule: every floating point array of rank >= 2 (dense and conv kernels).

  Biases, scales and other vectors or scalars are not prunable, nor are integer
  or boolean arrays (a table of indices, a step counter), which have no
  gradient to rank.

  Args:
    params: a pytree of arrays.

  Returns:
    A pytree of bools with the structure of ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import default_eligible
    >>> default_eligible({"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)})
    {'bias': False, 'kernel': True}
  """
  return jax.tree_util.tree_map(
      lambda p: jnp.ndim(p) >= 2 and bool(jnp.issubdtype(jnp.result_type(p), jnp.floating)),
      params)


def resolve_eligible(eligible: Eligible, params: PyTree) -> PyTree:
  """Turns an ``eligible`` argument into a full pytree of Python bools.

  Args:
    eligible: None (the default rule, see :func:`default_eligible`), a pytree of
      bools with the structure of ``params`` (or a prefix of it, as with
      ``optax.masked``), or a callable ``params -> such a pytree``.
    params: the parameters.

  Returns:
    A pytree of Python bools with exactly the structure of ``params``.

  Raises:
    ValueError: when the mask does not match the params' structure, or holds
      something other than booleans.
  """
  if eligible is None:
    mask = default_eligible(params)
  elif callable(eligible):
    mask = eligible(params)
  else:
    mask = eligible
  try:
    full = jax.tree_util.tree_map(
        lambda m, sub: jax.tree_util.tree_map(lambda _: m, sub), mask, params
    )
  except ValueError as e:
    raise ValueError(
        "eligible must be a pytree of bools with the structure of params (or a"
        f" prefix of it); got eligible structure "
        f"{jax.tree_util.tree_structure(mask)} for params structure "
        f"{jax.tree_util.tree_structure(params)}."
    ) from e

  def as_bool(m):
    if isinstance(m, (bool, np.bool_)):
      return bool(m)
    if isinstance(m, (np.ndarray, jax.Array)) and m.shape == () and m.dtype == bool:
      try:
        return bool(m)
      except jax.errors.ConcretizationTypeError:
        pass
    raise ValueError(
        f"eligible must hold Python bools (one per parameter leaf); got {m!r}."
    )

  return jax.tree_util.tree_map(as_bool, full)


def eligible_flags(eligible: Eligible, params: PyTree, *, name: str = "params") -> list[bool]:
  """Flat list of eligibility flags, one per leaf of ``params``.

  Raises a TypeError naming the leaf when ``eligible`` marks a leaf that is not
  a floating point array: it cannot be pruned.
  """
  flags = jax.tree_util.tree_leaves(resolve_eligible(eligible, params))
  for flag, (path, leaf) in zip(flags, jax.tree_util.tree_leaves_with_path(params)):
    dtype = jnp.result_type(leaf)
    if flag and not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"eligible leaf {jax.tree_util.keystr(path)} of {name} has dtype"
          f" {dtype}; only floating point parameters can be pruned. Mark it"
          " ineligible with the `eligible` argument."
      )
  return flags


def eligible_leaves(
    eligible: Eligible, params: PyTree, *, name: str = "params"
) -> tuple[list[bool], int]:
  """Flat list of eligibility flags (:func:`eligible_flags`) and the number of eligible
  elements, which must not be 0."""
  flags = eligible_flags(eligible, params, name=name)
  count = sum(int(np.prod(jnp.shape(leaf)))
              for flag, leaf in zip(flags, jax.tree_util.tree_leaves(params)) if flag)
  if count == 0:
    raise ValueError(
        f"no eligible weights in {name}: the `eligible` rule selected no"
        " elements (the default selects floating point arrays of rank >= 2). Pass `eligible`"
        " to choose which parameters are pruned."
    )
  return flags, count
