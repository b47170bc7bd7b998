"""The MNIST experiment pipeline end to end, on a small slice of the data."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsm_optax import experiments, hold_mask, prune_mask, sparsity_report
from gsm_optax.experiments import PhaseConfig
from gsm_optax.experiments.runner import Runner, momentum_sgd


def tiny_config(**overrides):
  return experiments.ExperimentConfig(**{
      "model": "lenet300",
      "compression": 60.0,
      "batch_size": 64,
      "train_subset": 1024,
      "base": PhaseConfig(3e-2, 2, (1,), momentum=0.9, warmup_epochs=1),
      "gsm": PhaseConfig(1e-2, 3, (2,), momentum=0.99, nesterov=True, weight_decay=1e-2,
                         warmup_epochs=1),
      "checkpoint_every": 1,
      "last_k": 2,
      **overrides,
  })


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("run"))
  return out, experiments.run(tiny_config(), out, quiet=True)


def test_every_method_reaches_the_budget(full_run):
  out, results = full_run
  q = results["target_nonzeros"]
  assert q == int(results["eligible_weights"] / 60.0)
  assert results["gsm"]["nonzeros"] <= q  # exactly Q unless some kept weights are exactly 0
  assert results["gsm"]["nonzeros"] >= q - 5
  assert q - 5 <= results["gradual"]["nonzeros"] <= q
  for name in ("oneshot", "gradual", "lottery_gsm", "lottery_magnitude"):
    with open(os.path.join(out, name, "result.json")) as f:
      phase = json.load(f)
    assert len(phase["history"]) == phase["epochs"]
  for name in ("oneshot", "gradual", "lottery_gsm", "lottery_magnitude"):
    report = sparsity_report(experiments.load_phase_params(out, name, tiny_config()))
    assert q - 5 <= report.eligible_nonzeros <= q, name  # Q, less the kept weights at exactly 0
  for key in ("accuracy_before_prune", "accuracy_after_prune"):
    assert 0.0 <= results["gsm"][key] <= 1.0
  assert results["base"]["final_test_accuracy"] > 0.5  # learning, even on 1K images
  layers = [leaf for leaf in results["gsm"]["layers"]["leaves"] if leaf["eligible"]]
  assert sum(leaf["nonzeros"] for leaf in layers) == results["gsm"]["nonzeros"]
  assert 0.0 < results["predicted_shrink_factor"] < 1.0
  assert 0.0 <= results["gsm"]["removed_l2_fraction"] <= 1.0
  with open(os.path.join(out, "results.json")) as f:
    assert json.load(f)["gsm"]["nonzeros"] == results["gsm"]["nonzeros"]


def test_lottery_tickets_start_from_the_initial_weights(full_run, tmp_path):
  """GSM's ticket is its mask on the initial weights, retrained: the same retraining, started
  here from the initial weights (the base phase's starting point) under that mask, ends at the
  saved ticket bit for bit, and the pruned weights stayed at 0."""
  out, results = full_run
  config = tiny_config()
  gsm_params = experiments.load_phase_params(out, "gsm", config)
  ticket = experiments.load_phase_params(out, "lottery_gsm", config)
  mask = prune_mask(gsm_params, 1 / 60.0)
  for m, t in zip(jax.tree_util.tree_leaves(mask), jax.tree_util.tree_leaves(ticket)):
    assert not np.any(np.asarray(t)[~np.asarray(m)])  # the pruned weights stayed at 0

  runner = Runner(config, str(tmp_path), quiet=True)
  initial = runner.init_variables()["params"]
  base = experiments.load_phase_params(out, "base", config)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(initial),
                                                      jax.tree_util.tree_leaves(base)))
  start = jax.tree_util.tree_map(lambda w, m: jnp.where(m, w, 0), initial, mask)
  tx = hold_mask(momentum_sgd(config.base, runner.steps_per_epoch, runner.eligible), mask)
  runner.phase("lottery_gsm", {"params": start}, tx, config.base.epochs)
  again = experiments.load_phase_params(str(tmp_path), "lottery_gsm", config)
  for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(ticket)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_interrupted_phase_resumes_bit_for_bit(full_run, tmp_path):
  out, results = full_run
  resumed = str(tmp_path / "resumed")
  shutil.copytree(out, resumed)
  # Pretend the GSM phase was killed after its second epoch's checkpoint.
  gsm_dir = os.path.join(resumed, "gsm")
  os.remove(os.path.join(gsm_dir, "result.json"))
  os.remove(os.path.join(gsm_dir, "params.msgpack"))
  ckpts = os.path.join(gsm_dir, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())
  shutil.rmtree(os.path.join(ckpts, str(steps[-1])))
  for name in ("oneshot", "gradual", "lottery_gsm", "lottery_magnitude"):
    shutil.rmtree(os.path.join(resumed, name))
  logged = []
  again = experiments.run(tiny_config(methods=("gsm",)), resumed, quiet=True, log=logged.append)
  assert any("resuming from the checkpoint of epoch 2" in line for line in logged), logged
  assert any("base: finished earlier" in line for line in logged), logged
  a = experiments.load_phase_params(resumed, "gsm", tiny_config())
  b = experiments.load_phase_params(out, "gsm", tiny_config())
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert again["gsm"]["accuracy_after_prune"] == results["gsm"]["accuracy_after_prune"]


def test_config_errors_name_the_argument():
  with pytest.raises(ValueError, match="compression"):
    tiny_config(compression=0.5)
  with pytest.raises(ValueError, match="model"):
    tiny_config(model="resnet")
  with pytest.raises(ValueError, match="methods"):
    tiny_config(methods=("gsm", "snip"))
  with pytest.raises(ValueError, match="gsm.epochs"):
    tiny_config(gsm=dataclasses.replace(tiny_config().gsm, epochs=0))


def test_structured_run_exports_a_narrower_model(tmp_path):
  """Structured GSM and structured gradual pruning keep exactly Q groups, and the exported
  narrow model gives the masked dense model's logits and accuracy."""
  # Light momentum and a strong passive decay: in its 48 steps the passive groups reach 0, as
  # they do over a full run's thousands of steps.
  config = tiny_config(compression=3.0, structured=True, methods=("gsm", "gradual"),
                       importance_ema=0.99, passive_weight_decay=0.5,
                       gsm=PhaseConfig(0.1, 3, (2,), momentum=0.5, weight_decay=1e-2,
                                       warmup_epochs=1))
  results = experiments.run(config, str(tmp_path), quiet=True)
  q = int(1184 / 3)  # 784 pixels + 300 + 100 hidden units, as input features
  assert sum(results["gsm"]["kept_groups"].values()) == q
  assert results["gsm"]["accuracy_after_prune"] > 0.5
  uniform = results["gradual"]["kept_groups"]  # a third of each layer
  assert uniform == {"fc1 inputs": 784 // 3, "fc2 inputs": 100, "fc3 inputs": 100 // 3}
  for method in ("gsm", "gradual"):
    kept = results[method]["kept_groups"]
    report = results[method]["export"]
    widths = report["kept_widths"]
    # Every kept row has a non-zero entry, and a unit is exported when its row is kept.
    assert widths["input pixels"] == kept["fc1 inputs"]
    assert widths["fc1"] == kept["fc2 inputs"] and widths["fc2"] == kept["fc3 inputs"]
    assert report["max_logit_difference"] < 1e-4
    assert report["accuracy_exported"] == report["accuracy_masked"]
    assert report["macs_exported"] == (widths["input pixels"] * widths["fc1"]
                                       + widths["fc1"] * widths["fc2"] + widths["fc2"] * 10)
    assert set(report["timing"]) == {"1", "256"}
  with open(os.path.join(tmp_path, "results.json")) as f:
    assert json.load(f)["config"]["structured"]
