"""Inference speed of a structurally pruned model exported narrow, against the dense one.

Loads the pruned parameters a structured run left on disk (``gsm-optax mnist --structured``),
exports them with ``gsm_optax.narrow``, and times the dense model (with its pruned
units held at zero) and the exported narrow model side by side in this process, jitted, on
MNIST test images: each repeat times both in turn, and the medians are compared. Prints the
widths, MACs and a table of seconds per batch and speed-ups.

  python -m benchmarks.structured_speed runs/mnist_lenet5_11x_seed0_structured
  python -m benchmarks.structured_speed RUN_DIR --phase gradual --batch-sizes 1 64 256 1024
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np

import gsm_optax
from gsm_optax.experiments import datasets, models
from gsm_optax.experiments.config import ExperimentConfig
from gsm_optax.experiments.runner import load_phase_params
from gsm_optax.experiments.structured import kept_widths, time_side_by_side


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("run_dir")
  parser.add_argument("--phase", default="gsm", choices=["gsm", "gradual"])
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 256, 1024])
  parser.add_argument("--repeats", type=int, default=21)
  args = parser.parse_args(argv)
  with open(os.path.join(args.run_dir, "results.json")) as f:
    results = json.load(f)
  config = results["config"]
  model_name = config["model"]
  params = load_phase_params(args.run_dir, args.phase,
                             ExperimentConfig(model=model_name, compression=config["compression"]))
  if args.phase == "gsm":  # the phase ends before the final prune: prune as the run did
    groups, macs = models.structured_groups(model_name, params)
    budget = macs if config["budget"] == "macs" else config["budget"]
    params = gsm_optax.prune(params, 1 / config["compression"], groups=groups, budget=budget,
                             allocation=config.get("allocation", "global"))
  x = np.asarray(datasets.normalize(datasets.load_mnist().test_images))
  dense = models.MODELS[model_name]()
  coupling = models.couple_model(model_name, params)
  small = gsm_optax.narrow(coupling, {"params": params})
  apply_dense = jax.jit(lambda p, x: dense.apply({"params": p}, x))
  apply_narrow = jax.jit(lambda p, x: small.apply({"params": p}, x))
  macs_dense, macs_narrow = coupling.macs, small.macs
  print(f"{model_name} {args.phase}: widths {kept_widths(model_name, small)},"
        f" MACs {macs_dense:,.0f} -> {macs_narrow:,.0f} ({macs_dense / macs_narrow:.1f}x fewer);"
        f" {jax.devices()[0].platform}, jitted, median of {args.repeats}")
  print(f"{'batch':>6}  {'dense ms':>9}  {'exported ms':>11}  {'speed-up':>8}")
  for batch in args.batch_sizes:
    xb = x[:batch]
    t = time_side_by_side({"dense": apply_dense, "narrow": apply_narrow},
                          {"dense": (params, xb), "narrow": (small.variables["params"], xb)},
                          repeats=args.repeats)
    print(f"{batch:>6}  {1e3 * t['dense']:>9.3f}  {1e3 * t['narrow']:>11.3f}"
          f"  {t['dense'] / t['narrow']:>7.2f}x")


if __name__ == "__main__":
  main()
