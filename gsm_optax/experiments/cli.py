"""The ``gsm-optax`` command line: runnable experiments."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import textwrap
import time
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from gsm_optax import gsm, prune, selection_stats, sparsity_report
from gsm_optax.experiments.results import write_json
from gsm_optax.experiments.training import accuracy, make_train_epoch
from gsm_optax.grouping import ALLOCATIONS
from gsm_optax.recipes import STRUCTURED_ALLOCATION


class MLP(nn.Module):
  """A ReLU multi-layer perceptron with Xavier-uniform kernels and zero biases."""

  features: Sequence[int]

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.features):
      x = nn.Dense(width, kernel_init=nn.initializers.xavier_uniform())(x)
      if i < len(self.features) - 1:
        x = nn.relu(x)
    return x


def load_digits_split(seed: int = 0, test_fraction: float = 0.2):
  """scikit-learn's 8x8 digits, scaled to [0, 1], split into train and test."""
  try:
    from sklearn.datasets import load_digits
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise SystemExit(
        "the digits example needs scikit-learn: pip install 'gsm-optax[examples]'"
    ) from e
  data = load_digits()
  images = (data.images / 16.0).astype(np.float32)
  labels = data.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(labels))
  n_test = int(len(labels) * test_fraction)
  test, train = order[:n_test], order[n_test:]
  return (jnp.asarray(images[train]), jnp.asarray(labels[train]),
          jnp.asarray(images[test]), jnp.asarray(labels[test]))


