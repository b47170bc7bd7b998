"""What a structured magnitude prune of a base model keeps, under each allocation.

The structured cells (``gsm-optax sweep --structured``) rank groups all together
(``allocation="global"``, the recipe), the same fraction of every set (``"uniform"``, as
structured gradual pruning) or all together on each set's own scale (``"normalized"``). This
script prunes a sweep's base model once at its structured cell's budget (MACs, multiples of 8)
with ``gsm_optax.prune`` and each allocation, and prints the groups every set keeps and the
pruned model's test accuracy, before any training: which widths the base model's magnitudes ask
for. (With BatchNorm the accuracy is of little use: the running statistics are the dense
model's.)

  python docs/results/structured_base_prune.py runs/sweep/bases/fashion_mnist_vit_seed0 vit
  python docs/results/structured_base_prune.py runs/sweep/bases/mnist_lenet300_seed0 lenet300
  python docs/results/structured_base_prune.py runs/sweep/bases/mnist_lenet5_seed1 lenet5
"""

from __future__ import annotations

import sys
import tempfile

import jax

import gsm_optax
from gsm_optax.experiments import runner, sweep


def main(base_dir: str, model: str) -> None:
  cells = [c for c in sweep.STRUCTURED_GRID if c[1] == model]
  if not cells:
    raise SystemExit(f"no structured cell has model={model!r}: {sweep.STRUCTURED_GRID}")
  dataset, _, compression = cells[0]
  config = sweep.sweep_config(dataset, model, compression, 0, "recommended", structured=True)
  with tempfile.TemporaryDirectory() as out:
    run = runner.Runner(config, out, quiet=True)
    variables = runner.load_phase_variables(base_dir, "base", config)
    print(f"{model}, {sweep.cell_name(cells[0])} structured: dense {run.evaluate(variables):.4f}")
    for allocation in gsm_optax.grouping.ALLOCATIONS:
      args = dict(run.selection_args, allocation=allocation)
      params = jax.jit(lambda p, args=args: gsm_optax.prune(p, config.keep_ratio, **args))(
          variables["params"])
      accuracy = run.evaluate(dict(variables, params=params))
      print(f"{allocation}: test accuracy {accuracy:.4f}, kept {run.kept_groups(params)}")


if __name__ == "__main__":
  main(*sys.argv[1:])
