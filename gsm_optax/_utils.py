"""Argument checks and pytree helpers shared by the package's modules (private)."""

from __future__ import annotations

import numbers
import os
import sys
import types
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

PyTree = Any

INT32_MAX = 2**31 - 1


def is_concrete_number(x: Any) -> bool:
  """True for a Python or NumPy real number, or a concrete scalar jax.Array."""
  if isinstance(x, numbers.Real) and not isinstance(x, bool):
    return True
  if isinstance(x, (np.ndarray, np.generic)) and np.ndim(x) == 0:
    return True
  if isinstance(x, jax.Array) and x.ndim == 0 and not isinstance(x, jax.core.Tracer):
    return True
  return False


def check_number(
    name: str, value: Any, ok: Callable[[float], bool], expected: str,
    allow_schedule: bool = False, schedule_hint: str = "",
) -> None:
  """Raises an error naming ``name`` and ``value`` unless ``ok(float(value))``.

  Traced values (``optax.inject_hyperparams`` under ``jit``) cannot be checked
  here and pass, as do schedules where ``allow_schedule``. A schedule where a
  number is needed gets its own message, ending with ``schedule_hint``.
  """
  if isinstance(value, jax.core.Tracer) or (allow_schedule and callable(value)):
    return
  if callable(value):
    raise TypeError(f"{name} must be {expected}, not a schedule (a callable); got"
                    f" {name}={value!r}.{schedule_hint}")
  if isinstance(value, bool) or not is_concrete_number(value):
    raise TypeError(f"{name} must be {expected}; got {name}={value!r}.")
  if not ok(float(value)):  # NaN fails every range check
    raise ValueError(f"{name} must be {expected}; got {name}={value!r}.")


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
  """Raises unless ``value`` is a Python or NumPy int in ``[minimum, maximum]``."""
  span = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be an int {span}; got {name}={value!r}.")
  if value < minimum or (maximum is not None and value > maximum):
    raise ValueError(f"{name} must be an int {span}; got {name}={value!r}.")


def check_keep_ratio(keep_ratio: Any, name: str = "keep_ratio", *,
                     once: str | None = None) -> None:
  """Raises unless ``keep_ratio`` is a number in (0, 1] or, unless ``once``, a schedule.

  ``once`` names a function that prunes once, to one ratio (``"prune"``): a
  schedule given to it is told to pass the ratio it ends at.
  """
  if once is not None and callable(keep_ratio):
    raise TypeError(
        f"{once} needs {name} as a float in (0, 1], not a schedule: it prunes once, to one"
        f" ratio. Pass the ratio the schedule ends at, {once}(params, schedule(last_step)) or"
        f" the final_keep_ratio given to cubic_keep_ratio_schedule; got {name}={keep_ratio!r}.")
  check_number(name, keep_ratio, lambda x: 0.0 < x <= 1.0,
               "a float in (0, 1] or a schedule (step -> ratio)", allow_schedule=True)


def inject_hint(factory: str, name: str) -> str:
  """How to schedule ``name``, a number argument of the optimizer ``factory``."""
  return (f" To change {name} during training, wrap the optimizer:"
          f" optax.inject_hyperparams({factory})(..., {name}=schedule) calls it at every step.")


def missing_params_error(name: str, why: str) -> ValueError:
  """The error an ``update`` that needs the parameters raises when it gets none."""
  return ValueError(f"{name} {why} and needs the parameters: call update(updates, state, params).")


def check_params_structure(treedef: Any, params: PyTree) -> list[Any]:
  """``params``' leaves, matched to the updates' ``treedef``, or a clear ValueError."""
  try:
    return treedef.flatten_up_to(params)
  except (ValueError, TypeError) as e:
    hint = ""
    if (isinstance(params, Mapping) and "params" in params
        and jax.tree_util.tree_structure(params["params"]) == treedef):
      hint = (" These look like Flax variables: pass their params,"
              " update(updates, state, variables['params']).")
    raise ValueError(
        "params must have the structure of the updates; got params structure"
        f" {jax.tree_util.tree_structure(params)} for updates structure {treedef}.{hint}"
    ) from e


def has_no_leaves(params: PyTree) -> bool:
  """True for a pytree without arrays, such as the placeholder params that
  ``optax.tree_map_params`` passes to ``init``: there is nothing to validate yet."""
  return not jax.tree_util.tree_leaves(params)


def path_name(path: tuple[Any, ...]) -> str:
  """A key path as ``"fc1/kernel"``: dict keys, attribute names and indices joined by "/".

  The ``.value`` of an ``nnx.Variable`` (how an ``nnx.State`` of variables flattens) is
  left out, so that a state's paths are the same whether its leaves are variables (what
  ``nnx.Optimizer`` gives ``init``) or arrays (what it gives ``update``).
  """
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    path = path[:-1]
  parts = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return "/".join(parts)


def member_axis(owner: str, path: str, axis: int, size: int,
                shapes: dict[str, tuple[int, ...]]) -> int:
  """The non-negative axis of the leaf ``path`` that a group member names, after checking that
  the leaf exists, has that axis, and that its length is a multiple of ``size``; the errors
  name ``owner`` (``"groups['fc1']"``)."""
  if path not in shapes:
    hint = ""
    if f"params/{path}" in shapes:
      hint = (" These are Flax variables: groups name paths inside their params, so pass"
              " variables['params'] (the params alone).")
    raise ValueError(f"{owner} names {path!r}, which is not a leaf of params; the leaves are"
                     f" {sorted(shapes)}.{hint}")
  shape = shapes[path]
  if not -len(shape) <= axis < len(shape):
    raise ValueError(f"{owner}: {path} has shape {shape}, which has no axis {axis}.")
  normal = axis % len(shape)
  if shape[normal] % size:
    raise ValueError(f"{owner}: axis {axis} of {path} has length {shape[normal]}, not a multiple"
                     f" of size={size}.")
  return normal


def warn(message: str) -> None:
  """``warnings.warn`` pointing at the user's line: the first frame outside this package."""
  package = os.path.dirname(os.path.abspath(__file__))
  frame: types.FrameType | None = sys._getframe(1)
  level = 2
  while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
    frame, level = frame.f_back, level + 1
  warnings.warn(message, UserWarning, stacklevel=level)


def int_operands(values: list[int], predicate: jax.Array) -> tuple[jax.Array, ...]:
  """``values`` as int32 scalars that XLA reads as operands, not constants.

  XLA:CPU compiles one kernel per distinct fused computation, and a constant
  folded into a kernel makes it distinct: a leaf's position written into its
  kernels as a constant gives every leaf kernels of its own, so the compile
  time grows with the number of leaves. Returned by both branches of a
  ``lax.cond`` on a runtime ``predicate``, the values are operands, and the
  kernels of all the leaves of one shape are one computation, compiled once.
  """
  # Made inside each branch: constants made outside would be the cond's operands,
  # and XLA would see through it.
  def branch():
    return tuple(jnp.int32(v) for v in values)

  return lax.cond(predicate, branch, branch)
