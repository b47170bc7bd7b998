"""Runs the README's first example as written, once per seed (and learning rate): its prune cost.

    .venv/bin/python docs/results/readme_example.py --seeds 0 1 2 3 4 --lrs 0.1 0.5

Each run executes the README's first python block with its line ``SEED, LR = 0, 0.01`` set to the
run's values, and reads the accuracies it prints.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from docs.codeblocks import python_blocks  # noqa: E402

LINE = "SEED, LR = 0, 0.1"


def run(code: str, seed: int, lr: float) -> tuple[float, float]:
  assert LINE in code, f"the README's first example no longer has the line {LINE!r}"
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code.replace(LINE, f"SEED, LR = {seed}, {lr}"), "README.md", "exec"),
         {"__name__": "__main__"})
  words = out.getvalue().split()
  return float(words[words.index("before") - 1]), float(words[words.index("after") - 1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--lrs", type=float, nargs="+", default=[0.1])
  args = parser.parse_args()
  code = python_blocks(ROOT / "README.md")[0].code
  print("| lr | seed | before the prune | after | prune cost (points) | seconds |")
  print("|---|---|---|---|---|---|")
  for lr in args.lrs:
    costs = []
    for seed in args.seeds:
      t0 = time.time()
      before, after = run(code, seed, lr)
      costs.append(100 * (before - after))
      print(f"| {lr:g} | {seed} | {before:.4f} | {after:.4f} | {costs[-1]:+.2f} |"
            f" {time.time() - t0:.0f} |", flush=True)
    print(f"| {lr:g} | all | | | mean {np.mean(costs):+.2f}, max {np.max(costs):+.2f} | |")


if __name__ == "__main__":
  main()
