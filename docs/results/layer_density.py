"""Per-layer density of every method of one sweep cell, side by side.

GSM finds each layer's share of the budget by itself; gradual magnitude
pruning and one-shot pruning find theirs from the magnitudes. This script
reads a cell's finished jobs in a sweep's output directory and writes, per
prunable layer, how many weights each method kept after its final prune:

  - a GSM method (``recommended``, ``paper``...): the ``gsm`` entry's
    ``layers`` of its ``results.json`` (counted by the runner after the
    final global magnitude prune);
  - ``gradual`` and ``oneshot``: the non-zeros of that phase's saved
    parameters (``<job>/<phase>/params.msgpack``; pruned weights are hard
    zeros there), over the same prunable leaves;
  - ``tickets``: the same of its magnitude ticket (``lottery_magnitude``),
    whose mask is a global magnitude prune of the base model, as the column
    ``magnitude mask`` (the GSM tickets' masks are their GSM jobs' columns).

    python docs/results/layer_density.py RUNS/sweep/mnist_lenet5_125x_seed0 \\
        --json docs/results/layers/mnist_lenet5_125x_seed0.json \\
        --plot docs/results/plots/mnist_lenet5_125x_seed0_layers.png

The JSON and the plot need only the jobs that have finished; the others are
left out (and named on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import jax
import numpy as np
from flax import serialization

from gsm_optax.experiments.results import load_results, write_json

# method -> (its column, the phase whose saved parameters hold its mask as hard zeros)
PARAM_PHASES = {"gradual": ("gradual", "gradual"), "oneshot": ("oneshot", "oneshot"),
                "tickets": ("magnitude mask", "lottery_magnitude")}


def _short(path: str) -> str:
  """``"['fc1']['kernel']"`` -> ``"fc1/kernel"``."""
  return "/".join(p.strip("'\"") for p in path.replace("]", "").split("[") if p) or path


def saved_nonzeros(directory: str) -> dict[str, int]:
  """Non-zeros of every leaf of ``<directory>/params.msgpack``, keyed like the runner's layers."""
  with open(os.path.join(directory, "params.msgpack"), "rb") as f:
    params = serialization.msgpack_restore(f.read())
  return {jax.tree_util.keystr(path): int(np.count_nonzero(np.asarray(leaf)))
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def cell_layers(cell_dir: str) -> dict[str, Any]:
  """``{"layers": [{path, size}...], "methods": {column: [nonzeros per layer]}}`` of a cell."""
  layers: list[dict[str, Any]] | None = None
  kept: dict[str, list[int]] = {}
  pending: dict[str, str] = {}
  for method in sorted(os.listdir(cell_dir)):
    job = os.path.join(cell_dir, method)
    results_file = os.path.join(job, "results.json")
    if not os.path.isfile(results_file):
      continue
    results = load_results(results_file)
    if "gsm" in results and "layers" in results["gsm"]:
      leaves = [leaf for leaf in results["gsm"]["layers"]["leaves"] if leaf["eligible"]]
      layers = layers or [{"path": leaf["path"], "size": leaf["size"]} for leaf in leaves]
      kept[method] = [leaf["nonzeros"] for leaf in leaves]
    elif method in PARAM_PHASES:
      column, phase = PARAM_PHASES[method]
      pending[column] = os.path.join(job, phase)
  if layers is None:
    raise SystemExit(f"no finished GSM job in {cell_dir}: its layers name the prunable leaves")
  for column, directory in pending.items():
    counts = saved_nonzeros(directory)
    kept[column] = [counts[layer["path"]] for layer in layers]
  return {"cell": os.path.basename(os.path.normpath(cell_dir)), "layers": layers, "methods": kept}


def table(cell: dict[str, Any]) -> str:
  methods = list(cell["methods"])
  lines = ["| layer | weights | " + " | ".join(methods) + " |",
           "|---|---|" + "---|" * len(methods)]
  for i, layer in enumerate(cell["layers"]):
    row = [f"{100 * cell['methods'][m][i] / layer['size']:.2f}%" for m in methods]
    lines.append(f"| {_short(layer['path'])} | {layer['size']:,} | " + " | ".join(row) + " |")
  total = sum(layer["size"] for layer in cell["layers"])
  kept = [f"{sum(cell['methods'][m]):,}" for m in methods]
  lines.append(f"| all | {total:,} | " + " | ".join(kept) + " |")
  return "\n".join(lines)


def plot(cell: dict[str, Any], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  names = [_short(layer["path"]) for layer in cell["layers"]]
  methods = list(cell["methods"])
  width = 0.8 / len(methods)
  fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(names) * len(methods) + 2), 3.8))
  x = np.arange(len(names))
  for j, method in enumerate(methods):
    density = [100 * k / layer["size"] for k, layer in zip(cell["methods"][method], cell["layers"])]
    ax.bar(x + (j - (len(methods) - 1) / 2) * width, density, width, label=method)
  ax.set_yscale("log")
  ticks = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
  ax.yaxis.set_major_formatter(ticks)
  ax.yaxis.set_minor_formatter(ticks)
  ax.set_xticks(x, names, rotation=60 if len(names) > 8 else 20, ha="right", fontsize=7)
  ax.set_ylabel("weights kept (%, log scale)")
  ax.set_title(f"Per-layer density after the final prune: {cell['cell']}", fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("cell_dir", help="a cell's directory in a sweep's --out")
  parser.add_argument("--json", help="write the per-layer counts here")
  parser.add_argument("--plot", help="write a grouped bar chart (PNG) here")
  args = parser.parse_args(argv)
  cell = cell_layers(args.cell_dir)
  # A job's column is its own name unless PARAM_PHASES names another.
  missing = sorted(job for job in os.listdir(args.cell_dir)
                   if PARAM_PHASES.get(job, (job,))[0] not in cell["methods"])
  if missing:
    print(f"left out (not finished or no layers): {', '.join(missing)}", file=sys.stderr)
  print(table(cell))
  if args.json:
    write_json(args.json, cell)
  if args.plot:
    plot(cell, args.plot)
  return 0


if __name__ == "__main__":
  sys.exit(main())
