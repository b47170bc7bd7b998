"""The paper's MNIST experiments, end to end, built on the public API.

One run (:func:`run`) trains a dense base model, then, from that same base model
and for the same number of epochs, the methods to compare:

- ``gsm``: GSM training to ``1/compression`` and the final global magnitude
  prune, no fine-tuning (the paper's method);
- ``oneshot``: one global magnitude prune of the base model, then fine-tuning
  with the pruned weights held at zero;
- ``gradual``: gradual global magnitude pruning with Zhu & Gupta's cubic
  schedule (structured runs: the same fraction of every layer's groups, ranked within the layer
  by their RMS, ``"group_rms"``, which orders a layer's groups as their L2 norms do, since
  magnitudes of different layers are not comparable);
- ``lottery``: lottery tickets: the masks found by GSM and by magnitude pruning
  of the base model, applied to the base model's initial weights and retrained
  with the authors' base schedule (Frankle & Carbin 2019; the paper's Table 4);
- ``scratch`` (structured runs of ResNet-20 and the ViT): the same narrow architecture
  trained from scratch for the same total epochs (Liu et al., "Rethinking the Value of
  Network Pruning", ICLR 2019): the widths of structured GSM's export, freshly
  initialised, trained with the base phase's optimizer for the base and GSM phases'
  epochs together (:func:`scratch_phase`);
- ``dense_long``: the dense model trained from its initial weights on ``scratch``'s schedule,
  which tells whether a narrow model from scratch that passes the pruned one owes that to its
  width or to the longer schedule (its learning-rate drops come later than the base's).

The model is any of :data:`models.MODELS` (the LeNets, ResNet-20, a ViT), pruned where
:func:`models.eligible` says. Every phase is one ``TrainState`` (Flax's, with the model's
BatchNorm statistics beside the parameters) trained by jitted epochs (an epoch is one
``lax.scan``; the data lives on the device; dropout draws a new RNG every step), evaluated
after every epoch with the running statistics, checkpointed with orbax every few epochs and
resumed from the newest complete checkpoint when the same output directory is used again.
Each finished phase leaves ``<out>/<phase>/params.msgpack`` (with
``<out>/<phase>/model_state.msgpack`` for a model with BatchNorm) and
``<out>/<phase>/result.json``; the whole run's results go to ``<out>/results.json``.
"""

from __future__ import annotations

import functools
import os
import platform
import time
import zlib
from collections.abc import Callable
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

import gsm_optax
from gsm_optax.checkpointing import Checkpointer
from gsm_optax.experiments import datasets, models, structured
from gsm_optax.experiments.config import ExperimentConfig, PhaseConfig, scratch_phase
from gsm_optax.experiments.results import load_results, readiness_row, write_json
from gsm_optax.experiments.training import (
  TrainState,
  accuracy,
  correct_count,
  make_train_epoch,
  progress_bar,
)

PyTree = Any
Array = jax.Array
# A model's variables: {"params": ..., "batch_stats": ...} (only "params" for the LeNets).
Variables = dict[str, PyTree]

__all__ = ["load_phase_params", "load_phase_variables", "run"]


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


def momentum_sgd(phase: PhaseConfig, steps_per_epoch: int,
                 eligible: Callable[[PyTree], PyTree] = gsm_optax.default_eligible
                 ) -> optax.GradientTransformation:
  """SGD with momentum and weight decay on the prunable weights only (by default, the
  authors' rank >= 2 rule: kernels decay, biases and normalisations do not)."""
  return optax.chain(
      optax.add_decayed_weights(phase.weight_decay, mask=eligible),
      optax.trace(phase.momentum, nesterov=phase.nesterov),
      optax.scale_by_learning_rate(phase.schedule(steps_per_epoch)),
  )


