"""What a training step of a deep model at half the MACs costs, against the dense model's.

The ``scratch`` baseline of the structured runs trains the narrow architecture of structured
GSM's export for the base and GSM phases' epochs together; whether that fits the 75 minutes of
a sweep job depends on how much cheaper its step is. Per model (``gsm_optax.experiments``'
ResNet-20 and ViT at their defaults), the dense model and a narrow one of about half its MACs
(ResNet-20: every stream and block width times 1/sqrt(2); the ViT: 2 of 4 heads and 128 of 256
MLP units in every block) are trained side by side in this process at batch 128 with the
runner's epoch function and momentum SGD, a few steps a call, and the medians compared; the
scratch job's minutes are projected from the narrow step at 468 steps an epoch.

  python -m benchmarks.narrow_step
  python -m benchmarks.narrow_step --models resnet20 --steps 3 --repeats 3
"""

from __future__ import annotations

import argparse
import os

import jax

from gsm_optax.experiments import models, runner
from gsm_optax.experiments.config import DEEP_PHASES, scratch_phase
from gsm_optax.experiments.structured import time_side_by_side
from gsm_optax.experiments.training import TrainState, make_train_epoch

NARROW = {
    "resnet20": {"widths": (11, 23, 45), "inner_widths": (11,) * 3 + (23,) * 3 + (45,) * 3},
    "vit": {"heads": (2,) * 4, "mlp_width": (128,) * 4, "head_dim": 32},
}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=["resnet20", "vit"], choices=list(NARROW))
  parser.add_argument("--steps", type=int, default=4, help="training steps a timed call")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  batch = 128
  x = jax.random.normal(jax.random.PRNGKey(0), (batch * args.steps, 28, 28, 1))
  y = jax.random.randint(jax.random.PRNGKey(1), (batch * args.steps,), 0, 10)
  epoch = make_train_epoch(batch)
  print(f"{jax.devices()[0].platform}, {os.cpu_count()} cores, load average"
        f" {os.getloadavg()[0]:.1f}; batch {batch}, median of {args.repeats}")
  print(f"{'model':>8}  {'MACs ratio':>10}  {'dense s/step':>12}  {'narrow s/step':>13}"
        f"  {'ratio':>6}  {'scratch job min':>15}")
  for name in args.models:
    states, macs = {}, {}
    for kind, options in (("dense", {}), ("narrow", NARROW[name])):
      module = models.MODELS[name](**options)
      variables = dict(module.init(jax.random.PRNGKey(2), x[:1]))
      params = variables.pop("params")
      phase = DEEP_PHASES[name]["base"]
      states[kind] = TrainState.create(
          apply_fn=module.apply, params=params, model_state=variables,
          tx=runner.momentum_sgd(phase, 468, models.eligible(name)))
      macs[kind] = models.couple_model(name, params, model_state=variables, options=options).macs
    seconds = time_side_by_side(
        {kind: epoch for kind in states},
        {kind: (state, x, y, jax.random.PRNGKey(3)) for kind, state in states.items()},
        repeats=args.repeats)
    dense, narrow = seconds["dense"] / args.steps, seconds["narrow"] / args.steps
    phases = DEEP_PHASES[name]
    epochs = scratch_phase(phases["base"], phases["gsm"]).epochs
    print(f"{name:>8}  {macs['narrow'] / macs['dense']:>10.3f}  {dense:>12.3f}  {narrow:>13.3f}"
          f"  {narrow / dense:>6.2f}  {epochs * 468 * narrow / 60:>15.0f}")


if __name__ == "__main__":
  main()
