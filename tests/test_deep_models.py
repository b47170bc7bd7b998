"""The deep networks of the experiments (ResNet-20, a ViT): their layers, what they prune, and
the runner's handling of BatchNorm statistics and dropout, at tiny widths on a slice of data."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from gsm_optax import experiments, prune_mask
from gsm_optax.experiments import PhaseConfig, models
from gsm_optax.experiments.training import TrainState, accuracy, make_train_epoch


def _kernel_sizes(params, mask):
  flat = traverse_util.flatten_dict(params, sep="/")
  chosen = traverse_util.flatten_dict(mask, sep="/")
  return {k: v.size for k, v in flat.items() if chosen[k]}


def test_resnet20_layers_and_prunable_weights():
  variables = models.ResNet20().init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  params = variables["params"]
  kernels = _kernel_sizes(params, models.eligible("resnet20")(params))
  # He et al.'s CIFAR ResNet (6n + 2 layers, n = 3) written out: the stem, two 3x3 convolutions
  # per block, a 1x1 projection where a stage starts at half the resolution, the classifier.
  expected, cin = [3 * 3 * 1 * 16], 16
  for width in (16, 32, 64):
    for _ in range(3):
      expected += [9 * cin * width, 9 * width * width]
      if cin != width:
        expected.append(cin * width)
      cin = width
  expected.append(64 * 10)
  assert len(kernels) == len(expected) == 19 + 2 + 1
  assert sum(kernels.values()) == sum(expected) == 270_608
  assert all(k.endswith("kernel") for k in kernels)
  # Every convolution is followed by a BatchNorm whose statistics the model keeps.
  stats = traverse_util.flatten_dict(variables["batch_stats"], sep="/")
  assert len([k for k in stats if k.endswith("mean")]) == 19 + 2
  logits = models.ResNet20().apply(variables, jnp.zeros((3, 28, 28)))
  assert logits.shape == (3, 10)


def test_vit_prunes_its_encoder_kernels_only():
  model = models.ViT(width=32, depth=2, heads=4, mlp_width=48)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
  kernels = _kernel_sizes(params, models.eligible("vit")(params))
  # Per block: query, key, value and out (width x width each) and the MLP's two kernels.
  assert sum(kernels.values()) == 2 * (4 * 32 * 32 + 2 * 32 * 48)
  assert not any(k.startswith(("patch_embedding", "head", "position_embedding")) for k in kernels)
  assert params["position_embedding"].shape == (1, 49, 32)  # 4x4 patches of 28x28
  # The attention's query/key/value biases have rank 2, and are not pruned.
  assert params["block0"]["attention"]["query"]["bias"].shape == (4, 8)
  assert not any(k.endswith("bias") for k in kernels)


def test_dropout_draws_a_new_mask_every_step():
  """Identical images: the permutation cannot change anything, only dropout's RNG can."""
  x = jnp.broadcast_to(jax.random.normal(jax.random.PRNGKey(0), (1, 28, 28, 1)), (64, 28, 28, 1))
  y = jnp.zeros(64, jnp.int32)

  def train(dropout, seed):
    model = models.ViT(width=16, depth=1, heads=2, mlp_width=16, dropout=dropout)
    params = model.init(jax.random.PRNGKey(1), x[:1])["params"]
    state = TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.1))
    state, _ = make_train_epoch(16)(state, x, y, jax.random.PRNGKey(seed))
    return model, state

  same = [train(0.0, s)[1].params for s in (1, 2)]
  for u, v in zip(*(jax.tree_util.tree_leaves(p) for p in same)):
    np.testing.assert_array_equal(u, v)
  model, a = train(0.5, 1)
  _, b = train(0.5, 2)
  _, again = train(0.5, 1)
  differ = jax.tree_util.tree_map(lambda u, v: not np.array_equal(u, v), a.params, b.params)
  assert any(jax.tree_util.tree_leaves(differ))
  for u, v in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(again.params)):
    np.testing.assert_array_equal(u, v)  # a seed gives the same masks
  # Evaluation runs without dropout: the same logits twice.
  logits = [model.apply({"params": a.params}, x[:2]) for _ in range(2)]
  np.testing.assert_array_equal(*logits)


