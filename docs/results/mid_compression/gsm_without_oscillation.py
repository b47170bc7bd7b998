"""GSM whose dropped weights shrink without oscillating, at the rate of GSM's own envelope.

    gsm-optax sweep --out runs/mid --cores 0 --cells 4 --seeds 1 --methods recommended gradual
    python docs/results/mid_compression/gsm_without_oscillation.py runs/mid --seed 1

With the recipe's passive decay (100x the weight decay) and momentum 0.99, a weight outside the
top-Q is an under-damped oscillator: ``lr * (eta + eta_p) = 2e-3`` is far above critical damping
(``(1 - sqrt(beta))**2 = 2.5e-5``), so it swings through zero with an envelope that falls by
``sqrt(beta)`` a step (:func:`gsm_optax.decay_shrink_factor`). Gradual magnitude pruning sets the
same weights to zero at once. This runs one more method in a finished sweep cell (LeNet-300-100
30x Fashion-MNIST by default), from the cell's base model: the recommended recipe with one
change, a weight outside the top-Q has its momentum cleared and is multiplied by ``sqrt(beta)``
each step, so that it falls as fast as GSM's envelope but monotonically. Everything else
(ranking by magnitude, the cubic anneal, the schedule, the kept weights' Nesterov momentum) is
GSM's. Before training, the script checks its transformation against ``gsm_optax.gsm`` with the
change switched off (same updates over a few steps, on the cell's model).

If the training loss lands on gradual pruning's, the oscillation is what costs GSM its
0.005-0.009 of training loss at this cell; if it stays on GSM's, it is not.
"""

import json
import os
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import gsm_optax
from gsm_optax.experiments import models, runner, sweep
from gsm_optax.experiments.config import ExperimentConfig
from gsm_optax.experiments.training import accuracy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mid_compression import _loss, extra_method_job  # noqa: E402  (the sibling analysis)


class _MomentumState(NamedTuple):
  count: jax.Array
  trace: Any