def gsm_optimizer(config: ExperimentConfig, steps_per_epoch: int,
                  groups: tuple[gsm_optax.Groups, ...] | None = None,
                  budget: Any = "groups") -> optax.GradientTransformation:
  """The GSM phase's optimizer: ``gsm_optax.gsm`` with the config's schedule, recipe and the
  model's prunable weights (or the structured run's groups)."""
  phase = config.gsm
  keep_ratio = config.keep_ratio
  if config.anneal_epochs:
    keep_ratio = gsm_optax.cubic_keep_ratio_schedule(
        config.keep_ratio, begin_step=0, end_step=config.anneal_epochs * steps_per_epoch)
  passive_weight_decay: float | Callable[[Array], Array] = config.passive_weight_decay
  if config.passive_weight_decay_begin_epoch and passive_weight_decay:
    begin = config.passive_weight_decay_begin_epoch * steps_per_epoch
    passive_weight_decay = lambda count: jnp.where(count >= begin, config.passive_weight_decay, 0.0)
  eligible = None
  if groups is None:
    eligible, importance = models.eligible(config.model), config.importance
  else:
    importance = config.group_importance
  return gsm_optax.gsm(phase.schedule(steps_per_epoch), keep_ratio, momentum=phase.momentum,
                       weight_decay=phase.weight_decay, nesterov=phase.nesterov,
                       passive_weight_decay=passive_weight_decay,
                       importance_ema=config.importance_ema, importance=importance,
                       eligible=eligible, groups=groups, budget=budget,
                       allocation=config.allocation if groups is not None else "global")


