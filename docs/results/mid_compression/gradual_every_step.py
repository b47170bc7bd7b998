"""Gradual magnitude pruning with its mask recomputed every step, as GSM's top-Q is.

    gsm-optax sweep --out runs/mid --cores 0 --cells 4 --seeds 1 --methods recommended gradual
    python docs/results/mid_compression/gradual_every_step.py runs/mid --seed 1

Runs one more method in a finished sweep cell (LeNet-300-100 30x Fashion-MNIST by default),
from the cell's own base model: the sweep's gradual pruning, its mask updated every step instead
of every epoch. Whether the decisions' frequency is what sets GSM's training loss apart.
"""

import dataclasses
import os
import sys

from gsm_optax.experiments import runner, sweep

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mid_compression import extra_method_job  # noqa: E402  (the sibling analysis)


def main() -> None:
  directory, cell, seed = extra_method_job(__doc__.splitlines()[0], "gradual_every_step")
  config = dataclasses.replace(
      sweep.sweep_config(*cell, seed, "gradual"),
      gradual_update_every=1)
  result = runner.run(config, directory, quiet=True)
  print(f"gradual, mask every step: {result['gradual']['final_test_accuracy']:.4f}")


if __name__ == "__main__":
  main()
