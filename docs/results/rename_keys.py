"""Rewrites the archived JSON results in this directory in today's key names, once.

    python docs/results/rename_keys.py

Issue 23 gave each quantity one name (``passive_weight_decay``, ``removed_l2_fraction``,
``num_carrying``, ``largest_removed``, ``group_importance``); this applies
:data:`gsm_optax.experiments.results.RENAMED_KEYS` to every ``*.json`` below docs/results.
Readers go through :func:`gsm_optax.experiments.results.load_results`, which maps the old names
too, so results of runs started from older checkouts still load. Running it again changes
nothing.
"""

from __future__ import annotations

import glob
import json
import os

from gsm_optax.experiments.results import load_results

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
  changed = 0
  for path in sorted(glob.glob(os.path.join(HERE, "**", "*.json"), recursive=True)):
    with open(path) as f:
      text = f.read()
    new = json.dumps(load_results(path), indent=2, ensure_ascii="\\u" in text)
    if text.endswith("\n"):
      new += "\n"
    if new != text:
      with open(path, "w") as f:
        f.write(new)
      changed += 1
  print(f"rewrote {changed} files")


if __name__ == "__main__":
  main()
