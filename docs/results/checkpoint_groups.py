"""The groups a structured LeNet-5 GSM run holds at its newest checkpoint, per layer.

Counts the groups whose norm is above 1e-3 (the others have decayed away), from the GSM phase's
newest orbax checkpoint of a run of docs/results/run_structured.sh, e.g. the MAC-budget run
ranked by score, which was stopped at epoch 44:

  python docs/results/checkpoint_groups.py runs/structured/lenet5_m11_score 11
  python docs/results/checkpoint_groups.py runs/structured/lenet5_m11_permac 11 --per-mac
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state

from gsm_optax import grouping
from gsm_optax.checkpointing import Checkpointer
from gsm_optax.experiments import models, runner
from gsm_optax.experiments.config import ExperimentConfig, PhaseConfig


def main(run_dir: str, compression: str, *flags: str) -> None:
  per_mac = "--per-mac" in flags
  config = ExperimentConfig(
      model="lenet5", compression=float(compression), structured=True, methods=("gsm",),
      budget="macs", per_mac=per_mac, importance_ema=0.999, passive_weight_decay=5e-3,
      anneal_epochs=32,
      gsm=PhaseConfig(1e-2, 90, (51, 64, 77), momentum=0.99, nesterov=True, warmup_epochs=2))
  net = models.LeNet5()
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
  groups, macs = models.structured_groups("lenet5", params, per_mac=per_mac)
  tx = runner.gsm_optimizer(config, 234, groups, macs)
  state = train_state.TrainState.create(apply_fn=net.apply, params=params, tx=tx)
  with Checkpointer(f"{run_dir}/gsm/checkpoints") as checkpoints:
    step = checkpoints.latest_step()
    state = checkpoints.restore(state)
  resolved = grouping.resolve_groups(groups, state.params)
  norms = grouping.group_norms(resolved, jax.tree_util.tree_leaves(state.params))
  kept = {g.name: int(np.sum(np.asarray(n) > 1e-3)) for g, n in zip(groups, norms)}
  print(f"epoch {step // 234}: groups with norm > 1e-3: {kept};"
        f" MACs {float(macs.macs(kept)) / macs.total:.3f} of dense")


if __name__ == "__main__":
  main(*sys.argv[1:])
