"""Prints the tables of docs/RESULTS.md from the runs' JSON files in this directory.

    python docs/results/summarize.py

The unstructured runs only: the structured ones (``structured_*.json``, ``"structured": true``
in their config) are summarized by ``summarize_structured.py``.
"""

from __future__ import annotations

import argparse
import glob
import os
from collections import defaultdict

import numpy as np

from gsm_optax.experiments.results import load_results

HERE = os.path.dirname(os.path.abspath(__file__))
PAPER = {("lenet300", 60): 98.18, ("lenet5", 125): 99.22, ("lenet5", 300): 99.06}
# The goals the project set itself for the mean after the final prune (docs/RESULTS.md).
GOAL = {("lenet300", 60): 98.25, ("lenet5", 125): 99.0, ("lenet5", 300): 98.8}
NAMES = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5"}


def pct(x: float) -> str:
  return f"{100 * x:.2f}"


def spread(values: list[float]) -> str:
  if len(values) == 1:
    return pct(values[0]) + " (1 seed)"
  v = 100 * np.asarray(values)
  return (f"{v.mean():.2f} ± {v.std(ddof=1):.2f} ({len(v)} seeds: "
          + ", ".join(f"{x:.2f}" for x in v) + ")")


def schedule(r: dict) -> str:
  c = r["config"]
  b, g = c["base"], c["gsm"]
  text = (f"base {b['epochs']} ep (lr {b['learning_rate']:g}, drops at {list(b['boundaries'])});"
          f" GSM {g['epochs']} ep (lr {g['learning_rate']:g}, drops at {list(g['boundaries'])},"
          f" momentum {g['momentum']:g}{' Nesterov' if g['nesterov'] else ''},"
          f" decay {g['weight_decay']:g})")
  return text


def recipe(r: dict) -> str:
  """The GSM update: the paper's, or the options beyond it that the run used."""
  c = r["config"]
  parts = []
  if c.get("anneal_epochs"):
    parts.append(f"keep ratio annealed over {c['anneal_epochs']} ep")
  if c.get("passive_weight_decay"):
    start = c.get("passive_weight_decay_begin_epoch", 0)
    parts.append(f"passive decay {c['passive_weight_decay']:g}"
                 + (f" from ep {start}" if start else ""))
  if c.get("importance_ema"):
    parts.append(f"importance EMA {c['importance_ema']:g}")
  return (", recipe: " + ", ".join(parts)) if parts else ""


def _base_key(r: dict) -> tuple:
  """Runs from the same base model: same setting and seed, and the same base accuracy (a base
  model retrained on another machine or jax build can differ in the last digits)."""
  c = r["config"]
  return (c["model"], int(c["compression"]), c["seed"], c["base"]["epochs"],
          r["base"]["final_test_accuracy"])


