"""How many weights a finished GSM run left near the size of the Q it keeps.

    python docs/results/churn.py results/runs/lenet300_60x_seed0 --model lenet300 --compression 60

A weight GSM never lets into the top-Q shrinks by ~exp(-sum lr * decay / (1 - momentum)); one
that still has a magnitude comparable to the kept ones has been entering and leaving the top-Q.
Their number beyond Q is what the final magnitude prune has to cut.
"""

import argparse

import numpy as np

from gsm_optax import experiments, sparsity_report


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("run_dir")
  parser.add_argument("--model", default="lenet300")
  parser.add_argument("--compression", type=float, default=60.0)
  args = parser.parse_args()
  config = experiments.paper_config(args.model, args.compression)
  params = experiments.load_phase_params(args.run_dir, "gsm", config)
  report = sparsity_report(params)
  q = int(config.keep_ratio * report.eligible_size)
  layers = {path: np.abs(np.asarray(leaf)).ravel()
            for path, leaf in _eligible_leaves(params)}
  every = np.sort(np.concatenate(list(layers.values())))[::-1]
  t = every[q - 1]
  print(f"Q = {q:,}; the Q-th largest |w| is {t:.4g}")
  for f in (0.5, 0.1, 0.01, 1e-3):
    print(f"weights with |w| >= {f:g} x that: {(every >= f * t).sum():,}")
  for path, w in layers.items():
    near = ((w < t) & (w > 0.1 * t)).sum()
    print(f"{path}: kept {(w >= t).sum():,}, outside but > 0.1x: {near:,}")


def _eligible_leaves(params):
  import jax

  from gsm_optax import default_eligible

  flags = jax.tree_util.tree_leaves(default_eligible(params))
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return [(jax.tree_util.keystr(p), leaf) for (p, leaf), f in zip(leaves, flags) if f]


if __name__ == "__main__":
  main()