# ----------------------------------------------------------------------------- phases


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
    self.num_test = int(self.y_test.shape[0])
    self.model = models.MODELS[config.model](**config.model_options)
    self.eligible = models.eligible(config.model)
    self.train_epoch = make_train_epoch(config.batch_size)
    self.key = jax.random.PRNGKey(config.seed)
    self.groups: tuple[gsm_optax.Groups, ...] | None = None
    self.budget: str | gsm_optax.MacCost = "groups"
    self.allocation = "global"
    if config.structured:
      params, model_state = _split(self.init_variables())
      self.groups, macs = models.structured_groups(
          config.model, params, model_state=model_state, options=config.model_options,
          per_mac=config.per_mac, multiple_of=config.multiple_of)
      self.budget = macs if config.budget == "macs" else config.budget
      self.allocation = config.allocation

  def evaluate(self, variables: Variables, model: Any = None) -> float:
    """Test accuracy of the run's model (or ``model``), BatchNorm with its running statistics."""
    params, model_state = _split(variables)
    return accuracy((model or self.model).apply, params, self.x_test, self.y_test, model_state)

  @property
  def selection_args(self) -> dict[str, Any]:
    """What to prune: the structured run's groups, or the model's prunable weights."""
    if self.groups is None:
      return {"eligible": self.eligible}
    return {"groups": self.groups, "budget": self.budget, "allocation": self.allocation}

  @functools.partial(jax.jit, static_argnums=(0,))
  def readiness(self, params: PyTree, keep_ratio: float,
                model_state: PyTree = None) -> gsm_optax.PruneReadiness:
    """The library's prune readiness, with the number of correct test answers as metric."""
    return gsm_optax.prune_readiness(
        params, keep_ratio, **self.selection_args,
        eval_fn=lambda p: correct_count(self.model.apply, p, self.x_test, self.y_test,
                                        model_state=model_state))

  @functools.partial(jax.jit, static_argnums=(0, 2))
  def prune(self, params: PyTree, keep_ratio: float) -> PyTree:
    """``gsm_optax.prune`` of the model's prunable weights, or of the structured run's groups."""
    return gsm_optax.prune(params, keep_ratio, **self.selection_args)

  @functools.partial(jax.jit, static_argnums=(0, 2))
  def prune_mask(self, params: PyTree, keep_ratio: float) -> PyTree:
    return gsm_optax.prune_mask(params, keep_ratio, **self.selection_args)

  def lottery_ticket(self, kind: str, init: Variables, mask: PyTree) -> dict[str, Any]:
    """A lottery ticket: ``init`` under ``mask`` (the rest held at zero, ``hold_mask``),
    retrained with the base phase's schedule as the phase ``lottery_<kind>``; its result."""
    start = _join(_apply_mask(init["params"], mask), _split(init)[1])
    tx = gsm_optax.hold_mask(momentum_sgd(self.config.base, self.steps_per_epoch,
                                          self.eligible), mask)
    _, result = self.phase(f"lottery_{kind}", start, tx, self.config.base.epochs)
    return _summary(result, self.config.last_k)

  def prunable(self, params: PyTree) -> PyTree:
    """Which leaves the run prunes: the groups' members, or the model's prunable weights."""
    if self.groups is None:
      return self.eligible(params)
    return gsm_optax.grouping.member_mask(self.groups, params)

  def export_report(self, pruned: PyTree, model_state: dict[str, PyTree] | None = None
                    ) -> dict[str, Any]:
    """The exported narrow model of structurally pruned parameters (with the model's BatchNorm
    statistics, which the export cuts along), measured; or the reason it cannot be exported
    (a layer with no unit left)."""
    try:
      return structured.structured_report(self.config.model, pruned, self.x_test, self.y_test,
                                          model_state=model_state,
                                          options=self.config.model_options,
                                          repeats=self.config.timing_repeats)
    except ValueError as e:
      self.log(f"no export: {e}")
      return {"error": str(e)}

  def scratch(self, export: dict[str, Any]) -> dict[str, Any]:
    """The same narrow architecture trained from scratch (Liu et al. 2019) as the phase
    ``scratch``: the model at the widths of a structured GSM ``export``
    (:meth:`export_report`), freshly initialised (:meth:`init_variables` of the narrow module:
    the dense model's key, the narrow shapes), trained with the base phase's optimizer for the
    base and GSM phases' epochs (:func:`scratch_phase`).

    Returns:
      The phase's result, with the narrow model's ``model_options`` (to load it), its
      ``kept_widths``, MACs and parameters, and its seconds per batch beside the dense model's
      (at the base model's weights; the speed depends on the shapes alone).
    """
    if "error" in export:
      raise ValueError(f"scratch needs the widths of GSM's export, which failed: {export['error']}")
    config, spe = self.config, self.steps_per_epoch
    options = models.narrow_options(config.model, config.model_options, export["kept_widths"])
    model = models.MODELS[config.model](**options)
    phase = scratch_phase(config.base, config.gsm)
    variables, result = self.phase("scratch", self.init_variables(model),
                                   momentum_sgd(phase, spe, self.eligible), phase.epochs,
                                   model=model)
    params, model_state = _split(variables)
    coupling = models.couple_model(config.model, params, model_state=model_state,
                                   options=options)
    timing = structured.speedups(jax.jit(self.model.apply), self.init_variables(),
                                 jax.jit(model.apply), variables, self.x_test,
                                 repeats=config.timing_repeats)
    return _summary(result, config.last_k) | {
        "model_options": options, "kept_widths": dict(export["kept_widths"]),
        "macs": coupling.macs, "params": models.count_params(params), "timing": timing}

  def dense_long(self) -> dict[str, Any]:
    """The dense model trained from scratch on the ``scratch`` method's schedule, as the phase
    ``dense_long``: the base model's initial weights (:meth:`init_variables`) and optimizer for
    the base and GSM phases' epochs (:func:`scratch_phase`). It differs from the base phase in
    its schedule alone, from ``scratch`` in its widths alone.

    Returns:
      The phase's result (:func:`_summary`).
    """
    config = self.config
    phase = scratch_phase(config.base, config.gsm)
    _, result = self.phase("dense_long", self.init_variables(),
                           momentum_sgd(phase, self.steps_per_epoch, self.eligible), phase.epochs)
    return _summary(result, config.last_k)

  def predict_shrink(self) -> float:
    """How far GSM's decay shrinks the last weight to leave the top-Q (as the anneal ends) by
    the end of the phase: the envelope of its decay, weight decay with the passive decay added
    from its first epoch (under-damped, it oscillates as it falls). Logs it, and the library's
    warning where it is too little."""
    config, spe = self.config, self.steps_per_epoch
    phase = config.gsm
    lr = phase.schedule(spe)
    anneal_end, begin = config.anneal_epochs * spe, config.passive_weight_decay_begin_epoch * spe
    decay: float | Callable[[Array], Array] = phase.weight_decay
    if config.passive_weight_decay:
      decay = lambda t: jnp.where(t + anneal_end >= begin,
                                  phase.weight_decay + config.passive_weight_decay,
                                  phase.weight_decay)
    shrink = gsm_optax.decay_shrink_factor(
        lambda t: lr(t + anneal_end), phase.epochs * spe - anneal_end, momentum=phase.momentum,
        weight_decay=decay, nesterov=phase.nesterov)
    when = "at the end of the anneal" if anneal_end else "at the start"
    self.log(f"gsm: a weight that leaves the top-Q {when} falls to {shrink:.3g} of its size by"
             " the end (the envelope of its decay)")
    warning = gsm_optax.shrink_warning(shrink)
    if warning:
      self.log("WARNING: " + warning)
    return shrink

  def gsm(self, base: Variables) -> tuple[dict[str, Any], PyTree]:
    """GSM from the ``base`` model (the phase ``gsm``), then the final prune, no fine-tuning.

    Returns:
      The phase's result, with the test accuracy before and after the prune, the pruned
      model's nonzeros, compression and layers (:func:`gsm_optax.sparsity_report`) and the
      prune's readiness (:func:`readiness_row`); in a structured run also its
      ``kept_groups`` and ``export`` (:meth:`export_report`). And the trained parameters.
    """
    config, keep = self.config, self.config.keep_ratio

    def extra(state):
      stats = gsm_optax.selection_stats(state.opt_state)
      row = readiness_row(self.readiness(state.params, keep, state.model_state), self.num_test)
      return {"keep_count": int(stats.keep_count), "threshold": float(stats.threshold), **row}

    variables, trained = self.phase(
        "gsm", base, gsm_optimizer(config, self.steps_per_epoch, self.groups, self.budget),
        config.gsm.epochs, extra=extra)
    params, model_state = _split(variables)
    pruned = self.prune(params, keep)
    report = gsm_optax.sparsity_report(pruned, eligible=self.prunable)
    ready = readiness_row(self.readiness(params, keep, model_state), self.num_test)
    result = _summary(trained, config.last_k) | {
        "accuracy_before_prune": ready.pop("test_accuracy"),
        "accuracy_after_prune": ready.pop("pruned_test_accuracy"),
        "nonzeros": report.eligible_nonzeros,
        "compression": report.compression,
        "layers": report.to_dict(),
        **ready,
    }
    self.log(str(report))
    if config.structured:
      result["kept_groups"] = self.kept_groups(pruned)
      result["export"] = self.export_report(pruned, model_state)
      self.log(f"gsm: {structured.export_line(result['export'])}")
    self.log(f"gsm: test accuracy {result['accuracy_before_prune']:.4f} before the final prune,"
             f" {result['accuracy_after_prune']:.4f} after; the prune removed"
             f" {100 * result['removed_l2_fraction']:.2f}% of the weights' L2 norm")
    return result, params

  def oneshot(self, base: Variables, mask: PyTree) -> dict[str, Any]:
    """One global magnitude prune of the ``base`` model (its ``mask``), fine-tuned with the
    GSM phase's schedule and the pruned weights held at zero (the phase ``oneshot``)."""
    pruned = _join(_apply_mask(base["params"], mask), _split(base)[1])
    tx = gsm_optax.hold_mask(momentum_sgd(self.config.gsm, self.steps_per_epoch, self.eligible),
                             mask)
    _, tuned = self.phase("oneshot", pruned, tx, self.config.gsm.epochs)
    result = _summary(tuned, self.config.last_k) | {
        "accuracy_before_finetune": self.evaluate(pruned)}
    self.log(f"one-shot prune + fine-tune: {result['accuracy_before_finetune']:.4f}"
             f" -> {tuned['final_test_accuracy']:.4f}")
    return result

  def gradual(self, base: Variables) -> dict[str, Any]:
    """Gradual magnitude pruning of the ``base`` model with the GSM phase's schedule (the phase
    ``gradual``), to ``gradual_end_epoch``; structured runs allocate uniformly."""
    config, spe = self.config, self.steps_per_epoch
    end_epoch = config.gradual_end_epoch
    if end_epoch is None:
      end_epoch = config.gsm.boundaries[0] if config.gsm.boundaries else config.gsm.epochs
    every = config.gradual_update_every or spe
    selection = dict(self.selection_args)
    if config.structured:
      selection["allocation"] = "uniform"
    tx = gsm_optax.gradual_magnitude_pruning(
        momentum_sgd(config.gsm, spe, self.eligible), config.keep_ratio, begin_step=0,
        end_step=max(end_epoch * spe - 1, 1), update_every=every, **selection)
    variables, trained = self.phase("gradual", base, tx, config.gsm.epochs)
    params, model_state = _split(variables)
    result = _summary(trained, config.last_k) | {
        "nonzeros": gsm_optax.sparsity_report(params, eligible=self.prunable).eligible_nonzeros,
        "end_epoch": end_epoch, "update_every_steps": every}
    if config.structured:
      result["kept_groups"] = self.kept_groups(params)
      result["export"] = self.export_report(params, model_state)
      self.log(f"gradual: {structured.export_line(result['export'])}")
    self.log(f"gradual magnitude pruning: {trained['final_test_accuracy']:.4f}")
    return result

  def kept_groups(self, params: PyTree) -> dict[str, int]:
    """How many groups of each set have a non-zero entry (structured runs)."""
    if self.groups is None:
      raise ValueError("kept_groups counts the groups of a structured run; this run has"
                       " structured=False.")
    leaves = jax.tree_util.tree_leaves(params)
    resolved = gsm_optax.grouping.resolve_groups(self.groups, params)
    alive = gsm_optax.grouping.nonzero_groups(resolved, leaves)
    return {g.name: int(jnp.sum(a)) for g, a in zip(self.groups, alive)}

  def init_variables(self, model: Any = None) -> Variables:
    """The model's initial variables: ``params``, and ``batch_stats`` where it has BatchNorm.
    ``model``: another module to draw them for with the same key (the ``scratch`` method's
    narrow one); the run's model by default."""
    variables = (model or self.model).init(jax.random.fold_in(self.key, 0), self.x_train[:1])
    return dict(variables)

  def phase(
      self,
      name: str,
      variables: Variables,
      tx: optax.GradientTransformation,
      epochs: int,
      *,
      extra: Callable[[TrainState], dict[str, Any]] | None = None,
      model: Any = None,
  ) -> tuple[Variables, dict[str, Any]]:
    """Trains ``variables`` (the params with ``tx``, BatchNorm's statistics by their running
    averages) for ``epochs``; resumes or reuses finished work.

    After every epoch the test accuracy is logged, or, given ``extra``, whatever it returns
    (which must include ``test_accuracy``). ``model``: the module trained, if not the run's
    (the ``scratch`` method's narrow one).
    """
    model = model or self.model
    directory = os.path.join(self.out_dir, name)
    result_file = os.path.join(directory, "result.json")
    if os.path.exists(result_file) and os.path.exists(os.path.join(directory, "params.msgpack")):
      variables = _read_variables(directory, variables)
      result = load_results(result_file)
      self.log(f"{name}: finished earlier, reusing {directory}")
      return variables, result
    os.makedirs(directory, exist_ok=True)
    params, model_state = _split(variables)
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                              model_state=model_state)
    history_file = os.path.join(directory, "history.json")
    history: list[dict[str, Any]] = []
    start = 0
    wall = 0.0
    with Checkpointer(os.path.join(directory, "checkpoints"), max_to_keep=2) as ckpt:
      state, step = ckpt.restore_or_init(state)
      if step is not None:
        start = int(step) // self.steps_per_epoch
        if os.path.exists(history_file):
          saved = load_results(history_file)
          history = saved["epochs"][:start]
          wall = saved.get("seconds", 0.0)
        self.log(f"{name}: resuming from the checkpoint of epoch {start}")
      phase_key = jax.random.fold_in(self.key, zlib.crc32(name.encode()) % (2**31))
      progress = progress_bar(name, epochs, start, self.quiet)
      t0 = time.time() - wall
      for epoch in range(start, epochs):
        tick = time.perf_counter()
        state, loss = self.train_epoch(state, self.x_train, self.y_train,
                                       jax.random.fold_in(phase_key, epoch))
        # The training alone (the first epoch includes compiling), apart from the evaluation.
        row = {"epoch": epoch + 1, "loss": float(loss), "train_seconds": time.perf_counter() - tick}
        row.update(extra(state) if extra is not None
                   else {"test_accuracy": self.evaluate(_join(state.params, state.model_state),
                                                        model)})
        history.append(row)
        progress.set_postfix({k: v for k, v in row.items() if k not in ("epoch", "train_seconds")},
                             refresh=False)
        progress.update()
        if (epoch + 1) % self.config.checkpoint_every == 0 or epoch + 1 == epochs:
          ckpt.save(state, step=int(state.step), force=True)
          ckpt.wait_until_finished()
          write_json(history_file, {"epochs": history, "seconds": time.time() - t0})
      progress.close()
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
    variables = _join(state.params, state.model_state)
    _write_variables(directory, variables)
    write_json(result_file, result)
    return variables, result