def _tiny(model, **overrides):
  options = {"resnet20": {"widths": (4, 8, 8), "blocks": 1},
             "vit": {"width": 16, "depth": 1, "heads": 2, "mlp_width": 16, "dropout": 0.1}}
  return experiments.ExperimentConfig(**{
      "model": model, "model_options": options[model], "dataset": "mnist",
      "compression": 5.0, "batch_size": 64, "train_subset": 512,
      "base": PhaseConfig(0.05, 2, (1,), momentum=0.9, warmup_epochs=1),
      "gsm": PhaseConfig(1e-2, 2, (1,), momentum=0.98, weight_decay=5e-3, warmup_epochs=1),
      "checkpoint_every": 1, "last_k": 1, **overrides})


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("resnet"))
  config = experiments.with_recipe(_tiny("resnet20"), "recommended")
  return out, config, experiments.run(config, out, quiet=True)


def test_batchnorm_statistics_are_trained_saved_and_used(resnet_run):
  out, config, results = resnet_run
  init = models.MODELS["resnet20"](**config.model_options).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  x, y = experiments.runner.load_data(config)[2:]
  for phase in ("base", "gsm", "oneshot", "gradual", "lottery_gsm"):
    variables = experiments.load_phase_variables(out, phase, config)
    assert os.path.exists(os.path.join(out, phase, "model_state.msgpack"))
    means = [np.asarray(v) for v in jax.tree_util.tree_leaves(variables["batch_stats"])]
    fresh = [np.asarray(v) for v in jax.tree_util.tree_leaves(init["batch_stats"])]
    assert any(not np.array_equal(a, b) for a, b in zip(means, fresh)), phase
    # The logged accuracy is the model's with its running statistics, not the batch's.
    with open(os.path.join(out, phase, "result.json")) as f:
      logged = json.load(f)["final_test_accuracy"]
    model = models.MODELS["resnet20"](**config.model_options)
    running = {"batch_stats": variables["batch_stats"]}
    got = accuracy(model.apply, variables["params"], x, y, running)
    assert got == logged, phase


def test_deep_run_prunes_only_its_kernels_to_the_budget(resnet_run):
  out, config, results = resnet_run
  q = results["target_nonzeros"]
  gsm = experiments.load_phase_variables(out, "gsm", config)["params"]
  mask = prune_mask(gsm, config.keep_ratio, eligible=models.eligible("resnet20"))
  kept = {k: int(np.sum(m)) for k, m in traverse_util.flatten_dict(mask, sep="/").items()
          if k.endswith("kernel")}
  assert sum(kept.values()) == q  # exactly Q kernel weights
  assert results["gsm"]["nonzeros"] <= q and results["gradual"]["nonzeros"] <= q
  assert results["prunable"] == models.PRUNABLE["resnet20"]
  ticket = experiments.load_phase_variables(out, "lottery_gsm", config)["params"]
  flat_t = traverse_util.flatten_dict(ticket, sep="/")
  flat_m = traverse_util.flatten_dict(mask, sep="/")
  for k, m in flat_m.items():
    if k.endswith("kernel"):
      assert not np.any(np.asarray(flat_t[k])[~np.asarray(m)]), k  # held at 0
    else:
      assert np.all(np.asarray(m)), k  # biases and BatchNorm's parameters are never pruned
  assert 0.0 <= results["gsm"]["accuracy_after_prune"] <= 1.0


def test_deep_run_resumes_with_its_batchnorm_statistics(resnet_run, tmp_path):
  out, config, results = resnet_run
  resumed = str(tmp_path / "resumed")
  shutil.copytree(out, resumed)
  gsm_dir = os.path.join(resumed, "gsm")
  for name in ("result.json", "params.msgpack", "model_state.msgpack"):
    os.remove(os.path.join(gsm_dir, name))
  ckpts = os.path.join(gsm_dir, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())
  shutil.rmtree(os.path.join(ckpts, str(steps[-1])))  # killed after the first epoch
  logged = []
  experiments.run(dataclasses.replace(config, methods=("gsm",)), resumed, quiet=True,
                  log=logged.append)
  assert any("resuming from the checkpoint of epoch 1" in line for line in logged), logged
  a = experiments.load_phase_variables(resumed, "gsm", config)
  b = experiments.load_phase_variables(out, "gsm", config)
  for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_vit_run_with_dropout(tmp_path):
  config = experiments.with_recipe(_tiny("vit", methods=("gsm", "gradual")), "recommended")
  results = experiments.run(config, str(tmp_path), quiet=True)
  assert results["eligible_weights"] == 4 * 16 * 16 + 2 * 16 * 16
  assert results["gsm"]["nonzeros"] <= results["target_nonzeros"]
  pos = experiments.load_phase_variables(str(tmp_path), "gsm", config)["params"]
  assert np.count_nonzero(np.asarray(pos["position_embedding"])) == 49 * 16
  assert not os.path.exists(os.path.join(tmp_path, "gsm", "model_state.msgpack"))
