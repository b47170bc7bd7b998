"""The paper's MNIST experiments, end to end, built on the public API.

One run (:func:`run`) trains a dense base model, then, from that same base model
and for the same number of epochs, the methods to compare:

- ``gsm``: GSM training to ``1/compression`` and the final global magnitude
  prune, no fine-tuning (the paper's method);
- ``oneshot``: one global magnitude prune of the base model, then fine-tuning
  with the pruned weights held at zero;
- ``gradual``: gradual global magnitude pruning with Zhu & Gupta's cubic
  schedule;
- ``lottery``: lottery tickets: the masks found by GSM and by magnitude pruning
  of the base model, applied to the base model's initial weights and retrained
  with the authors' base schedule (Frankle & Carbin 2019; the paper's Table 4).

Every phase is one Flax ``TrainState`` trained by jitted epochs (an epoch is one
``lax.scan``; the data lives on the device), evaluated after every epoch,
checkpointed with orbax every few epochs and resumed from the newest complete
checkpoint when the same output directory is used again. Each finished phase
leaves ``<out>/<phase>/params.msgpack`` and ``<out>/<phase>/result.json``; the
whole run's results go to ``<out>/results.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
import zlib
from collections.abc import Callable
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from gsm_optax import datasets, masking, models, schedules
from gsm_optax.checkpointing import Checkpointer
from gsm_optax.eligibility import default_eligible
from gsm_optax.pruning import prune, prune_mask
from gsm_optax.reporting import sparsity_report
from gsm_optax.training import accuracy, make_train_epoch
from gsm_optax.transform import gsm, selection_stats

PyTree = Any
METHODS = ("gsm", "lottery", "oneshot", "gradual")

__all__ = [
    "METHODS", "ExperimentConfig", "PhaseConfig", "fast_config", "load_phase_params",
    "paper_config", "run",
]


@dataclasses.dataclass(frozen=True)
class PhaseConfig:
  """One training phase's optimizer and schedule (epochs counted from its start)."""

  learning_rate: float
  epochs: int
  boundaries: tuple[int, ...]
  momentum: float
  nesterov: bool = False
  weight_decay: float = 5e-4
  warmup_epochs: int = 5
  lr_factor: float = 0.1

  def schedule(self, steps_per_epoch: int) -> optax.Schedule:
    return schedules.warmup_piecewise_schedule(
        self.learning_rate,
        warmup_steps=self.warmup_epochs * steps_per_epoch,
        boundaries=[b * steps_per_epoch for b in self.boundaries],
        factor=self.lr_factor,
    )


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Everything one run depends on; the defaults are the authors' (GUIDE section 2)."""

  model: str = "lenet300"
  compression: float = 60.0
  dataset: str = "mnist"
  seed: int = 0
  batch_size: int = 256
  methods: tuple[str, ...] = METHODS
  base: PhaseConfig = PhaseConfig(3e-2, 200, (40, 80, 120, 160), momentum=0.9)
  gsm: PhaseConfig = PhaseConfig(1e-2, 280, (160, 200, 240), momentum=0.99, nesterov=True)
  # GSM beyond the paper (0 is the paper's update; see gsm_optax.gsm):
  passive_decay: float = 0.0  # extra decay of the weights outside the top-Q
  passive_decay_begin_epoch: int = 0  # ... from this GSM epoch on (0 before it)
  importance_ema: float = 0.0  # rank by a moving average of the Taylor scores
  anneal_epochs: int = 0  # keep ratio from 1 to 1/compression by a cubic over these GSM epochs
  # Gradual magnitude pruning prunes from epoch 0 up to this epoch of its phase
  # (None: the GSM phase's first learning-rate boundary), every this many steps.
  gradual_end_epoch: int | None = None
  gradual_update_every: int | None = None  # None: once an epoch
  train_subset: int | None = None  # use only the first N training images (smoke tests)
  checkpoint_every: int = 10  # epochs
  last_k: int = 5  # also report the mean test accuracy of the last k epochs

  def __post_init__(self):
    if self.model not in models.MODELS:
      raise ValueError(f"model must be one of {sorted(models.MODELS)}; got model={self.model!r}.")
    if not (isinstance(self.compression, (int, float)) and self.compression >= 1):
      raise ValueError(f"compression must be a number >= 1; got compression={self.compression!r}.")
    if self.dataset not in ("mnist", "fashion_mnist"):
      raise ValueError(f"dataset must be 'mnist' or 'fashion_mnist'; got dataset={self.dataset!r}.")
    unknown = [m for m in self.methods if m not in METHODS]
    if unknown or not self.methods:
      raise ValueError(f"methods must be a non-empty subset of {METHODS}; got {self.methods!r}.")
    for name in ("batch_size", "checkpoint_every", "last_k"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1; got {name}={getattr(self, name)!r}.")
    if not 0 <= self.passive_decay < float("inf"):
      raise ValueError(f"passive_decay must be >= 0; got passive_decay={self.passive_decay!r}.")
    if not 0 <= self.importance_ema < 1:
      raise ValueError(f"importance_ema must be in [0, 1); got {self.importance_ema!r}.")
    if not 0 <= self.passive_decay_begin_epoch <= self.gsm.epochs:
      raise ValueError(f"passive_decay_begin_epoch must be in [0, gsm.epochs={self.gsm.epochs}];"
                       f" got {self.passive_decay_begin_epoch!r}.")
    if not 0 <= self.anneal_epochs <= self.gsm.epochs:
      raise ValueError(f"anneal_epochs must be in [0, gsm.epochs={self.gsm.epochs}];"
                       f" got anneal_epochs={self.anneal_epochs!r}.")
    for name in ("base", "gsm"):
      phase = getattr(self, name)
      if phase.epochs < 1:
        raise ValueError(f"{name}.epochs must be >= 1; got {phase.epochs!r}.")

  @property
  def keep_ratio(self) -> float:
    return 1.0 / self.compression

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def paper_config(
    model: str = "lenet300", compression: float = 60.0, **overrides
) -> ExperimentConfig:
  """The authors' schedules: 200 base epochs, 280 GSM epochs (GUIDE section 2)."""
  return ExperimentConfig(model=model, compression=compression, **overrides)


def fast_config(
    model: str = "lenet300", compression: float = 60.0, **overrides
) -> ExperimentConfig:
  """The whole pipeline in about a minute on a 2-core CPU, for demos and smoke tests.

  The GSM phase is 10 epochs instead of 280, so the authors' weight decay would
  leave the weights outside the top-Q far from zero (see
  :func:`gsm_optax.schedules.decay_shrink_factor`); it uses 1e-2 instead.
  """
  defaults = dict(
      train_subset=20_000,
      base=PhaseConfig(3e-2, 4, (3,), momentum=0.9, warmup_epochs=1),
      gsm=PhaseConfig(1e-2, 10, (7,), momentum=0.99, nesterov=True, weight_decay=1e-2,
                      warmup_epochs=1),
      checkpoint_every=2,
      last_k=2,
  )
  if model == "lenet5":
    defaults["train_subset"] = 5_000
    defaults["base"] = PhaseConfig(3e-2, 2, (1,), momentum=0.9, warmup_epochs=1)
    defaults["gsm"] = PhaseConfig(1e-2, 4, (3,), momentum=0.99, nesterov=True,
                                  weight_decay=2e-2, warmup_epochs=1)
  defaults.update(overrides)
  return ExperimentConfig(model=model, compression=compression, **defaults)


# ----------------------------------------------------------------------------- data


def load_data(config: ExperimentConfig) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Normalised train and test images on the device, as ``[N, 28, 28, 1]`` float32."""
  loader = datasets.load_mnist if config.dataset == "mnist" else datasets.load_fashion_mnist
  data = loader()
  n = config.train_subset or len(data.train_labels)
  return (
      jnp.asarray(datasets.normalize(data.train_images[:n])),
      jnp.asarray(data.train_labels[:n].astype(np.int32)),
      jnp.asarray(datasets.normalize(data.test_images)),
      jnp.asarray(data.test_labels.astype(np.int32)),
  )


# ----------------------------------------------------------------------------- optimizers


def momentum_sgd(phase: PhaseConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with momentum and weight decay on the eligible (rank >= 2) weights only."""
  return optax.chain(
      optax.add_decayed_weights(phase.weight_decay, mask=default_eligible),
      optax.trace(phase.momentum, nesterov=phase.nesterov),
      optax.scale_by_learning_rate(phase.schedule(steps_per_epoch)),
  )


def gsm_optimizer(config: ExperimentConfig, steps_per_epoch: int):
  phase = config.gsm
  keep_ratio = config.keep_ratio
  if config.anneal_epochs:
    keep_ratio = schedules.cubic_keep_ratio_schedule(
        config.keep_ratio, begin_step=0, end_step=config.anneal_epochs * steps_per_epoch)
  passive_decay = config.passive_decay
  if config.passive_decay_begin_epoch and passive_decay:
    passive_decay = optax.piecewise_constant_schedule(
        0.0, {config.passive_decay_begin_epoch * steps_per_epoch: 1.0})
    passive_decay = _scaled(passive_decay, config.passive_decay)
  return gsm(phase.schedule(steps_per_epoch), keep_ratio, momentum=phase.momentum,
             weight_decay=phase.weight_decay, nesterov=phase.nesterov,
             passive_weight_decay=passive_decay, importance_ema=config.importance_ema)


def _scaled(schedule: optax.Schedule, factor: float) -> optax.Schedule:
  return lambda count: factor * schedule(count)


# ----------------------------------------------------------------------------- measurements


jit_prune = jax.jit(prune, static_argnums=1)
jit_prune_mask = jax.jit(prune_mask, static_argnums=1)


def _eligible_pairs(params: PyTree, pruned: PyTree) -> list[tuple[Any, Any]]:
  flags = jax.tree_util.tree_leaves(default_eligible(params))
  return [(w, p) for w, p, e in zip(jax.tree_util.tree_leaves(params),
                                    jax.tree_util.tree_leaves(pruned), flags) if e]


@jax.jit
def _outside_fraction(params: PyTree, pruned: PyTree) -> jax.Array:
  total = outside = jnp.zeros((), jnp.float32)
  for w, p in _eligible_pairs(params, pruned):
    w = w.astype(jnp.float32)
    total += jnp.sum(jnp.square(w))
    outside += jnp.sum(jnp.square(w - p.astype(jnp.float32)))
  return jnp.sqrt(outside / jnp.maximum(total, jnp.finfo(jnp.float32).tiny))


def outside_fraction(params: PyTree, pruned: PyTree) -> float:
  """Share of the eligible weights' L2 norm that ``pruned = prune(params, ...)`` removed.

  Zero once the model is exactly Q-sparse: the "distance to the target".
  """
  return float(_outside_fraction(params, pruned))


def removed_by_prune(params: PyTree, pruned: PyTree) -> dict[str, float]:
  """How much of the eligible weights' magnitude ``pruned = prune(params, ...)`` removed."""
  l1 = l1_out = l2 = l2_out = 0.0
  largest_removed = 0.0
  for w, p in _eligible_pairs(params, pruned):
    a = np.abs(np.asarray(w, np.float64))
    removed = np.abs(np.asarray(w, np.float64) - np.asarray(p, np.float64))
    l1 += a.sum()
    l1_out += removed.sum()
    l2 += np.square(a).sum()
    l2_out += np.square(removed).sum()
    largest_removed = max(largest_removed, float(removed.max(initial=0.0)))
  return {
      "removed_l1_fraction": l1_out / l1 if l1 else 0.0,
      "removed_l2_fraction": float(np.sqrt(l2_out / l2)) if l2 else 0.0,
      "largest_removed_magnitude": largest_removed,
  }


# ----------------------------------------------------------------------------- progress


class Progress:
  """A one-line progress bar on a terminal; a line every few epochs in a log file."""

  def __init__(self, label: str, total: int, stream=None, quiet: bool = False):
    self.label, self.total, self.quiet = label, total, quiet
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.every = max(1, total // 20)
    self.t0 = time.time()

  def update(self, done: int, **fields: Any) -> None:
    if self.quiet:
      return
    width = 24
    filled = int(width * done / self.total)
    bar = "#" * filled + "-" * (width - filled)
    info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in fields.items())
    line = (f"{self.label:<16} [{bar}] {done:>4}/{self.total}"
            f"  {time.time() - self.t0:6.0f}s  {info}")
    if self.tty:
      end = "\n" if done == self.total else ""
      print("\r" + line, end=end, file=self.stream, flush=True)
    elif done % self.every == 0 or done == self.total:
      print(line, file=self.stream, flush=True)


# ----------------------------------------------------------------------------- phases


def _write_json(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=_json_default)
  os.replace(tmp, path)


def _json_default(x: Any):
  if isinstance(x, (np.generic, jax.Array)):
    return np.asarray(x).tolist()
  raise TypeError(f"not JSON serialisable: {type(x)}")


class Runner:
  """Trains and evaluates phases of one experiment, with checkpoints and logs."""

  def __init__(self, config: ExperimentConfig, out_dir: str, *, quiet: bool = False,
               log: Callable[[str], None] | None = None):
    self.config = config
    self.out_dir = out_dir
    self.quiet = quiet
    self.log = log or ((lambda s: None) if quiet else (lambda s: print(s, flush=True)))
    os.makedirs(out_dir, exist_ok=True)
    self.x_train, self.y_train, self.x_test, self.y_test = load_data(config)
    self.steps_per_epoch = self.x_train.shape[0] // config.batch_size
    self.model = models.MODELS[config.model]()
    self.train_epoch = make_train_epoch(config.batch_size)
    self.key = jax.random.PRNGKey(config.seed)

  def evaluate(self, params: PyTree) -> float:
    return accuracy(self.model.apply, params, self.x_test, self.y_test)

  def init_params(self) -> PyTree:
    return self.model.init(jax.random.fold_in(self.key, 0), self.x_train[:1])["params"]

  def phase(
      self,
      name: str,
      params: PyTree,
      tx: optax.GradientTransformation,
      epochs: int,
      *,
      extra: Callable[[train_state.TrainState], dict[str, Any]] | None = None,
  ) -> tuple[PyTree, dict[str, Any]]:
    """Trains ``params`` with ``tx`` for ``epochs``; resumes or reuses finished work."""
    directory = os.path.join(self.out_dir, name)
    params_file = os.path.join(directory, "params.msgpack")
    result_file = os.path.join(directory, "result.json")
    if os.path.exists(result_file) and os.path.exists(params_file):
      with open(params_file, "rb") as f:
        params = flax.serialization.from_bytes(params, f.read())
      with open(result_file) as f:
        result = json.load(f)
      self.log(f"{name}: finished earlier, reusing {directory}")
      return params, result
    os.makedirs(directory, exist_ok=True)
    state = train_state.TrainState.create(apply_fn=self.model.apply, params=params, tx=tx)
    history_file = os.path.join(directory, "history.json")
    history: list[dict[str, Any]] = []
    start = 0
    wall = 0.0
    with Checkpointer(os.path.join(directory, "checkpoints"), max_to_keep=2) as ckpt:
      state, step = ckpt.restore_or_init(state)
      if step is not None:
        start = int(step) // self.steps_per_epoch
        if os.path.exists(history_file):
          with open(history_file) as f:
            saved = json.load(f)
          history = saved["epochs"][:start]
          wall = saved.get("seconds", 0.0)
        self.log(f"{name}: resuming from the checkpoint of epoch {start}")
      phase_key = jax.random.fold_in(self.key, zlib.crc32(name.encode()) % (2**31))
      progress = Progress(name, epochs, quiet=self.quiet)
      t0 = time.time() - wall
      for epoch in range(start, epochs):
        state, loss = self.train_epoch(state, self.x_train, self.y_train,
                                       jax.random.fold_in(phase_key, epoch))
        row = {"epoch": epoch + 1, "loss": float(loss),
               "test_accuracy": self.evaluate(state.params)}
        if extra is not None:
          row.update(extra(state))
        history.append(row)
        progress.update(epoch + 1, **{k: v for k, v in row.items() if k != "epoch"})
        if (epoch + 1) % self.config.checkpoint_every == 0 or epoch + 1 == epochs:
          ckpt.save(state, step=int(state.step), force=True)
          ckpt.wait_until_finished()
          _write_json(history_file, {"epochs": history, "seconds": time.time() - t0})
    seconds = time.time() - t0
    accs = [row["test_accuracy"] for row in history]
    result = {
        "epochs": epochs,
        "steps": int(state.step),
        "final_test_accuracy": accs[-1],
        f"mean_last_{self.config.last_k}_test_accuracy": float(np.mean(accs[-self.config.last_k:])),
        "seconds": seconds,
        "history": history,
    }
    with open(params_file + ".tmp", "wb") as f:
      f.write(flax.serialization.to_bytes(state.params))
    os.replace(params_file + ".tmp", params_file)
    _write_json(result_file, result)
    return state.params, result


# ----------------------------------------------------------------------------- the run


def machine_info() -> dict[str, Any]:
  return {
      "platform": platform.platform(),
      "processor": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "optax": optax.__version__,
      "devices": [str(d) for d in jax.devices()],
  }


def _summary(result: dict[str, Any], k: int) -> dict[str, Any]:
  return dict(result, last_k=k)


def run(config: ExperimentConfig, out_dir: str, *, quiet: bool = False,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Runs the experiment described by ``config``, writing everything under ``out_dir``.

  Args:
    config: the experiment (model, compression, schedules, methods, seed).
    out_dir: output directory; running again with the same one resumes.
    quiet: no progress output.
    log: where progress messages go (default: print).

  Returns:
    The results, also written to ``<out_dir>/results.json``.
  """
  t_start = time.time()
  runner = Runner(config, out_dir, quiet=quiet, log=log)
  say = runner.log
  spe = runner.steps_per_epoch
  keep = config.keep_ratio
  results: dict[str, Any] = {"config": config.to_dict(), "machine": machine_info(),
                             "steps_per_epoch": spe}

  init = runner.init_params()
  eligible_total = sparsity_report(init).eligible_size
  results["parameters"] = models.count_params(init)
  results["eligible_weights"] = eligible_total
  results["target_nonzeros"] = int(keep * eligible_total)
  say(f"{config.model} on {config.dataset}: {results['parameters']:,} parameters,"
      f" {eligible_total:,} prunable; keeping {results['target_nonzeros']:,}"
      f" ({config.compression:g}x), seed {config.seed}")

  base_params, base = runner.phase("base", init, momentum_sgd(config.base, spe), config.base.epochs)
  results["base"] = _summary(base, config.last_k)
  say(f"base: test accuracy {base['final_test_accuracy']:.4f}")

  if "gsm" in config.methods or "lottery" in config.methods:
    gsm_phase = config.gsm
    lr = gsm_phase.schedule(spe)
    shrink = schedules.decay_shrink_factor(lr, gsm_phase.epochs * spe,
                                           momentum=gsm_phase.momentum,
                                           weight_decay=gsm_phase.weight_decay)
    results["predicted_shrink_factor"] = shrink
    say(f"gsm: weights outside the top-Q will shrink to about {shrink:.3g} of their size"
        " over this schedule")
    warning = schedules.shrink_warning(shrink)
    if warning:
      say("WARNING: " + warning)

    def gsm_extra(state):
      stats = selection_stats(state.opt_state)
      pruned_now = jit_prune(state.params, keep)
      return {
          "keep_count": int(stats.keep_count),
          "threshold": float(stats.threshold),
          "pruned_test_accuracy": runner.evaluate(pruned_now),
          "outside_fraction": outside_fraction(state.params, pruned_now),
      }

    gsm_params, trained = runner.phase("gsm", base_params,
                                       gsm_optimizer(config, spe), gsm_phase.epochs,
                                       extra=gsm_extra)
    pruned = jit_prune(gsm_params, keep)
    report = sparsity_report(pruned)
    results["gsm"] = _summary(trained, config.last_k) | {
        "accuracy_before_prune": trained["final_test_accuracy"],
        "accuracy_after_prune": runner.evaluate(pruned),
        "nonzeros": report.eligible_nonzeros,
        "compression": report.compression,
        "layers": report.to_dict(),
        **removed_by_prune(gsm_params, pruned),
    }
    g = results["gsm"]
    say(str(report))
    say(f"gsm: test accuracy {g['accuracy_before_prune']:.4f} before the final prune,"
        f" {g['accuracy_after_prune']:.4f} after; the prune removed"
        f" {100 * g['removed_l2_fraction']:.2f}% of the weights' L2 norm")

  if "oneshot" in config.methods or "lottery" in config.methods:
    base_mask = jit_prune_mask(base_params, keep)

  if "oneshot" in config.methods:
    pruned_base = _apply_mask(base_params, base_mask)
    tx = masking.hold_mask(momentum_sgd(config.gsm, spe), base_mask)
    _, ft = runner.phase("oneshot", pruned_base, tx, config.gsm.epochs)
    results["oneshot"] = _summary(ft, config.last_k) | {
        "accuracy_before_finetune": runner.evaluate(pruned_base)}
    say(f"one-shot prune + fine-tune: {results['oneshot']['accuracy_before_finetune']:.4f}"
        f" -> {ft['final_test_accuracy']:.4f}")

  if "gradual" in config.methods:
    end_epoch = config.gradual_end_epoch
    if end_epoch is None:
      end_epoch = config.gsm.boundaries[0] if config.gsm.boundaries else config.gsm.epochs
    every = config.gradual_update_every or spe
    tx = masking.gradual_magnitude_pruning(
        momentum_sgd(config.gsm, spe), keep, begin_step=0,
        end_step=max(end_epoch * spe - 1, 1), update_every=every)
    gradual_params, gr = runner.phase("gradual", base_params, tx, config.gsm.epochs)
    results["gradual"] = _summary(gr, config.last_k) | {
        "nonzeros": sparsity_report(gradual_params).eligible_nonzeros,
        "end_epoch": end_epoch, "update_every_steps": every}
    say(f"gradual magnitude pruning: {gr['final_test_accuracy']:.4f}")

  if "lottery" in config.methods:
    tickets = {"gsm": jit_prune_mask(gsm_params, keep), "magnitude": base_mask}
    results["lottery"] = {}
    for kind, mask in tickets.items():
      start = _apply_mask(init, mask)
      tx = masking.hold_mask(momentum_sgd(config.base, spe), mask)
      _, lt = runner.phase(f"lottery_{kind}", start, tx, config.base.epochs)
      results["lottery"][kind] = _summary(lt, config.last_k)
      say(f"lottery ticket from {kind}: {lt['final_test_accuracy']:.4f}")

  results["seconds"] = time.time() - t_start
  _write_json(os.path.join(out_dir, "results.json"), results)
  return results


def _apply_mask(params: PyTree, mask: PyTree) -> PyTree:
  """``params`` with every entry outside ``mask`` set to 0, as :func:`prune` does."""
  return jax.tree_util.tree_map(lambda w, m: jnp.where(m, w, jnp.zeros_like(w)), params, mask)


def load_phase_params(out_dir: str, phase: str, config: ExperimentConfig) -> PyTree:
  """The parameters a finished phase (``"base"``, ``"gsm"``, ...) of a run left on disk."""
  path = os.path.join(out_dir, phase, "params.msgpack")
  if not os.path.exists(path):
    raise FileNotFoundError(f"phase {phase!r} has not finished in {out_dir!r}: no {path}")
  model = models.MODELS[config.model]()
  like = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
  with open(path, "rb") as f:
    return flax.serialization.from_bytes(like, f.read())
