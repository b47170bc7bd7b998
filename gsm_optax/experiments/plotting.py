"""PNG plots of an experiment's results (needs matplotlib: ``pip install 'gsm-optax[plots]'``)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["plot_layer_density", "plot_training", "write_plots"]


def _pyplot():
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError as e:
    raise ImportError("plots need matplotlib: pip install 'gsm-optax[plots]'") from e
  return plt


def _short(path: str) -> str:
  """``"['fc1']['kernel']"`` -> ``"fc1/kernel"``."""
  parts = [p.strip("'\"") for p in path.replace("]", "").split("[") if p]
  return "/".join(parts) or path


def plot_layer_density(results: dict[str, Any], path: str) -> str:
  """A bar chart of the density GSM found for each prunable layer.

  Args:
    results: the dictionary returned by :func:`gsm_optax.experiments.run`
      (needs its ``"gsm"`` entry).
    path: the PNG file to write.

  Returns:
    ``path``.
  """
  plt = _pyplot()
  layers = [leaf for leaf in results["gsm"]["layers"]["leaves"] if leaf["eligible"]]
  names = [_short(leaf["path"]) for leaf in layers]
  density = [100 * leaf["nonzeros"] / leaf["size"] for leaf in layers]
  overall = 100 * results["gsm"]["nonzeros"] / results["eligible_weights"]
  many = len(names) > 8  # a deep network: narrower bars, labels turned
  fig, ax = plt.subplots(figsize=(min(max(4, (0.5 if many else 1.2) * len(names) + 2), 14),
                                  4.6 if many else 3.6))
  bars = ax.bar(range(len(names)), density, color="tab:blue")
  for bar, leaf in zip(bars, layers):
    ax.annotate(f"{leaf['nonzeros']:,}/{leaf['size']:,}", (bar.get_x() + bar.get_width() / 2,
                bar.get_height()), ha="center", va="bottom", fontsize=6 if many else 8,
                rotation=90 if many else 0)
  ax.axhline(overall, color="tab:red", ls="--", lw=1, label=f"overall {overall:.2f}%")
  ax.set_xticks(range(len(names)), names, rotation=60 if many else 20, ha="right",
                fontsize=7 if many else 8)
  ax.set_ylim(0, min(100, 1.25 * max(density + [overall])))
  ax.set_ylabel("weights kept (%)")
  config = results["config"]
  ax.set_title(f"Per-layer density found by GSM: {config['model']}, {config['compression']:g}x")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def plot_training(results: dict[str, Any], path: str) -> str:
  """Test accuracy over GSM training (as is, and if pruned now), and the distance to the target.

  The distance is the share of the prunable weights' L2 norm outside the Q largest: what the
  final prune would remove at that epoch. The accuracy axis spans every epoch's values, the
  first epochs' included.

  Args:
    results: the dictionary returned by :func:`gsm_optax.experiments.run`.
    path: the PNG file to write.

  Returns:
    ``path``.
  """
  plt = _pyplot()
  fig = _training_figure(plt, results)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _training_figure(plt: Any, results: dict[str, Any]) -> Any:
  """The figure :func:`plot_training` writes."""
  history = results["gsm"]["history"]
  epochs = [row["epoch"] for row in history]
  if results.get("config", {}).get("structured"):
    target = "its kept groups"  # Q counts groups, not weights
  else:
    target = f"its {results['target_nonzeros']:,} largest weights"
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
  accuracy = [100 * r["test_accuracy"] for r in history]
  pruned = [100 * r["pruned_test_accuracy"] for r in history]
  ax1.plot(epochs, accuracy, label="GSM model")
  ax1.plot(epochs, pruned, label=f"GSM model if pruned now to {target}")
  values = accuracy + pruned
  base = results.get("base", {}).get("final_test_accuracy")
  if base is not None:
    ax1.axhline(100 * base, color="gray", ls=":", label="dense base model")
    values.append(100 * base)
  ax1.set_xlabel("GSM epoch")
  ax1.set_ylabel("test accuracy (%)")
  ax1.set_ylim(max(0.0, min(values) - 1), min(100.0, max(values) + 1))
  ax1.legend(fontsize=8)
  ax2.semilogy(epochs, [max(r["removed_l2_fraction"], 1e-12) for r in history])
  ax2.set_xlabel("GSM epoch")
  ax2.set_ylabel("share of the weights' L2 norm\nthe final prune would remove")
  ax2.set_title("distance to the sparse target (lower is closer)", fontsize=10)
  for ax in (ax1, ax2):
    ax.xaxis.get_major_locator().set_params(integer=True)  # whole epochs
  fig.tight_layout()
  return fig


def write_plots(results: dict[str, Any], out_dir: str) -> list[str]:
  """Writes every plot the results allow into ``out_dir``; returns their paths."""
  if "gsm" not in results:
    return []
  return [plot_layer_density(results, os.path.join(out_dir, "layer_density.png")),
          plot_training(results, os.path.join(out_dir, "gsm_training.png"))]
