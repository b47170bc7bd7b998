"""Argument checks and pytree helpers shared by the package's modules (private)."""

from __future__ import annotations

import numbers
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

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
    allow_schedule: bool = False,
) -> None:
  """Raises an error naming ``name`` and ``value`` unless ``ok(float(value))``.

  Traced values (``optax.inject_hyperparams`` under ``jit``) cannot be checked
  here and pass, as do schedules where ``allow_schedule``.
  """
  if isinstance(value, jax.core.Tracer) or (allow_schedule and callable(value)):
    return
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


def check_keep_ratio(keep_ratio: Any, name: str = "keep_ratio") -> None:
  """Raises unless ``keep_ratio`` is a number in (0, 1] or a schedule."""
  check_number(name, keep_ratio, lambda x: 0.0 < x <= 1.0,
               "a float in (0, 1] or a schedule (step -> ratio)", allow_schedule=True)


def missing_params_error(name: str, why: str) -> ValueError:
  """The error an ``update`` that needs the parameters raises when it gets none."""
  return ValueError(f"{name} {why} and needs the parameters: call update(updates, state, params).")


def check_params_structure(treedef: Any, params: PyTree) -> list[Any]:
  """``params``' leaves, matched to the updates' ``treedef``, or a clear ValueError."""
  try:
    return treedef.flatten_up_to(params)
  except (ValueError, TypeError) as e:
    raise ValueError(
        "params must have the structure of the updates; got params structure"
        f" {jax.tree_util.tree_structure(params)} for updates structure {treedef}."
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
    raise ValueError(f"{owner} names {path!r}, which is not a leaf of params; the leaves are"
                     f" {sorted(shapes)}.")
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
  frame, level = sys._getframe(1), 2
  while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
    frame, level = frame.f_back, level + 1
  warnings.warn(message, UserWarning, stacklevel=level)
