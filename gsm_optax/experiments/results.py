"""Reading and writing the experiments' JSON results, with the names older runs wrote mapped to
today's.

The experiments' JSON speaks the library's words: ``passive_weight_decay`` as in
:func:`gsm_optax.gsm`, and the fields of :class:`gsm_optax.PruneReadiness`
(``removed_l2_fraction``, ``num_carrying``, ``largest_removed``). Runs started
before those names were unified (issue 23) wrote other ones, and may still be
writing them; :func:`load_results` reads both, so ``gsm-optax sweep --summary``,
the plots and the tables of docs/RESULTS.md work on either. :func:`write_json`
writes them whole or not at all; :func:`readiness_row` gives a readiness its JSON fields.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

import gsm_optax

# Old key -> today's key, wherever it occurs in a results, result or history file.
RENAMED_KEYS = {
    "passive_decay": "passive_weight_decay",
    "passive_decay_begin_epoch": "passive_weight_decay_begin_epoch",
    "outside_fraction": "removed_l2_fraction",
    "carrying_beyond_q": "num_carrying",
    "largest_removed_magnitude": "largest_removed",
    "group_score": "group_importance",
}
# The values of a renamed key that changed too: the config's "group_score" named the group
# score |sum g*w| "taylor" and sum |g*w| "summed_taylor"; the library calls them "group_taylor"
# and "taylor" (gsm_optax.keep_top_groups).
RENAMED_VALUES = {"group_score": {"taylor": "group_taylor", "summed_taylor": "taylor"}}


def rename_keys(obj: Any) -> Any:
  """``obj`` (parsed JSON) with every old key of :data:`RENAMED_KEYS` renamed.

  A key already written under its new name wins over its old name. Lists and
  nested dicts are renamed throughout; the key order is kept.

  Args:
    obj: a parsed JSON value.

  Returns:
    The same value with today's key names.
  """
  if isinstance(obj, list):
    return [rename_keys(x) for x in obj]
  if not isinstance(obj, dict):
    return obj
  out: dict[str, Any] = {}
  for key, value in obj.items():
    new = RENAMED_KEYS[key] if key in RENAMED_KEYS else key
    if new != key and new in obj:
      continue
    value = RENAMED_VALUES.get(key, {}).get(value, value) if isinstance(value, str) else value
    out[new] = rename_keys(value)
  return out


def load_results(path: str) -> Any:
  """Reads a JSON file written by the experiments, in today's key names (:func:`rename_keys`).

  Args:
    path: a ``results.json``, ``result.json`` or ``history.json``.

  Returns:
    The parsed JSON.
  """
  with open(path) as f:
    return rename_keys(json.load(f))


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` as JSON to ``path`` atomically: whole, or not at all.

  The JSON goes to ``path + ".tmp"`` first and is moved onto ``path`` by
  ``os.replace``, so a process killed mid-write leaves no ``path`` (or the
  previous one): a ``results.json`` that marks a job done is always complete.
  NumPy and JAX scalars and arrays are written as numbers and lists.

  Args:
    path: the file to write.
    obj: the JSON value.
  """
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=_json_default)
  os.replace(tmp, path)


def readiness_row(r: gsm_optax.PruneReadiness, num_test: int) -> dict[str, Any]:
  """A :class:`gsm_optax.PruneReadiness` (``eval_fn`` counting correct answers) as JSON fields."""
  return {
      "test_accuracy": int(r.metric_before) / num_test,
      "pruned_test_accuracy": int(r.metric_after) / num_test,
      "removed_l2_fraction": float(r.removed_l2_fraction),
      "removed_l1_fraction": float(r.removed_l1_fraction),
      "largest_removed": float(r.largest_removed),
      "num_carrying": int(r.num_carrying),
  }


def _json_default(x: Any) -> Any:
  if isinstance(x, (np.generic, jax.Array)):
    return np.asarray(x).tolist()
  raise TypeError(f"not JSON serialisable: {type(x)}")