def run_digits(args: argparse.Namespace) -> dict:
  """Dense training, GSM training to 1/compression, the final prune, evaluation."""
  t0 = time.time()
  x_train, y_train, x_test, y_test = load_digits_split(args.seed)
  model = MLP(tuple(args.hidden) + (10,))
  rng = jax.random.PRNGKey(args.seed)
  params = model.init(rng, x_train[:1])["params"]
  keep_ratio = 1.0 / args.compression
  epoch = make_train_epoch(args.batch_size)
  log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))

  state = train_state.TrainState.create(
      apply_fn=model.apply, params=params, tx=optax.sgd(args.base_lr, momentum=0.9))
  for i in range(args.base_epochs):
    state, loss = epoch(state, x_train, y_train, jax.random.fold_in(rng, i))
  dense_params = state.params
  base_acc = accuracy(model.apply, dense_params, x_test, y_test)
  magnitude_acc = accuracy(model.apply, prune(dense_params, keep_ratio), x_test, y_test)
  log(f"dense: loss {float(loss):.4f}  test accuracy {base_acc:.4f}"
      f"  (magnitude prune of it to {args.compression:g}x: {magnitude_acc:.4f})")

  steps_per_epoch = x_train.shape[0] // args.batch_size
  lr = optax.piecewise_constant_schedule(
      args.gsm_lr, {int(args.gsm_epochs * 0.75) * steps_per_epoch: 0.1})
  tx = gsm(lr, keep_ratio, momentum=args.momentum, weight_decay=args.weight_decay,
           nesterov=True)
  state = train_state.TrainState.create(apply_fn=model.apply, params=dense_params, tx=tx)
  for i in range(args.gsm_epochs):
    state, loss = epoch(state, x_train, y_train, jax.random.fold_in(rng, 1000 + i))
    if (i + 1) % max(args.gsm_epochs // 5, 1) == 0:
      stats = selection_stats(state.opt_state)
      log(f"gsm epoch {i + 1:3d}: loss {float(loss):.4f}  kept {int(stats.keep_count)}"
          f"  threshold {float(stats.threshold):.3g}")
  gsm_acc = accuracy(model.apply, state.params, x_test, y_test)
  pruned = prune(state.params, keep_ratio)
  pruned_acc = accuracy(model.apply, pruned, x_test, y_test)
  report = sparsity_report(pruned)
  log("\n" + str(report) + "\n")
  log(f"test accuracy: dense {base_acc:.4f} -> GSM before prune {gsm_acc:.4f}"
      f" -> after the final prune {pruned_acc:.4f}"
      f"  (dense + magnitude prune, no GSM: {magnitude_acc:.4f})")
  result = {
      "dense_accuracy": base_acc,
      "magnitude_prune_accuracy": magnitude_acc,
      "gsm_accuracy_before_prune": gsm_acc,
      "gsm_accuracy_after_prune": pruned_acc,
      "keep_ratio": keep_ratio,
      "compression": report.compression,
      "eligible_nonzeros": report.eligible_nonzeros,
      "seconds": time.time() - t0,
      "args": vars(args) | {"func": None},
      "sparsity": report.to_dict(),
  }
  if args.json:
    write_json(args.json, result)
  return result


def _mnist_config(args: argparse.Namespace):
  """The experiment configuration: the paper's (or the fast preset), then the overrides."""
  from gsm_optax.experiments.config import (
    DEEP_PHASES,
    deep_config,
    fast_config,
    group_importance_for,
    paper_config,
    with_recipe,
  )

  if args.fast:
    preset = fast_config
  elif args.model in DEEP_PHASES:
    preset = deep_config
  else:
    preset = paper_config
  config = preset(args.model, args.compression)
  phases = {}
  for name in ("base", "gsm"):
    phase = getattr(config, name)
    changes = {}
    for field, arg in (("epochs", "epochs"), ("learning_rate", "lr"), ("momentum", "momentum"),
                       ("weight_decay", "weight_decay"), ("warmup_epochs", "warmup_epochs")):
      value = getattr(args, f"{name}_{arg}")
      if value is not None:
        changes[field] = value
    boundaries = getattr(args, f"{name}_boundaries")
    if boundaries is not None:
      changes["boundaries"] = tuple(boundaries)
    phases[name] = dataclasses.replace(phase, **changes)
  # The recipe sweep chose the default for unstructured and structured runs alike (the latter's
  # split of the budget between layers: its structured cells), docs/RESULTS.md.
  recipe = args.recipe or "recommended"
  kind: dict = dict(phases)  # what the recipe reads: a structured run takes its allocation too
  if args.methods or args.structured:
    kind["methods"] = tuple(args.methods or ("gsm", "gradual"))
  if args.structured:
    kind["structured"] = True
  config = with_recipe(dataclasses.replace(config, **kind), recipe)
  changes = {k: v for k, v in (("seed", args.seed), ("batch_size", args.batch_size),
                               ("train_subset", args.train_subset),
                               ("checkpoint_every", args.checkpoint_every),
                               ("dataset", args.dataset)) if v is not None}
  for name in ("passive_weight_decay", "passive_weight_decay_begin_epoch", "importance_ema",
               "anneal_epochs", "importance"):
    if getattr(args, name) is not None:
      changes[name] = getattr(args, name)
  if args.structured:
    changes["budget"] = args.budget
    changes["group_importance"] = (
        args.group_importance.replace("-", "_") if args.group_importance is not None
        else group_importance_for(changes.get("importance", config.importance),
                                  config.group_importance))
    changes["per_mac"] = args.per_mac
    if args.allocation is not None:
      changes["allocation"] = args.allocation
    changes["multiple_of"] = args.multiple_of
  elif (args.budget != "groups" or args.group_importance is not None or args.per_mac
        or args.allocation is not None or args.multiple_of != 1):
    raise ValueError("--budget, --group-importance, --per-mac, --allocation and --multiple-of"
                     " need --structured")
  return dataclasses.replace(config, **changes)


def output_dir(config, fast: bool = False) -> str:
  """The default ``--out`` of ``mnist`` and ``train``: ``runs/<dataset>_<model>_<c>x_seed<s>``,
  then ``_structured`` for a structured run and ``_fast`` for ``--fast``."""
  return os.path.join(
      "runs", f"{config.dataset}_{config.model}_{config.compression:g}x_seed{config.seed}"
      + ("_structured" if config.structured else "") + ("_fast" if fast else ""))


def closing_summary(results: dict, files: Sequence[str]) -> str:
  """The result in a few lines: test accuracy of the base, of GSM before and after the final
  prune and of each baseline that ran, then where the files are."""
  config = results["config"]
  if config["structured"]:
    kept = f"structured, by {config['budget']}"
  else:
    kept = (f"keeping {results['target_nonzeros']:,} of {results['eligible_weights']:,} prunable"
            " weights")
  lines = [f"result: {config['model']} on {config['dataset']}, {config['compression']:g}x"
           f" (keep_ratio {1 / config['compression']:.4g}, {kept}), seed {config['seed']};"
           " test accuracy:"]
  rows = [("dense base", results["base"]["final_test_accuracy"])]
  if "gsm" in results:
    rows += [("GSM, before the final prune", results["gsm"]["accuracy_before_prune"]),
             ("GSM, after the final prune", results["gsm"]["accuracy_after_prune"])]
  if "oneshot" in results:
    rows.append(("one-shot prune + fine-tune", results["oneshot"]["final_test_accuracy"]))
  if "gradual" in results:
    rows.append(("gradual magnitude pruning", results["gradual"]["final_test_accuracy"]))
  if "scratch" in results:
    rows.append(("the narrow model from scratch", results["scratch"]["final_test_accuracy"]))
  if "dense_long" in results:
    rows.append(("the dense model on scratch's schedule",
                 results["dense_long"]["final_test_accuracy"]))
  for kind, ticket in results.get("lottery", {}).items():
    mask = "GSM's mask" if kind == "gsm" else "the magnitude mask"
    rows.append((f"lottery ticket from {mask}", ticket["final_test_accuracy"]))
  width = max(len(name) for name, _ in rows)
  lines += [f"  {name:<{width}}  {100 * acc:6.2f}%" for name, acc in rows]
  lines.append("files:")
  lines += [f"  {path}" for path in files]
  return "\n".join(lines)


def run_mnist(args: argparse.Namespace) -> dict:
  """Base training, GSM and the baselines, the final prune, JSON and plots."""
  from gsm_optax.experiments import runner as experiments

  try:
    config = _mnist_config(args)
  except ValueError as e:
    raise SystemExit(f"gsm-optax {args.command}: {e}") from e
  out = args.out or output_dir(config, args.fast)
  print(f"writing to {out}", flush=True)
  results = experiments.run(config, out, quiet=args.quiet)
  files = [os.path.join(out, "results.json")]
  if not args.no_plots and "gsm" in results:
    try:
      from gsm_optax.experiments import plotting

      files += plotting.write_plots(results, out)
    except ImportError as e:
      print(f"no plots: {e}")
  print("\n" + closing_summary(results, files), flush=True)
  return results


DESCRIPTION = """\
Runnable experiments of Global Sparse Momentum SGD (Ding et al. 2019): a small digits example,
the paper's MNIST experiments, any model of the registry on MNIST or Fashion-MNIST, and the
recipe sweep. gsm-optax COMMAND --help says what each runs and how long it takes."""

DIGITS = """\
Prunes an MLP on scikit-learn's 8x8 digits (needs scikit-learn): dense training, then GSM to
1/--compression of the weights, the final prune, and the test accuracy of each, beside a
magnitude prune of the dense model. Takes ~30 s on a 2-core x86 CPU (the defaults: 30 dense +
60 GSM epochs)."""

MNIST = """\
The paper's MNIST experiments (Ding et al. 2019, Table 1): dense base training of LeNet-300-100 or
LeNet-5, then from the same base model: GSM and its final prune, one-shot magnitude pruning +
fine-tuning, gradual magnitude pruning, and lottery tickets from GSM's mask and from the
magnitude mask. It ends with a summary of the test accuracies and where the files are. Running
again with the same --out resumes.

How long, on a 2-core x86 CPU: --fast (make demo: 20,000 images, 4 base + 10 GSM epochs) takes
~2.5-3.5 min. The defaults are the authors' schedules (DingXiaoH/GSM-SGD), 200 base + 280 GSM
epochs: LeNet-300-100's base + GSM took 17-22 min on one core (docs/RESULTS.md); LeNet-5 takes
~36 s an epoch (about 5 hours for base + GSM). One-shot and gradual pruning each add a phase as
long as GSM's, each lottery ticket one as long as the base's (--methods chooses)."""

TRAIN = """\
Any model of the registry on MNIST or Fashion-MNIST: dense base training, then from the same base
model: GSM and its final prune, one-shot magnitude pruning + fine-tuning, gradual magnitude
pruning, and lottery tickets. The LeNets train on the authors' schedules (as in gsm-optax mnist);
ResNet-20 and the ViT on schedules of their own, of about an hour a phase on one CPU core
(ResNet-20: 13 base + 12 GSM epochs; the ViT: 18 + 16). It ends with a summary of the test
accuracies and where the files are. Running again with the same --out resumes.

How long, on a 2-core x86 CPU: ResNet-20 ~5 min an epoch, the ViT ~4 min; each phase <= ~75 min
on one idle core. All methods are six phases (base, GSM, one-shot, gradual, two lottery tickets);
--methods gsm runs the first two. --fast is a smoke test (ResNet-20 and the ViT: 2,048 images,
2 base + 3 GSM epochs). --structured --budget macs --compression 2 --methods gsm gradual scratch
compares structured GSM at half the MACs with structured gradual pruning and the same narrow
model trained from scratch for base + GSM epochs (about as long as base and GSM together, at
half the MACs)."""


def _parser() -> argparse.ArgumentParser:
  from gsm_optax.experiments.config import RECIPES

  raw = argparse.RawDescriptionHelpFormatter
  parser = argparse.ArgumentParser(prog="gsm-optax", description=DESCRIPTION, formatter_class=raw)
  sub = parser.add_subparsers(dest="command", required=True)
  d = sub.add_parser("digits", help="prune an MLP on scikit-learn's 8x8 digits (~30 s)",
                     description=DIGITS, formatter_class=raw)
  d.add_argument("--compression", type=float, default=10.0,
                 help="eligible weights per kept weight (default 10): keep_ratio ="
                 " 1 / compression")
  d.add_argument("--hidden", type=int, nargs="+", default=[256, 256],
                 help="hidden layer widths (default 256 256)")
  d.add_argument("--base-epochs", type=int, default=30, help="dense epochs (default 30)")
  d.add_argument("--gsm-epochs", type=int, default=60, help="GSM epochs (default 60)")
  d.add_argument("--batch-size", type=int, default=32, help="default 32")
  d.add_argument("--base-lr", type=float, default=0.05, help="dense learning rate (default 0.05)")
  d.add_argument("--gsm-lr", type=float, default=0.01,
                 help="GSM learning rate (default 0.01; 10x lower for the last quarter)")
  d.add_argument("--momentum", type=float, default=0.99, help="GSM momentum (default 0.99)")
  d.add_argument("--weight-decay", type=float, default=5e-3,
                 help="GSM weight decay (default 0.005)")
  d.add_argument("--seed", type=int, default=0, help="default 0")
  d.add_argument("--json", help="write the results to this JSON file")
  d.add_argument("--quiet", action="store_true", help="print nothing")
  d.set_defaults(func=run_digits)

  for command, model, compression, text, description in (
      ("mnist", "lenet300", 60.0, "the paper's MNIST experiments (--fast: ~3 min)", MNIST),
      ("train", "resnet20", 10.0, "any model (LeNets, ResNet-20, a ViT) on MNIST or Fashion-MNIST"
       " (hours)", TRAIN)):
    m = sub.add_parser(command, help=text, description=description, epilog=_models_epilog(),
                       formatter_class=raw)
    _experiment_arguments(m, model, compression, RECIPES)
  sub.add_parser("sweep", add_help=False,
                 help="the recipe sweep over datasets, models and ratios (gsm-optax sweep -h)")
  return parser


def _models_epilog() -> str:
  """The models of ``--model``, each with what it prunes, wrapped for the terminal."""
  from gsm_optax.experiments.models import PRUNABLE

  width = max(map(len, PRUNABLE))
  models = "\n".join(textwrap.fill(f"  {name:<{width}}  prunes {what}", 100,
                                   subsequent_indent=" " * (width + 4))
                      for name, what in PRUNABLE.items())
  return f"models (--model):\n{models}"


def _experiment_arguments(m: argparse.ArgumentParser, model: str, compression: float,
                          recipes) -> None:
  """The options of the mnist and train commands: one experiment of the runner."""
  from gsm_optax.experiments.models import MODELS

  m.add_argument("--model", choices=sorted(MODELS), default=model,
                 help=f"default {model}; the list below says what each prunes")
  m.add_argument("--compression", type=float, default=compression,
                 help=f"prunable weights per kept weight (default {compression:g}): the prune"
                 " keeps the Q = prunable / compression largest, the top-Q (gsm_optax's"
                 " keep_ratio = 1 / compression)")
  m.add_argument("--dataset", choices=["mnist", "fashion_mnist"],
                 help="default: mnist for the LeNets, fashion_mnist for the deep networks")
  m.add_argument("--fast", action="store_true",
                 help="short schedules on a subset of the images, for smoke tests and demos")
  m.add_argument("--methods", nargs="+", choices=["gsm", "lottery", "oneshot", "gradual",
                                                  "scratch", "dense_long"],
                 help="what to run after the base model (default: all but scratch; with"
                 " --structured gsm and gradual): gsm (GSM and its final"
                 " prune), oneshot (one magnitude prune of the base model, then fine-tuning),"
                 " gradual (gradual magnitude pruning), lottery (the kept weights of GSM's and"
                 " of the magnitude mask retrained from their initial values; runs gsm too),"
                 " scratch (--structured, resnet20 and vit, with gsm: the widths of GSM's export"
                 " trained from fresh weights for base + GSM epochs, Liu et al. 2019),"
                 " dense_long (the dense model on scratch's schedule: whether scratch owes its"
                 " accuracy to its width or to that schedule)")
  m.add_argument("--seed", type=int)
  m.add_argument("--batch-size", type=int)
  m.add_argument("--train-subset", type=int, help="use only the first N training images")
  for name in ("base", "gsm"):
    m.add_argument(f"--{name}-epochs", type=int)
    m.add_argument(f"--{name}-lr", type=float)
    m.add_argument(f"--{name}-momentum", type=float)
    m.add_argument(f"--{name}-weight-decay", type=float)
    m.add_argument(f"--{name}-warmup-epochs", type=int)
    m.add_argument(f"--{name}-boundaries", type=int, nargs="*",
                   help=f"epochs of the {name} phase at which the learning rate drops 10x")
  m.add_argument("--recipe", choices=sorted(recipes),
                 help="the GSM update: 'recommended' (default: keep ratio annealed from dense to"
                 " Q up to the first learning-rate drop, ranking by magnitude, an extra decay of"
                 " 100x the weight decay outside the top-Q, chosen by the recipe sweep;"
                 " with --structured its allocation too), 'fixed' (the first recipe, fitted to"
                 " LeNet-300-100 60x MNIST) or 'paper' (the authors' update, unchanged); the"
                 " flags below override any")
  m.add_argument("--passive-weight-decay", type=float,
                 help="extra weight decay of the weights outside the top-Q (0: the paper)")
  m.add_argument("--passive-weight-decay-begin-epoch", type=int,
                 help="GSM epoch from which --passive-weight-decay applies (default 0)")
  m.add_argument("--importance-ema", type=float,
                 help="rank by a moving average of the Taylor scores at this rate (0: the paper)")
  m.add_argument("--importance", choices=["taylor", "magnitude"],
                 help="the weights' score: taylor (|g * w|, the paper) or magnitude (|w|)")
  m.add_argument("--anneal-epochs", type=int,
                 help="keep ratio from 1 to 1/compression by a cubic over these GSM epochs")
  m.add_argument("--structured", action="store_true",
                 help="structured GSM: prune whole neurons, filters and input features (ResNet-20:"
                 " block filters and stage channels; the ViT: heads and MLP units), export"
                 " the narrower dense model and time it (methods gsm, gradual and scratch)")
  m.add_argument("--budget", choices=["groups", "weights", "macs"], default="groups",
                 help="with --structured, what --compression divides: the number of groups,"
                 " their weights, or the multiply-accumulates per image")
  m.add_argument("--group-importance",
                 choices=["group-taylor", "group-rms", "taylor", "magnitude"],
                 help="with --structured, a group's score (gsm_optax.keep_top_groups):"
                 " group-taylor, |sum g*w| (the loss change of removing it); group-rms, the RMS"
                 " of its weights; taylor, sum |g*w|; magnitude, sum |w| (default: group-rms"
                 " where the weights are ranked by magnitude, group-taylor otherwise)")
  m.add_argument("--per-mac", action="store_true",
                 help="with --budget macs, rank groups by score per MAC at the widths kept")
  m.add_argument("--allocation", choices=ALLOCATIONS,
                 help="with --structured, GSM ranks all groups together (global), keeps the same"
                 " fraction of every layer (uniform, as the structured gradual baseline does) or"
                 " ranks all groups on each layer's own scale (normalized: its scores over their"
                 " root mean square); default: the recipe's (recommended:"
                 f" {STRUCTURED_ALLOCATION}), else global")
  m.add_argument("--multiple-of", type=int, default=1,
                 help="with --structured, every layer whose width N divides keeps a multiple of N"
                 " of its units (8: widths at which XLA:CPU's convolutions run at full speed)")
  m.add_argument("--checkpoint-every", type=int, help="epochs between checkpoints")
  m.add_argument("--out", help="output directory (default runs/<dataset>_<model>_<c>x_seed<s>,"
                 " then _structured with --structured and _fast with --fast: make demo writes"
                 " runs/mnist_lenet300_60x_seed0_fast); the run prints it first")
  m.add_argument("--no-plots", action="store_true", help="no PNG plots")
  m.add_argument("--quiet", action="store_true",
                 help="no progress output (the closing summary still prints)")
  m.set_defaults(func=run_mnist)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ["sweep"]:  # its own parser: gsm_optax.experiments.sweep_cli
    from gsm_optax.experiments import sweep_cli

    return sweep_cli.main(argv[1:])
  args = _parser().parse_args(argv)
  if not args.compression >= 1:
    raise SystemExit(f"--compression must be >= 1; got {args.compression}")
  args.func(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
