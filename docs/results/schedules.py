"""Test accuracy epoch by epoch of every finished job of one sweep cell, on one time axis.

    python docs/results/schedules.py docs/results/sweep/fashion_mnist_vit_2x_structured_seed0 \
        --epochs 12 18 23 24 34 \
        --plot docs/results/plots/fashion_mnist_vit_2x_structured_seed0_schedules.png

A pruning job (a GSM recipe, ``gradual``) trains after its cell's base model, so its epochs are
counted after the base's; ``scratch`` and ``dense_long`` train from fresh weights for as many
epochs as the base and the pruning phase together. Side by side they show whether a job is
ahead at the end because of what it is (its width) or because of its schedule (when its
learning rate dropped). The table gives each job's test accuracy (%) at the ``--epochs`` asked
for ("-" where the job had not started or had ended), then at its last epoch.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from gsm_optax.experiments.sweep import is_recipe

FROM_SCRATCH = ("scratch", "dense_long")  # jobs that train from fresh weights


def curves(cell_dir: str) -> dict[str, list[tuple[int, float]]]:
  """``{job: [(epoch on the cell's time axis, test accuracy %), ...]}``: ``"base"`` (the dense
  base model, read from the first job that records it) and every job of ``cell_dir`` with a
  ``results.json`` (tickets aside)."""
  out: dict[str, list[tuple[int, float]]] = {}
  for job in sorted(os.listdir(cell_dir)):
    path = os.path.join(cell_dir, job, "results.json")
    if job == "tickets" or not os.path.exists(path):
      continue
    with open(path) as f:
      results: dict[str, Any] = json.load(f)
    base = results["base"]["history"]
    out.setdefault("base", [(row["epoch"], 100 * row["test_accuracy"]) for row in base])
    history = results["gsm" if is_recipe(job) else job]["history"]  # as sweep.collect reads it
    start = 0 if job in FROM_SCRATCH else len(base)
    out[job] = [(start + row["epoch"], 100 * row["test_accuracy"]) for row in history]
  return out


def table(data: dict[str, list[tuple[int, float]]], epochs: list[int]) -> str:
  """A markdown table: one row per job, its accuracy at each of ``epochs``, then its last."""
  lines = ["| job | " + " | ".join(f"epoch {e}" for e in epochs) + " | last (epoch) |",
           "|---|" + "---|" * (len(epochs) + 1)]
  for job, points in data.items():
    at = dict(points)
    cells = [f"{at[e]:.2f}" if e in at else "-" for e in epochs]
    last_epoch, last = points[-1]
    lines.append(f"| {job} | " + " | ".join(cells) + f" | {last:.2f} ({last_epoch}) |")
  return "\n".join(lines)


def plot(data: dict[str, list[tuple[int, float]]], path: str, title: str) -> None:
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError as e:
    raise SystemExit("--plot needs matplotlib: pip install 'gsm-optax[plots]'") from e
  fig, ax = plt.subplots(figsize=(7, 4))
  for job, points in data.items():
    x, y = zip(*points)
    ax.plot(x, y, marker=".", label=job, linewidth=2.5 if job == "base" else 1.2)
  low = min(y for points in data.values() for _, y in points[len(points) // 3:])
  ax.set_ylim(low - 0.5, None)
  ax.set_xlabel("epoch (a pruning job's count on after its base model's)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("cell_dir")
  parser.add_argument("--epochs", type=int, nargs="+", default=[])
  parser.add_argument("--plot", help="also draw the curves to this PNG (needs matplotlib)")
  args = parser.parse_args()
  data = curves(args.cell_dir)
  if not data:
    raise SystemExit(f"{args.cell_dir} holds no finished job (no */results.json)")
  print(table(data, args.epochs))
  if args.plot:
    plot(data, args.plot, os.path.basename(os.path.normpath(args.cell_dir)))
    print(f"wrote {args.plot}")


if __name__ == "__main__":
  main()