def _split(variables: Variables) -> tuple[PyTree, dict[str, PyTree]]:
  """``(params, the other collections)``."""
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def _join(params: PyTree, model_state: dict[str, PyTree]) -> Variables:
  return {"params": params, **model_state}


def _write_msgpack(path: str, tree: PyTree) -> None:
  with open(path + ".tmp", "wb") as f:
    f.write(flax.serialization.to_bytes(tree))
  os.replace(path + ".tmp", path)


def _write_variables(directory: str, variables: Variables) -> None:
  """``params.msgpack``, and ``model_state.msgpack`` for the other collections if any."""
  params, model_state = _split(variables)
  _write_msgpack(os.path.join(directory, "params.msgpack"), params)
  if model_state:
    _write_msgpack(os.path.join(directory, "model_state.msgpack"), model_state)


def _read_variables(directory: str, like: Variables) -> Variables:
  """What :func:`_write_variables` wrote, restored into the structure of ``like``."""
  params, model_state = _split(like)
  with open(os.path.join(directory, "params.msgpack"), "rb") as f:
    params = flax.serialization.from_bytes(params, f.read())
  if model_state:
    with open(os.path.join(directory, "model_state.msgpack"), "rb") as f:
      model_state = flax.serialization.from_bytes(model_state, f.read())
  return _join(params, model_state)


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

  init = runner.init_variables()
  eligible_total = gsm_optax.sparsity_report(init["params"],
                                             eligible=runner.prunable).eligible_size
  results["parameters"] = models.count_params(init["params"])
  results["eligible_weights"] = eligible_total
  results["prunable"] = models.PRUNABLE[config.model]
  results["keep_ratio"] = keep
  results["target_nonzeros"] = int(keep * eligible_total)
  say(f"{config.model} on {config.dataset}: {results['parameters']:,} parameters,"
      f" {eligible_total:,} prunable; keeping {results['target_nonzeros']:,}"
      f" (keep_ratio {keep:.4g}, {config.compression:g}x), seed {config.seed}")

  base_vars, base = runner.phase("base", init, momentum_sgd(config.base, spe, runner.eligible),
                                 config.base.epochs)
  base_params = base_vars["params"]
  results["base"] = _summary(base, config.last_k)
  say(f"base: test accuracy {base['final_test_accuracy']:.4f}")

  if "gsm" in config.methods or "lottery" in config.methods:
    results["predicted_shrink_factor"] = runner.predict_shrink()
    results["gsm"], gsm_params = runner.gsm(base_vars)
  if "oneshot" in config.methods or "lottery" in config.methods:
    base_mask = runner.prune_mask(base_params, keep)
  if "oneshot" in config.methods:
    results["oneshot"] = runner.oneshot(base_vars, base_mask)
  if "gradual" in config.methods:
    results["gradual"] = runner.gradual(base_vars)

  if "scratch" in config.methods:
    results["scratch"] = runner.scratch(results["gsm"]["export"])
    timing = structured.speedup_line(results["scratch"]["timing"])
    say(f"the same narrow architecture from scratch:"
        f" {results['scratch']['final_test_accuracy']:.4f} ({timing})")
  if "dense_long" in config.methods:
    results["dense_long"] = runner.dense_long()
    say("the dense model on scratch's schedule:"
        f" {results['dense_long']['final_test_accuracy']:.4f}")

  if "lottery" in config.methods:
    tickets = {"gsm": runner.prune_mask(gsm_params, keep), "magnitude": base_mask}
    results["lottery"] = {}
    for kind, mask in tickets.items():
      results["lottery"][kind] = runner.lottery_ticket(kind, init, mask)
      say(f"lottery ticket from {kind}:"
          f" {results['lottery'][kind]['final_test_accuracy']:.4f}")

  results["seconds"] = time.time() - t_start
  write_json(os.path.join(out_dir, "results.json"), results)
  return results


def _apply_mask(params: PyTree, mask: PyTree) -> PyTree:
  """``params`` with every entry outside ``mask`` set to 0, as :func:`prune` does."""
  return jax.tree_util.tree_map(lambda w, m: jnp.where(m, w, jnp.zeros_like(w)), params, mask)


def load_phase_variables(out_dir: str, phase: str, config: ExperimentConfig) -> Variables:
  """The variables a finished phase (``"base"``, ``"gsm"``, ...) of a run left on disk:
  ``{"params": ...}``, with ``"batch_stats"`` for a model with BatchNorm."""
  path = os.path.join(out_dir, phase, "params.msgpack")
  if not os.path.exists(path):
    raise FileNotFoundError(f"phase {phase!r} has not finished in {out_dir!r}: no {path}")
  model = models.MODELS[config.model](**config.model_options)
  like = dict(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))))
  return _read_variables(os.path.join(out_dir, phase), like)


def load_phase_params(out_dir: str, phase: str, config: ExperimentConfig) -> PyTree:
  """The parameters a finished phase (``"base"``, ``"gsm"``, ...) of a run left on disk."""
  return load_phase_variables(out_dir, phase, config)["params"]
