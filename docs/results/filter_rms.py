"""The RMS of a trained model's convolution filters, layer by layer, beside their initial scale.

A filter's RMS is the L2 norm per weight of one output channel of a kernel: what a global
magnitude ranking of filters (``gsm_optax.prune``'s ``group_rms``) compares across layers. Each
row gives the median over the layer's filters and the standard deviation the layer was
initialised with (He et al.'s ``sqrt(2 / fan_in)``, the ResNet-20 of
``gsm_optax.experiments.models``):

  python docs/results/filter_rms.py runs/sweep/bases/fashion_mnist_resnet20_seed0 resnet20
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from gsm_optax.experiments.config import ExperimentConfig
from gsm_optax.experiments.runner import load_phase_params


def main(run_dir: str, model: str) -> None:
  params = load_phase_params(run_dir, "base", ExperimentConfig(model=model))
  print("| kernel | shape | median filter RMS | init std sqrt(2 / fan_in) |\n|---|---|---|---|")
  for path, kernel in jax.tree_util.tree_leaves_with_path(params):
    kernel = np.asarray(kernel)
    if kernel.ndim != 4:
      continue
    filters = kernel.reshape(-1, kernel.shape[-1])
    rms = np.sqrt(np.mean(filters**2, axis=0))
    print(f"| {jax.tree_util.keystr(path)} | {'x'.join(map(str, kernel.shape))} |"
          f" {np.median(rms):.4f} | {np.sqrt(2 / filters.shape[0]):.4f} |")


if __name__ == "__main__":
  main(*sys.argv[1:])
