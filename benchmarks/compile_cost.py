"""What gsm() costs before the first step: compile time, module size and memory.

Per model's parameter shapes, the optimizer update of plain momentum SGD
(``optax.chain(add_decayed_weights, trace, scale_by_learning_rate)``) and of
``gsm_optax.gsm`` side by side, in one process:

  compile s   wall time of ``jax.jit(update).lower(...).compile()`` on this
              machine's backend (a fresh function each time: no cache)
  cpu s       the process's CPU time for the same (every thread): what a
              busy machine inflates less
  cuda ops    ``stablehlo.`` operations in the update's module exported for
              ``cuda`` with ``jax.export`` (no GPU needed)
  temp MiB    XLA's ``memory_analysis().temp_size_in_bytes`` of a whole jitted
              step (update and apply_updates, params and state donated)

``extra/elig`` is gsm's temporaries beyond plain's, as a multiple of the
eligible weights' bytes in float32 (the arrays of rank >= 2).

  python -m benchmarks.compile_cost                         # every model
  python -m benchmarks.compile_cost --models transformer6 resnet50
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gsm_optax
from benchmarks.shapes import resnet50_shapes, transformer_shapes
from benchmarks.step_time import DECAY, LR, MOMENTUM, plain_tx, print_header

MODELS = {
    "transformer6": lambda: transformer_shapes(6),
    "transformer24": lambda: transformer_shapes(24),
    "transformer48": lambda: transformer_shapes(48),
    "resnet50": resnet50_shapes,
}
KEEP = 0.1


def count_ops(mlir: str) -> int:
  """Number of ``stablehlo.`` operations named in a module's text."""
  return len(re.findall(r"\bstablehlo\.[a-z_]+", mlir))


def measure(make_tx, structs) -> dict:
  """Compile seconds, cuda op count and step temporaries of one optimizer's update."""
  tx = make_tx()
  state = jax.eval_shape(tx.init, structs)

  def update(grads, state, params):
    return tx.update(grads, state, params)

  start, cpu = time.perf_counter(), time.process_time()
  jax.jit(update).lower(structs, state, structs).compile()
  seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
  mlir = jax.export.export(jax.jit(update), platforms=["cuda"])(
      structs, state, structs).mlir_module()

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(structs, state, structs).compile()
  return dict(compile_s=seconds, compile_cpu_s=cpu_seconds, cuda_ops=count_ops(mlir),
              temp_bytes=compiled.memory_analysis().temp_size_in_bytes)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
  parser.add_argument("--json", help="also write the rows to this JSON file")
  args = parser.parse_args()

  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  print_header(f"{'model':>13} {'leaves':>6} {'compile s':>9} {'gsm s':>7} {'gsm-plain':>9}"
               f" {'cpu s':>6} {'gsm cpu s':>9} {'gsm-plain':>9}"
               f" {'cuda ops':>8} {'gsm ops':>8} {'ops ratio':>9}"
               f" {'temp MiB':>8} {'gsm MiB':>8} {'extra/elig':>10}",
               f", keep {KEEP}, load average {load}")
  rows = []
  for name in args.models:
    shapes = MODELS[name]()
    structs = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
    eligible_bytes = 4 * sum(int(np.prod(s)) for s in shapes.values() if len(s) >= 2)
    plain = measure(plain_tx, structs)
    gsm = measure(lambda: gsm_optax.gsm(LR, KEEP, momentum=MOMENTUM, weight_decay=DECAY),
                  structs)
    extra = (gsm["temp_bytes"] - plain["temp_bytes"]) / eligible_bytes
    rows.append(dict(model=name, leaves=len(shapes), eligible_bytes=eligible_bytes,
                     plain=plain, gsm=gsm))
    print(f"{name:>13} {len(shapes):>6} {plain['compile_s']:>9.2f} {gsm['compile_s']:>7.2f}"
          f" {gsm['compile_s'] - plain['compile_s']:>+9.2f}"
          f" {plain['compile_cpu_s']:>6.2f} {gsm['compile_cpu_s']:>9.2f}"
          f" {gsm['compile_cpu_s'] - plain['compile_cpu_s']:>+9.2f}"
          f" {plain['cuda_ops']:>8,} {gsm['cuda_ops']:>8,}"
          f" {gsm['cuda_ops'] / plain['cuda_ops']:>8.1f}x"
          f" {plain['temp_bytes'] / 2**20:>8.1f} {gsm['temp_bytes'] / 2**20:>8.1f}"
          f" {extra:>9.2f}x", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": str(jax.devices()[0]), "keep": KEEP, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