def main() -> None:
  runs = defaultdict(list)
  for path in sorted(glob.glob(os.path.join(HERE, "*.json"))):
    r = load_results(path)
    c = r["config"]
    if c.get("structured"):  # compressed in groups, not weights: summarize_structured.py
      continue
    # Runs made before the recipe existed have none of its fields: they ran the paper's update.
    key = (c["model"], int(c["compression"]), c["base"]["epochs"], c["gsm"]["epochs"],
           c["gsm"]["weight_decay"], c.get("anneal_epochs", 0), c.get("passive_weight_decay", 0.0),
           c.get("passive_weight_decay_begin_epoch", 0), c.get("importance_ema", 0.0))
    runs[key].append((os.path.basename(path), r))

  print("| experiment | paper | goal | after the final prune | before the prune | base |"
        " remaining | schedule | wall time / run | machine |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for key, items in sorted(runs.items()):
    rs = [r for _, r in items if "gsm" in r]
    if not rs:
      continue
    after = [r["gsm"]["accuracy_after_prune"] for r in rs]
    before = [r["gsm"]["accuracy_before_prune"] for r in rs]
    base = [r["base"]["final_test_accuracy"] for r in rs]
    wall = np.mean([r["base"]["seconds"] + r["gsm"]["seconds"] for r in rs]) / 60
    setting = key[:2]
    met = "met" if 100 * np.mean(after) >= GOAL[setting] else "**not met**"
    label = f"{NAMES[key[0]]}, {key[1]}x" + recipe(rs[0])
    if key[2:4] != (200, 280):
      label += ", shortened"
    elif key[4] != 5e-4:
      label += f", GSM decay {key[4]:g}"
    m = rs[0]["machine"]
    print(f"| {label} | {PAPER[setting]} | >= {GOAL[setting]} ({met}) |"
          f" {spread(after)} | {spread(before)} | {spread(base)} |"
          f" {rs[0]['gsm']['nonzeros']:,} of {rs[0]['eligible_weights']:,} |"
          f" {schedule(rs[0])} | {wall:.0f} min (base + GSM) |"
          f" {m['cpu_count']}-core {m['processor']} CPU, jax {m['jax']} |")

  print("\nPer-layer density found by GSM (after the final prune):\n")
  for _, items in sorted(runs.items()):
    for name, r in items:
      if "gsm" not in r:
        continue
      layers = [x for x in r["gsm"]["layers"]["leaves"] if x["eligible"]]
      cells = ", ".join(f"{x['path']} {x['nonzeros']:,}/{x['size']:,} ({100 * x['density']:.2f}%)"
                        for x in layers)
      print(f"- `{name}`: {cells}")

  print("\nThe final prune, and the shrink predicted for the weights outside the top-Q:\n")
  print("| run | predicted shrink factor | L2 share removed by the prune | L1 share removed |"
        " weights beyond Q above 1/10 of the Q-th | accuracy lost in the prune |")
  print("|---|---|---|---|---|---|")
  for _, items in sorted(runs.items()):
    for name, r in items:
      if "gsm" not in r:
        continue
      g = r["gsm"]
      print(f"| `{name}` | {r['predicted_shrink_factor']:.2g} | {pct(g['removed_l2_fraction'])}% |"
            f" {pct(g['removed_l1_fraction'])}% | {g.get('num_carrying', '-')} |"
            f" {pct(g['accuracy_before_prune'] - g['accuracy_after_prune'])} points |")

  print("\nLottery tickets and baselines (same base model, same number of epochs):\n")
  print("| run | GSM ticket | magnitude ticket | GSM + final prune | one-shot prune + fine-tune |"
        " gradual magnitude pruning |")
  print("|---|---|---|---|---|---|")
  for _, items in sorted(runs.items()):
    for name, r in items:
      if not any(k in r for k in ("lottery", "oneshot", "gradual")):
        continue
      lot = r.get("lottery", {})
      cell = lambda d: pct(d["final_test_accuracy"]) if d else "-"
      print(f"| `{name}` | {cell(lot.get('gsm'))} | {cell(lot.get('magnitude'))} |"
            f" {pct(r['gsm']['accuracy_after_prune']) if 'gsm' in r else '-'} |"
            f" {cell(r.get('oneshot'))} | {cell(r.get('gradual'))} |")


  print("\nGSM against gradual magnitude pruning from the same base model, seed by seed"
        " (test accuracy after the final prune / at the end, no fine-tuning after either):\n")
  gradual = {}
  for items in runs.values():
    for _, r in items:
      if "gradual" in r:
        c = r["config"]
        gradual[_base_key(r)] = r
  print("| setting | seed | GSM run | GSM after the prune | gradual magnitude pruning |"
        " GSM - gradual |")
  print("|---|---|---|---|---|---|")
  for key, items in sorted(runs.items()):
    for name, r in items:
      c = r["config"]
      g = gradual.get(_base_key(r))
      if "gsm" not in r or g is None:
        continue
      a, b = r["gsm"]["accuracy_after_prune"], g["gradual"]["final_test_accuracy"]
      print(f"| {NAMES[key[0]]}, {key[1]}x{recipe(r) or ', paper'} | {c['seed']} | `{name}` |"
            f" {pct(a)} | {pct(b)} | {100 * (a - b):+.2f} |")


if __name__ == "__main__":
  argparse.ArgumentParser(description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
  main()
