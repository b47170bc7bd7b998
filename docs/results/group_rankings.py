"""How a global ranking splits the groups of a base model among its layers, by rule.

For a trained base model of a structured run, prints the groups each layer keeps when all
groups are ranked together, at a few keep ratios, for:

  |sum g*w|   the group Taylor score (gsm_optax's default): one minibatch of 256 images
  sum |g*w|   the issue's summed element scores (importance=gsm_optax.taylor)
  L2          the plain L2 norm of the group
  RMS         the L2 norm per weight (gsm_optax.prune's group magnitude)

  python docs/results/group_rankings.py runs/structured/lenet300_g10 lenet300
  python docs/results/group_rankings.py runs/structured/lenet5_m11_permac lenet5
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import gsm_optax
from gsm_optax import group_selection, grouping
from gsm_optax.experiments import datasets, models, training
from gsm_optax.experiments.config import ExperimentConfig
from gsm_optax.experiments.runner import load_phase_params


def main(run_dir: str, model: str) -> None:
  params = load_phase_params(run_dir, "base", ExperimentConfig(model=model))
  data = datasets.load_mnist()
  x = jnp.asarray(datasets.normalize(data.train_images[:256]))
  y = jnp.asarray(data.train_labels[:256].astype(np.int32))
  net = models.MODELS[model]()
  grads = jax.grad(lambda p: training.cross_entropy_loss(net.apply, p, x, y))(params)
  groups, _ = models.structured_groups(model, params)
  resolved = grouping.resolve_groups(groups, params)
  treedef = jax.tree_util.tree_structure(params)
  leaves = jax.tree_util.tree_leaves(params)
  sizes = resolved.weights_per_group(leaves)
  rules = {
      "|sum g*w|": grouping.finish_group_scores(
          "group_taylor", grouping.group_values("group_taylor", resolved, params, grads, treedef)),
      "sum |g*w|": grouping.group_values(gsm_optax.taylor, resolved, params, grads, treedef),
      "L2": [n * np.sqrt(s) for n, s in zip(grouping.group_norms(resolved, leaves), sizes)],
      "RMS": grouping.group_norms(resolved, leaves),
  }
  print(f"{model} base model, groups kept per layer "
        f"({', '.join(f'{g.name} of {g.size}' for g in groups)}):")
  for ratio in (0.1, 0.2, 1 / 3):
    for name, scores in rules.items():
      kept = group_selection.select_groups(resolved, scores, ratio, "groups", None).mask
      print(f"  keep {ratio:.2f} by {name:>10}: {[int(np.sum(m)) for m in kept]}")


if __name__ == "__main__":
  main(*sys.argv[1:3])
