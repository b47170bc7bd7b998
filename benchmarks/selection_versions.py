"""gsm() with another version of the selection against this one, in one process.

The other version is a ``selection.py`` file (say, an earlier commit's), loaded
as a module and swapped into ``gsm_optax.transform`` while its step is traced.
The plain momentum step, gsm with the other selection and gsm with this one
are compiled once each, then timed in turn for a few rounds on the same data
(warm, params and state donated, median of repeats), so that a machine whose
load drifts affects all three alike. Prints each round's times as multiples of
the plain step, and XLA's temporaries as a multiple of the weights' bytes.

  git show c3e37e5:gsm_optax/selection.py > /tmp/selection_c3e37e5.py
  python -m benchmarks.selection_versions /tmp/selection_c3e37e5.py --sizes 25.6M --ratios 0.1

A package (``gsm_optax/selection/``, after c3e37e5) is exported with its
imports of each other made relative:

  mkdir /tmp/selection_b7202cf
  for f in __init__ counting radix sharded; do
    git show b7202cf:gsm_optax/selection/$f.py > /tmp/selection_b7202cf/$f.py; done
  sed -i 's/^from gsm_optax.selection import /from . import /' /tmp/selection_b7202cf/*.py
  python -m benchmarks.selection_versions /tmp/selection_b7202cf --sizes 25.6M --ratios 0.1
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys

import jax
import jax.numpy as jnp

import gsm_optax
from benchmarks.shapes import count, weights_and_gradients
from benchmarks.step_time import (
    DECAY,
    LR,
    MOMENTUM,
    SHAPES,
    add_importance_flag,
    make_step,
    plain_tx,
    print_header,
    time_steps,
)
from gsm_optax import transform


def load_selection(path: str):
  """A ``selection.py`` file, or a ``selection/`` package folder whose modules
  import each other relatively (``from . import radix``)."""
  if os.path.isdir(path):
    spec = importlib.util.spec_from_file_location(
        "selection_other", os.path.join(path, "__init__.py"), submodule_search_locations=[path])
  else:
    spec = importlib.util.spec_from_file_location("selection_other", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules["selection_other"] = module  # for the package's relative imports
  spec.loader.exec_module(module)
  return module


@contextlib.contextmanager
def selection_from(module):
  """gsm() traced inside uses ``module.global_topk_selection``."""
  original = transform.global_topk_selection
  transform.global_topk_selection = module.global_topk_selection
  try:
    yield
  finally:
    transform.global_topk_selection = original


def compiled_step(tx, params, grads):
  """The jitted step compiled now (so that a swapped selection is traced now),
  its temporaries, and a state to run it from."""
  step = make_step(tx)
  state = tx.init(params)
  compiled = step.lower(params, state, grads).compile()
  return compiled, compiled.memory_analysis().temp_size_in_bytes, state


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("other", help="path of another version's selection.py or selection/")
  parser.add_argument("--sizes", nargs="+", default=["25.6M"], choices=list(SHAPES))
  parser.add_argument("--ratios", nargs="+", type=float, default=[0.1])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=5)
  add_importance_flag(parser)
  args = parser.parse_args()
  other = load_selection(args.other)

  print_header(f"{'params':>7} {'keep':>5} {'round':>5} {'plain ms':>9} {'other/plain':>11}"
               f" {'this/plain':>10} {'this/other':>10} {'temp other':>10} {'temp this':>9}",
               f"; other: {args.other}, ranking by {args.importance}")
  for size in args.sizes:
    params, grads = weights_and_gradients(SHAPES[size])
    weight_bytes = 4 * count(SHAPES[size])
    for ratio in args.ratios:
      def gsm(ratio=ratio):
        return gsm_optax.gsm(LR, ratio, momentum=MOMENTUM, weight_decay=DECAY,
                             importance=args.importance)

      steps = {"plain": compiled_step(plain_tx(), params, grads)}
      with selection_from(other):
        steps["other"] = compiled_step(gsm(), params, grads)
      steps["this"] = compiled_step(gsm(), params, grads)
      runs = {}
      for name, (step, _, state) in steps.items():  # one call each to warm up
        runs[name] = step(jax.tree.map(jnp.copy, params), state, grads)
      for r in range(args.rounds):
        ms = {}
        for name, (step, _, _) in steps.items():
          seconds, *runs[name] = time_steps(step, *runs[name], grads, args.repeats)
          ms[name] = seconds * 1e3
        print(f"{size:>7} {ratio:>5g} {r + 1:>5} {ms['plain']:>9.1f}"
              f" {ms['other'] / ms['plain']:>10.2f}x {ms['this'] / ms['plain']:>9.2f}x"
              f" {ms['this'] / ms['other']:>9.2f}x {steps['other'][1] / weight_bytes:>9.2f}x"
              f" {steps['this'][1] / weight_bytes:>8.2f}x", flush=True)


if __name__ == "__main__":
  main()
