"""Where GSM's default and gradual magnitude pruning part, in one finished sweep cell.

    python docs/results/mid_compression.py /work/runs/sweep fashion_mnist lenet300 30 --seed 1

Reads the cell's ``recommended`` and ``gradual`` jobs (and their shared base) and prints, per
layer, how many weights each method keeps and how many of those both keep; the training loss and
accuracy (the whole training set, no augmentation) and the test accuracy of each final sparse
model; and the same for a third model: gradual pruning's mask with GSM's weights retrained by
neither, i.e. how much of the gap is the mask and how much the weights.
"""

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import gsm_optax
from gsm_optax.experiments import runner, sweep
from gsm_optax.experiments.training import accuracy, cross_entropy_loss


def _loss(model, params, x, y, batch=2000):
  total = 0.0
  for i in range(0, x.shape[0], batch):
    total += float(cross_entropy_loss(model.apply, params, x[i:i + batch], y[i:i + batch])) * (
        min(batch, x.shape[0] - i))
  return total / x.shape[0]


def extra_method_job(description: str, method: str) -> tuple[str, tuple[str, str, float], int]:
  """The command line of a script that runs one more ``method`` in a finished sweep cell, and
  that job's directory (made, its ``base`` linked to the cell's base model), cell and seed."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("out", help="the sweep's --out")
  parser.add_argument("--cell", type=int, default=4, help="index into the sweep's GRID")
  parser.add_argument("--seed", type=int, default=1)
  args = parser.parse_args()
  dataset, model, compression = sweep.GRID[args.cell]
  directory = sweep.job_dir(args.out, dataset, model, compression, args.seed, method)
  os.makedirs(directory, exist_ok=True)
  link = os.path.join(directory, "base")
  if not os.path.exists(link):
    base = sweep.Job(dataset, model, 1.0, args.seed, "base").directory(args.out)
    os.symlink(os.path.relpath(os.path.join(base, "base"), directory), link)
  return directory, (dataset, model, compression), args.seed


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out")
  parser.add_argument("dataset")
  parser.add_argument("model")
  parser.add_argument("compression", type=float)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", help="also write the figures here")
  args = parser.parse_args()
  cell = (args.dataset, args.model, args.compression)
  config = sweep.sweep_config(*cell, args.seed, "recommended")
  r = runner.Runner(config, os.path.join(args.out, "_analysis"), quiet=True)
  keep = config.keep_ratio
  gsm_dir = sweep.job_dir(args.out, *cell, args.seed, "recommended")
  gradual_dir = sweep.job_dir(args.out, *cell, args.seed, "gradual")
  gsm_params = r.prune(runner.load_phase_params(gsm_dir, "gsm", config), keep)
  gradual_params = runner.load_phase_params(gradual_dir, "gradual", config)
  base_params = runner.load_phase_params(gsm_dir, "base", config)

  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(gsm_params)]
  eligible = jax.tree_util.tree_leaves(r.eligible(gsm_params))
  rows = []
  for path, e, g, d, b in zip(paths, eligible, jax.tree_util.tree_leaves(gsm_params),
                              jax.tree_util.tree_leaves(gradual_params),
                              jax.tree_util.tree_leaves(base_params)):
    if not e:
      continue
    g, d, b = (np.asarray(v) for v in (g, d, b))
    kg, kd = g != 0, d != 0
    rows.append({"layer": path, "size": int(g.size), "gsm": int(kg.sum()),
                 "gradual": int(kd.sum()), "both": int((kg & kd).sum()),
                 "base_l2_kept_gsm": float(np.linalg.norm(b[kg]) / np.linalg.norm(b)),
                 "base_l2_kept_gradual": float(np.linalg.norm(b[kd]) / np.linalg.norm(b))})
  print("| layer | weights | GSM keeps | gradual keeps | both keep | base L2 under GSM's mask |"
        " under gradual's |")
  print("|---|---|---|---|---|---|---|")
  for row in rows:
    print(f"| {row['layer']} | {row['size']:,} | {row['gsm']:,} | {row['gradual']:,} |"
          f" {row['both']:,} | {row['base_l2_kept_gsm']:.3f} | {row['base_l2_kept_gradual']:.3f} |")

  # The same mask question without the training: each method's mask on the base model.
  masks = {"gsm": jax.tree_util.tree_map(lambda w: w != 0, gsm_params),
           "gradual": jax.tree_util.tree_map(lambda w: w != 0, gradual_params)}
  models = {"GSM (final prune)": gsm_params, "gradual": gradual_params, "base (dense)": base_params}
  for name, mask in masks.items():
    models[f"base under {name}'s mask"] = jax.tree_util.tree_map(
        lambda w, m, e: jnp.where(m, w, 0) if e else w, base_params, mask, r.eligible(base_params))
  figures = {"layers": rows, "models": {}}
  print("\n| model | train loss | train accuracy | test accuracy |\n|---|---|---|---|")
  for name, params in models.items():
    f = {"train_loss": _loss(r.model, params, r.x_train, r.y_train),
         "train_accuracy": accuracy(r.model.apply, params, r.x_train, r.y_train),
         "test_accuracy": accuracy(r.model.apply, params, r.x_test, r.y_test),
         "nonzeros": gsm_optax.sparsity_report(params, eligible=r.eligible).eligible_nonzeros}
    figures["models"][name] = f
    print(f"| {name} | {f['train_loss']:.4f} | {100 * f['train_accuracy']:.2f} |"
          f" {100 * f['test_accuracy']:.2f} |")
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(figures, fh, indent=1)


if __name__ == "__main__":
  main()
