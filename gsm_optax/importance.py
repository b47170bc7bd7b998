"""Importance scores: which weights deserve the loss gradient."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any
ImportanceFn = Callable[[PyTree, PyTree], PyTree]
Importance = str | ImportanceFn


def score_dtype(*xs: Array):
  """float64 for float64 inputs, float32 for every other dtype: the dtype scores are ranked in."""
  dtype = jnp.result_type(*xs)
  return jnp.float64 if dtype == jnp.float64 else jnp.float32


def taylor(params: PyTree, grads: PyTree) -> PyTree:
  """First-order Taylor importance ``|g * w|`` (Ding et al. 2019, eq. 4).

  Computed in float32 (float64 for float64 leaves). The product of two float16
  values is always exact there, and so is that of two bfloat16 values while
  it stays within float32's normal range ([2**-126, 2**128)), so low precision
  introduces no ties; bfloat16 products beyond that overflow to inf or lose
  bits, as they would for float32 parameters.

  Args:
    params: parameters.
    grads: gradients, same structure.

  Returns:
    Scores, same structure, float32 (or float64).

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import taylor
    >>> taylor({"w": jnp.array([1., -2.])}, {"w": jnp.array([-3., 0.5])})
    {'w': Array([3., 1.], dtype=float32)}
  """

  def score(w, g):
    dtype = score_dtype(w, g)
    return jnp.abs(g.astype(dtype) * w.astype(dtype))

  return jax.tree_util.tree_map(score, params, grads)


def magnitude(params: PyTree, grads: PyTree) -> PyTree:
  """Magnitude importance ``|w|``; ``grads`` is unused.

  Args:
    params: parameters.
    grads: ignored.

  Returns:
    Scores, same structure, float32 (or float64).

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import magnitude
    >>> magnitude({"w": jnp.array([1., -2.])}, None)
    {'w': Array([1., 2.], dtype=float32)}
  """
  del grads
  return jax.tree_util.tree_map(lambda w: jnp.abs(w.astype(score_dtype(w))), params)


_BUILTIN = {"taylor": taylor, "magnitude": magnitude}


def resolve_importance(importance: Importance) -> ImportanceFn:
  """Maps ``"taylor"``, ``"magnitude"`` or a callable to a scoring function."""
  if callable(importance):
    return importance
  if isinstance(importance, str) and importance in _BUILTIN:
    return _BUILTIN[importance]
  group_scores = {"group_taylor": ("|sum g * w| over a group", "taylor"),
                  "group_rms": ("the RMS of a group's weights", "magnitude")}
  if isinstance(importance, str) and importance in group_scores:
    what, weights = group_scores[importance]
    raise ValueError(
        f"importance={importance!r} ({what}) scores groups: give groups"
        f" (gsm_optax.keep_top_groups, gsm(..., groups=...)), or rank weights by {weights!r}."
    )
  raise ValueError(
      f"importance must be one of {sorted(_BUILTIN)} or a callable"
      f" (params, grads) -> scores; got importance={importance!r}."
  )
