"""Gradual magnitude pruning with its mask recomputed every step, as GSM's top-Q is.

    gsm-optax sweep --out runs/mid --cores 0 --cells 4 --seeds 1 --methods recommended gradual
    python docs/results/mid_compression/gradual_every_step.py runs/mid --seed 1

Runs one more method in a finished sweep cell (LeNet-300-100 30x Fashion-MNIST by default),
from the cell's own base model: the sweep's gradual pruning, its mask updated every step instead
of every epoch. Whether the decisions' frequency is what sets GSM's training loss apart.
"""

import argparse
import dataclasses
import os

from gsm_optax.experiments import runner, sweep


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out", help="the sweep's --out")
  parser.add_argument("--cell", type=int, default=4, help="index into the sweep's GRID")
  parser.add_argument("--seed", type=int, default=1)
  args = parser.parse_args()
  dataset, model, compression = sweep.GRID[args.cell]
  directory = sweep.job_dir(args.out, dataset, model, compression, args.seed,
                            "gradual_every_step")
  os.makedirs(directory, exist_ok=True)
  link = os.path.join(directory, "base")
  if not os.path.exists(link):
    base = sweep.Job(dataset, model, 1.0, args.seed, "base").directory(args.out)
    os.symlink(os.path.relpath(os.path.join(base, "base"), directory), link)
  config = dataclasses.replace(
      sweep.sweep_config(dataset, model, compression, args.seed, "gradual"),
      gradual_update_every=1)
  result = runner.run(config, directory, quiet=True)
  print(f"gradual, mask every step: {result['gradual']['final_test_accuracy']:.4f}")


if __name__ == "__main__":
  main()
