"""Does a narrow model's speed follow its MACs? ResNet-20 at widths that are and are not
multiples of 8.

Random-initialised ResNet-20s (``gsm_optax.experiments``' model, inference with running
averages) at batch 256, jitted and timed side by side in this process: each repeat times
every model in turn, and the medians are compared with the dense model's. Two tables:

1. The first stage's width from 8 to 32 (the other stages dense): XLA:CPU's convolutions
   run at a fraction of their speed where a width is not a multiple of 8.
2. Structured GSM's export of the ResNet-20 at half the MACs with any widths (Fashion-MNIST,
   seed 0: ``docs/results/structured_odd_widths/``), against the same widths rounded up to
   multiples of 8, and the uniform narrowing by 1/sqrt(2) with its rounding.

  python -m benchmarks.width_speed
  python -m benchmarks.width_speed --batch 64 --repeats 9
"""

from __future__ import annotations

import argparse
import os

import jax

from gsm_optax.experiments import models
from gsm_optax.experiments.structured import time_side_by_side

EXPORTED = ((16, 25, 18), (15, 14, 11, 32, 19, 13, 46, 14, 1))
UNIFORM = ((11, 23, 45), (11,) * 3 + (23,) * 3 + (45,) * 3)


def up8(widths):
  return tuple(max(8, -(-w // 8) * 8) for w in widths)


def _models(table):
  if table == 1:
    return {f"stage 1 at {w}": ((w, 32, 64), (w,) * 3 + (32,) * 3 + (64,) * 3)
            for w in (16, 8, 11, 12, 15, 17, 20, 23, 24, 31, 32)}
  return {"dense": ((16, 32, 64), None),
          "GSM's export": EXPORTED, "  rounded up to 8": tuple(map(up8, EXPORTED)),
          "uniform 1/sqrt(2)": UNIFORM, "  rounded up to 8 ": tuple(map(up8, UNIFORM))}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=15)
  args = parser.parse_args(argv)
  x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, 28, 28, 1))
  print(f"{jax.devices()[0].platform}, {os.cpu_count()} cores, load average"
        f" {os.getloadavg()[0]:.1f}; ResNet-20 inference at batch {args.batch},"
        f" median of {args.repeats}")
  for table in (1, 2):
    fns, inputs, macs = {}, {}, {}
    for name, (widths, inner) in _models(table).items():
      options = {"widths": widths, "inner_widths": inner}
      module = models.MODELS["resnet20"](**options)
      variables = module.init(jax.random.PRNGKey(1), x[:1])
      fns[name] = jax.jit(module.apply)
      inputs[name] = (variables, x)
      macs[name] = models.couple_model("resnet20", variables["params"],
                                       model_state={"batch_stats": variables["batch_stats"]},
                                       options=options).macs
    seconds = time_side_by_side(fns, inputs, repeats=args.repeats)
    first = next(iter(fns))
    print(f"\n{'model':>20}  {'widths':<44}  {'MACs':>5}  {'ms':>7}  {'time':>5}")
    for name, (widths, inner) in _models(table).items():
      shown = f"{widths} {inner or ''}" if table == 2 else str(widths)
      print(f"{name:>20}  {shown:<44}  {macs[name] / macs[first]:>5.2f}"
            f"  {1e3 * seconds[name]:>7.1f}  {seconds[name] / seconds[first]:>5.2f}")


if __name__ == "__main__":
  main()