def _momentum_without_oscillation(momentum: float, learning_rate: optax.Schedule,
                                  eligible: Any, smooth: bool = True
                                  ) -> optax.GradientTransformationExtraArgs:
  """``optax.trace(momentum, nesterov=True)`` for the weights in the top-Q; outside it (an
  eligible weight whose update is not its gradient), momentum cleared and a step that multiplies
  the weight by ``sqrt(momentum)`` (when ``smooth``; else GSM's own momentum, for the check).

  The top-Q is read from the selection stage's state, passed as ``kept`` (a tree of booleans).
  """
  factor = 1.0 - momentum ** 0.5

  def init_fn(params):
    return _MomentumState(jnp.zeros([], jnp.int32),
                          jax.tree_util.tree_map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None, *, kept=None, **extra_args):
    del extra_args
    lr = learning_rate(state.count)
    new_trace = jax.tree_util.tree_map(lambda g, t: momentum * t + g, updates, state.trace)
    out = jax.tree_util.tree_map(lambda g, t: g + momentum * t, updates, new_trace)
    if smooth:
      flags = jax.tree_util.tree_leaves(eligible(params))
      leaves, treedef = jax.tree_util.tree_flatten(out)
      traces = treedef.flatten_up_to(new_trace)
      ws, ks = treedef.flatten_up_to(params), treedef.flatten_up_to(kept)
      new_out, new_tr = [], []
      for o, t, w, k, e in zip(leaves, traces, ws, ks, flags):
        if e:
          shrink = jnp.where(lr > 0, factor * w / jnp.maximum(lr, 1e-30), 0.0).astype(o.dtype)
          o, t = jnp.where(k, o, shrink), jnp.where(k, t, 0.0)
        new_out.append(o)
        new_tr.append(t)
      out = jax.tree_util.tree_unflatten(treedef, new_out)
      new_trace = jax.tree_util.tree_unflatten(treedef, new_tr)
    return out, _MomentumState(optax.safe_increment(state.count), new_trace)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def variant_optimizer(config: ExperimentConfig, steps_per_epoch: int,
                      smooth: bool = True) -> optax.GradientTransformationExtraArgs:
  """The recommended GSM phase of ``config`` with the dropped weights' oscillation removed."""
  phase = config.gsm
  assert config.importance == "magnitude" and not config.importance_ema, config
  assert phase.nesterov and not config.passive_weight_decay_begin_epoch, config
  eligible = models.eligible(config.model)
  keep_ratio = gsm_optax.cubic_keep_ratio_schedule(
      config.keep_ratio, begin_step=0, end_step=config.anneal_epochs * steps_per_epoch)
  selection = gsm_optax.keep_top_gradients(
      keep_ratio, importance="magnitude", eligible=eligible,
      passive_weight_decay=config.passive_weight_decay)
  decay = optax.add_decayed_weights(phase.weight_decay, mask=eligible)
  schedule = phase.schedule(steps_per_epoch)
  moment = _momentum_without_oscillation(phase.momentum, schedule, eligible, smooth)
  scale = optax.scale_by_learning_rate(schedule)

  def init_fn(params):
    return (selection.init(params), decay.init(params), moment.init(params), scale.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    s_sel, s_dec, s_mom, s_sc = state
    u, s_sel = selection.update(updates, s_sel, params)
    # The magnitude ranking's top-Q: |w| at or above the last kept score (ties have measure 0).
    threshold = s_sel.threshold
    kept = jax.tree_util.tree_map(lambda w: jnp.abs(w) >= threshold, params)
    u, s_dec = decay.update(u, s_dec, params)
    u, s_mom = moment.update(u, s_mom, params, kept=kept)
    u, s_sc = scale.update(u, s_sc, params)
    return u, (s_sel, s_dec, s_mom, s_sc)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_against_gsm(config: ExperimentConfig, params: Any, steps_per_epoch: int,
                       steps: int = 5) -> float:
  """Largest difference of the updates of ``variant_optimizer(smooth=False)`` and the runner's
  own ``gsm_optax.gsm`` over a few steps on random gradients."""
  ours, theirs = variant_optimizer(config, steps_per_epoch, smooth=False), runner.gsm_optimizer(
      config, steps_per_epoch)
  s1, s2 = ours.init(params), theirs.init(params)
  worst = 0.0
  key = jax.random.key(0)
  for _ in range(steps):
    key, sub = jax.random.split(key)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    grads = jax.tree_util.tree_unflatten(treedef, [
        jax.random.normal(k, w.shape, w.dtype)
        for k, w in zip(jax.random.split(sub, len(leaves)), leaves)])
    u1, s1 = ours.update(grads, s1, params)
    u2, s2 = theirs.update(grads, s2, params)
    worst = max(worst, max(float(jnp.max(jnp.abs(a - b)))
                           for a, b in zip(jax.tree_util.tree_leaves(u1),
                                           jax.tree_util.tree_leaves(u2))))
    params = optax.apply_updates(params, u2)
  return worst


def _check_kept(config: ExperimentConfig, params: Any) -> tuple[int, int]:
  """How many eligible weights ``|w| >= threshold`` keeps, and how many the selection kept, at
  the cell's keep ratio (random gradients: the magnitude ranking does not read them)."""
  eligible = models.eligible(config.model)
  selection = gsm_optax.keep_top_gradients(config.keep_ratio, importance="magnitude",
                                           eligible=eligible)
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  _, state = selection.update(grads, selection.init(params), params)
  kept = sum(int(jnp.sum(jnp.abs(w) >= state.threshold))
             for w, e in zip(jax.tree_util.tree_leaves(params),
                             jax.tree_util.tree_leaves(eligible(params))) if e)
  return kept, int(state.keep_count)


def main() -> None:
  directory, cell, seed = extra_method_job(__doc__.splitlines()[0], "gsm_without_oscillation")
  out = os.path.dirname(os.path.dirname(directory))
  config = sweep.sweep_config(*cell, seed, "recommended")
  probe = runner.Runner(config, os.path.join(out, "_analysis"), quiet=True)
  spe = probe.x_train.shape[0] // config.batch_size
  base_params = runner.load_phase_params(directory, "base", config)
  worst = _check_against_gsm(config, base_params, spe)
  print(f"check: the variant with smooth=False against gsm_optax.gsm, largest update"
        f" difference over 5 steps: {worst:.3g}")
  assert worst <= 1e-6, worst
  kept_check = _check_kept(config, base_params)
  print(f"check: |w| >= threshold keeps {kept_check[0]} weights, the selection {kept_check[1]}")
  assert kept_check[0] == kept_check[1], kept_check
  runner.gsm_optimizer = lambda c, s, groups=None, budget="groups": variant_optimizer(c, s)
  result = runner.run(config, directory, quiet=True)
  params = probe.prune(runner.load_phase_params(directory, "gsm", config), config.keep_ratio)
  figures = {
      "check_max_update_difference": worst,
      "check_kept_count": kept_check,
      "accuracy_before_prune": result["gsm"]["accuracy_before_prune"],
      "accuracy_after_prune": result["gsm"]["accuracy_after_prune"],
      "train_loss": _loss(probe.model, params, probe.x_train, probe.y_train),
      "train_accuracy": accuracy(probe.model.apply, params, probe.x_train, probe.y_train),
  }
  print(json.dumps(figures, indent=1))
  with open(os.path.join(directory, "without_oscillation.json"), "w") as fh:
    json.dump(figures, fh, indent=1)

if __name__ == "__main__":
  main()
