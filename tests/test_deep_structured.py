"""Structured GSM on the deep networks (ResNet-20, a ViT), at tiny widths on a slice of data:
the groups ranked, exact export with BatchNorm statistics, the narrow model trained from
scratch (Liu et al. 2019), and the sweep's structured cells."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import gsm_optax
from gsm_optax import experiments
from gsm_optax.experiments import PhaseConfig, models, runner, sweep
from gsm_optax.experiments.config import DEEP_PHASES, scratch_phase, with_recipe

RESNET = {"widths": (4, 8, 8), "blocks": 2}
VIT = {"width": 16, "depth": 2, "heads": 2, "mlp_width": 12}
# The runs: one block a stage, one encoder block (each layer more is seconds of compiling).
RESNET_RUN = {"widths": (4, 8, 8), "blocks": 1}
VIT_RUN = {"width": 16, "depth": 1, "heads": 2, "mlp_width": 12}


def _init(model, options):
  return dict(models.MODELS[model](**options).init(jax.random.PRNGKey(0),
                                                   jnp.zeros((1, 28, 28, 1))))


def _members(group):
  return {m.path for m in group.members}


def test_resnet20_groups_are_the_blocks_filters_and_the_stages_streams():
  variables = _init("resnet20", RESNET)
  params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
  groups, budget = models.structured_groups("resnet20", params, model_state=state,
                                            options=RESNET)
  by_name = {g.name: g for g in groups}
  coupling = models.couple_model("resnet20", params, model_state=state, options=RESNET)
  sets = models.width_sets("resnet20", coupling, RESNET)
  assert sorted(sets) == sorted([f"stage{s}" for s in (1, 2, 3)]
                                + [f"block{k}" for k in range(1, 7)])
  assert sorted(sets.values()) == sorted(by_name)  # every group is one of them, once

  def layer(block, k):
    return [f"_BasicBlock_{block}/Conv_{k}/kernel", f"_BasicBlock_{block}/BatchNorm_{k}/scale",
            f"_BasicBlock_{block}/BatchNorm_{k}/bias"]

  for k in range(6):  # a block's inner filters: its first convolution and BatchNorm
    assert _members(by_name[sets[f"block{k + 1}"]]) == set(layer(k, 0))
  # A stage's stream: every convolution that writes to it (the stem, the blocks' second
  # convolutions, the projection shortcut where the stage starts) with its BatchNorm.
  stem = {"Conv_0/kernel", "BatchNorm_0/scale", "BatchNorm_0/bias"}
  assert _members(by_name[sets["stage1"]]) == stem | set(layer(0, 1) + layer(1, 1))
  for s in (2, 3):
    first = 2 * (s - 1)
    assert _members(by_name[sets[f"stage{s}"]]) == set(layer(first, 1) + layer(first, 2)
                                                       + layer(first + 1, 1))
  assert all(g.min_kept == 1 for g in groups)
  # Every layer's MACs scale with some group: the budget is all of the model's MACs,
  # written out here from He et al.'s layers at 28x28, 14x14 and 7x7.
  macs, cin = 28 * 28 * 9 * 1 * 4, 4
  for stage, (width, side) in enumerate(zip((4, 8, 8), (28, 14, 7))):
    for block in range(2):
      macs += side * side * 9 * (cin * width + width * width)  # the block's two 3x3s
      if block == 0 and stage > 0:
        macs += side * side * cin * width
      cin = width
  macs += 8 * 10
  assert budget.total == coupling.macs == macs


def test_vit_groups_are_heads_and_mlp_units():
  params = _init("vit", VIT)["params"]
  groups, budget = models.structured_groups("vit", params, options=VIT)
  coupling = models.couple_model("vit", params, options=VIT)
  sets = models.width_sets("vit", coupling, VIT)
  by_name = {g.name: g for g in groups}
  assert sorted(sets.values()) == sorted(by_name)
  for i in range(2):
    heads = by_name[sets[f"block{i} heads"]]
    assert heads.size == 2 and _members(heads) == {
        f"block{i}/attention/{p}/{k}" for p in ("query", "key", "value") for k in ("kernel",
                                                                                    "bias")}
    mlp = by_name[sets[f"block{i} mlp"]]
    assert mlp.size == 12 and _members(mlp) == {f"block{i}/mlp_in/kernel", f"block{i}/mlp_in/bias"}
  # The residual stream is left whole: the LayerNorms reduce over it.
  stream = coupling.set("patch_embedding")
  assert not stream.prunable and "reduce" in stream.reason
  # The budget: every MAC but the patch embedding's and the head's, which no group scales.
  tokens, width, inner = 49, 16, 2 * 8
  block = (3 * tokens * width * inner + 2 * tokens * tokens * inner + tokens * inner * width
           + 2 * tokens * width * 12)
  assert budget.total == 2 * block
  assert coupling.macs == 2 * block + tokens * 16 * width + width * 10


def _tiny(model, options, **overrides):
  config = experiments.ExperimentConfig(**{
      "model": model, "model_options": options, "dataset": "mnist", "compression": 2.0,
      "structured": True, "budget": "macs", "batch_size": 64, "train_subset": 256,
      "base": PhaseConfig(0.05, 1, (), momentum=0.9, warmup_epochs=0),
      "gsm": PhaseConfig(1e-2, 2, (1,), momentum=0.9, weight_decay=5e-3, warmup_epochs=0),
      "checkpoint_every": 1, "last_k": 1, "timing_repeats": 1, **overrides})
  return experiments.with_recipe(config, "recommended")


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
  """ResNet-20 at half the MACs, widths in multiples of 2: structured GSM, gradual pruning and
  scratch. The base phase (and so scratch, on its optimizer) at a learning rate of 1e-30, below
  every weight's float32 resolution: scratch must end exactly where it started."""
  out = str(tmp_path_factory.mktemp("resnet_structured"))
  config = _tiny("resnet20", RESNET_RUN, methods=("gsm", "gradual", "scratch"), multiple_of=2,
                 base=PhaseConfig(1e-30, 1, (), momentum=0.9, warmup_epochs=0))
  results = experiments.run(config, out, quiet=True)
  exports = {phase: _check_export(out, config, results, phase) for phase in ("gsm", "gradual")}
  return out, config, results, exports


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("vit_structured"))
  config = _tiny("vit", VIT_RUN, methods=("gsm", "scratch"))
  return out, config, experiments.run(config, out, quiet=True)


def _pruned(out, config, phase):
  """The phase's variables pruned as the run prunes them (gradual's are pruned already)."""
  variables = experiments.load_phase_variables(out, phase, config)
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  if phase == "gsm":
    groups, budget = models.structured_groups(config.model, params, model_state=state,
                                              options=config.model_options,
                                              multiple_of=config.multiple_of)
    params = gsm_optax.prune(params, config.keep_ratio, groups=groups, budget=budget,
                             allocation=config.allocation)
  return params, state


def _check_export(out, config, results, phase):
  """The exported model's logits are the masked model's, recomputed here in float64."""
  params, state = _pruned(out, config, phase)
  coupling = models.couple_model(config.model, params, model_state=state,
                                 options=config.model_options)
  small = gsm_optax.narrow(coupling, {"params": params, **state})
  x = runner.load_data(config)[2][:200]
  dense = models.MODELS[config.model](**config.model_options)
  masked = np.asarray(dense.apply({"params": params, **state}, x), np.float64)
  exported = np.asarray(small.apply(small.variables, x), np.float64)
  relative = np.max(np.abs(masked - exported)) / np.max(np.abs(masked))
  report = results[phase]["export"]
  assert relative <= 1e-5 and report["exact"]
  assert report["max_relative_logit_difference"] <= 1e-5
  assert report["macs_exported"] == small.macs < report["macs_dense"] == coupling.macs
  assert set(report["timing"]) == {"1", "256"}
  return small, params, state


def test_resnet_export_is_exact_at_half_the_macs(resnet_run):
  out, config, results, exports = resnet_run  # exports: checked exact by _check_export
  assert set(exports) == {"gsm", "gradual"}
  for phase in ("gsm", "gradual"):
    widths = results[phase]["export"]["kept_widths"]
    # min_kept, rounded up to multiple_of: no set emptied; every width a multiple of 2.
    assert all(w >= 2 and w % 2 == 0 for w in widths.values()), (phase, widths)
  # GSM's budget: half the MACs at most.
  gsm = results["gsm"]["export"]
  assert gsm["macs_exported"] <= 0.5 * gsm["macs_dense"]


def test_batchnorm_statistics_follow_the_channels_through_narrow(resnet_run):
  small, params, state = resnet_run[3]["gsm"]
  flat = traverse_util.flatten_dict(params, sep="/")
  stats = traverse_util.flatten_dict(state["batch_stats"], sep="/")
  narrowed = traverse_util.flatten_dict(small.variables["batch_stats"], sep="/")
  cut = 0
  for path, value in stats.items():
    layer = path.rpartition("/")[0]
    kept = np.flatnonzero((np.asarray(flat[f"{layer}/scale"]) != 0)
                          | (np.asarray(flat[f"{layer}/bias"]) != 0))
    np.testing.assert_array_equal(np.asarray(narrowed[path]), np.asarray(value)[kept])
    cut += value.size - kept.size
  assert cut > 0  # some statistics were cut with their channels
  # The trained statistics, not the initial ones (zeros and ones).
  assert any(np.any((np.asarray(v) != 0) & (np.asarray(v) != 1)) for v in narrowed.values())


def _shapes(tree):
  return jax.tree_util.tree_map(np.shape, tree)


def test_scratch_is_the_gsm_export_architecture_from_fresh_weights(resnet_run):
  out, config, results, exports = resnet_run
  small = exports["gsm"][0]
  scratch = results["scratch"]
  assert scratch["kept_widths"] == results["gsm"]["export"]["kept_widths"]
  options = models.narrow_options("resnet20", RESNET_RUN, scratch["kept_widths"])
  narrow_config = dataclasses.replace(config, model_options=options)
  trained = experiments.load_phase_variables(out, "scratch", narrow_config)
  # The same architecture as the export: every variable has the narrowed one's shape.
  assert _shapes(trained) == _shapes(dict(small.variables))
  assert scratch["macs"] == results["gsm"]["export"]["macs_exported"]
  assert scratch["epochs"] == config.base.epochs + config.gsm.epochs
  # Fresh weights: the narrow model's own initialisation, at the dense model's key (moved by
  # at most ~1e-30 where it is 0, the biases and offsets).
  fresh = models.MODELS["resnet20"](**options).init(
      jax.random.fold_in(jax.random.PRNGKey(config.seed), 0), jnp.zeros((1, 28, 28, 1)))
  for a, b in zip(jax.tree_util.tree_leaves(trained["params"]),
                  jax.tree_util.tree_leaves(fresh["params"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-20)
  exported = jax.tree_util.tree_leaves(small.variables["params"])
  assert not all(np.array_equal(a, b) for a, b in
                 zip(jax.tree_util.tree_leaves(trained["params"]), exported))
  assert set(scratch["timing"]) == {"1", "256"}


def test_vit_structured_run_exports_exactly_and_trains_its_widths(vit_run):
  out, config, results = vit_run
  small, _, _ = _check_export(out, config, results, "gsm")
  widths = results["gsm"]["export"]["kept_widths"]
  assert sorted(widths) == ["block0 heads", "block0 mlp"]
  options = models.narrow_options("vit", VIT_RUN, widths)
  assert options["head_dim"] == 8
  trained = experiments.load_phase_variables(
      out, "scratch", dataclasses.replace(config, model_options=options))
  assert _shapes(trained) == _shapes(dict(small.variables))
  assert results["scratch"]["macs"] == results["gsm"]["export"]["macs_exported"]
  assert 0.0 <= results["scratch"]["final_test_accuracy"] <= 1.0


def test_dense_long_is_the_dense_model_on_the_scratch_schedule(tmp_path):
  """dense_long trains the dense model from the base model's initial weights on scratch's
  schedule: the dense shapes, base + GSM epochs, and the same weights as a phase of that
  schedule built by hand (the base phase itself, one epoch, ends elsewhere)."""
  config = _tiny("vit", VIT_RUN, methods=("dense_long",))
  out = str(tmp_path / "run")
  results = experiments.run(config, out, quiet=True)
  long = results["dense_long"]
  assert long["epochs"] == config.base.epochs + config.gsm.epochs
  assert len(long["history"]) == long["epochs"]
  trained = experiments.load_phase_variables(out, "dense_long", config)
  base = experiments.load_phase_variables(out, "base", config)
  assert _shapes(trained) == _shapes(base)
  schedule = scratch_phase(config.base, config.gsm)
  r = runner.Runner(config, str(tmp_path / "by_hand"), quiet=True)
  expected, _ = r.phase("dense_long", r.init_variables(),
                        runner.momentum_sgd(schedule, r.steps_per_epoch, r.eligible),
                        schedule.epochs)
  for a, b in zip(jax.tree_util.tree_leaves(trained), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(trained),
                                                       jax.tree_util.tree_leaves(base)))


def test_structured_groups_round_the_sets_that_their_multiple_divides():
  """multiple_of reaches every set whose size it divides: all of ResNet-20's at 4 (widths 4,
  8, 8), the ViT's MLP units (12) at 4 but not its 2 heads; it needs a structured run."""
  variables = _init("resnet20", RESNET)
  state = {"batch_stats": variables["batch_stats"]}
  groups, _ = models.structured_groups("resnet20", variables["params"], model_state=state,
                                       options=RESNET, multiple_of=4)
  assert {g.multiple_of for g in groups} == {4}
  groups, _ = models.structured_groups("vit", _init("vit", VIT)["params"], options=VIT,
                                       multiple_of=4)
  assert {(g.size, g.multiple_of) for g in groups} == {(2, 1), (12, 4)}
  with pytest.raises(ValueError, match="multiple_of=8 needs structured=True"):
    experiments.ExperimentConfig(multiple_of=8)
  with pytest.raises(ValueError, match="multiple_of must be an int >= 1; got multiple_of=0"):
    _tiny("resnet20", RESNET, multiple_of=0)


def test_scratch_needs_a_structured_gsm_run():
  with pytest.raises(ValueError, match="gsm"):
    _tiny("resnet20", RESNET, methods=("scratch",))
  with pytest.raises(ValueError, match="structured"):
    _tiny("resnet20", RESNET, methods=("gsm", "scratch"), structured=False, budget="groups")
  with pytest.raises(ValueError, match="resnet20"):
    experiments.ExperimentConfig(model="lenet5", structured=True, methods=("gsm", "scratch"))


def test_scratch_trains_the_base_schedule_over_base_and_gsm_epochs():
  for phases in DEEP_PHASES.values():
    base, gsm = phases["base"], phases["gsm"]
    scratch = scratch_phase(base, gsm)
    assert scratch.epochs == base.epochs + gsm.epochs
    assert (scratch.learning_rate, scratch.momentum, scratch.weight_decay) == (
        base.learning_rate, base.momentum, base.weight_decay)
    fractions = [b / scratch.epochs for b in scratch.boundaries]
    np.testing.assert_allclose(fractions, [b / base.epochs for b in base.boundaries],
                               atol=0.5 / scratch.epochs)


def test_sweep_plans_structured_cells_after_their_sources():
  cells = [c for c in sweep.STRUCTURED_GRID if c[1] in ("resnet20", "vit")]
  assert {(d, m, c) for d, m, c in cells} == {("fashion_mnist", m, 2.0)
                                              for m in ("resnet20", "vit")}
  jobs = sweep.plan(cells, seeds=[0], methods=["recommended", "gradual", "scratch"],
                    structured=True)
  unstructured = sweep.plan(sweep.GRID, seeds=[0], methods=["recommended"])
  bases = [j for j in jobs if j.method == "base"]
  # The same base models (jobs and directories) as the unstructured deep cells.
  assert {j.directory("out") for j in bases} <= {j.directory("out") for j in unstructured
                                                 if j.method == "base"}
  assert len(bases) == 2 and len(jobs) == 2 + 2 * 3
  structured_dirs = {j.directory("out") for j in jobs if j.method != "base"}
  assert len(structured_dirs) == 6
  assert not structured_dirs & {j.directory("out") for j in unstructured}
  for job in jobs:
    if job.method == "base":
      continue
    assert job.structured
    needs = job.needs()
    assert needs[0] == sweep.Job(job.dataset, job.model, 1.0, 0, "base")
    if job.method == "scratch":
      assert needs[1:] == [dataclasses.replace(job, method=sweep.SCRATCH_SOURCE)]
    else:
      assert needs[1:] == []
    config = sweep.sweep_config(job.dataset, job.model, job.compression, 0, job.method,
                                structured=True)
    phases = DEEP_PHASES[job.model]
    assert config.structured and config.budget == "macs" and config.keep_ratio == 0.5
    assert config.multiple_of == 8  # the export's widths in multiples of 8 (width_speed)
    assert (config.base, config.gsm) == (phases["base"], phases["gsm"])
    if job.method == "gradual":
      assert config.methods == ("gradual",)
    else:  # GSM with the recommended recipe; scratch trains the widths of that run
      recommended = with_recipe(config, "recommended")
      assert config == recommended and config.importance == "magnitude"
      assert config.methods == (("gsm", "scratch") if job.method == "scratch" else ("gsm",))
  with pytest.raises(ValueError, match="structured"):
    sweep.sweep_config("fashion_mnist", "resnet20", 2.0, 0, "scratch")
  with pytest.raises(ValueError, match="oneshot"):
    sweep.sweep_config("fashion_mnist", "resnet20", 2.0, 0, "oneshot", structured=True)


@pytest.mark.parametrize("cell", [c for c in sweep.STRUCTURED_GRID if c[1] in DEEP_PHASES])
def test_sweep_dense_long_needs_only_the_base_and_runs_no_gsm(cell):
  """dense_long (the control of scratch) is the base phase's model and schedule of its cell,
  needs only the cell's base model (not a GSM run) and is no recipe: the summary reads its
  final accuracy."""
  dataset, model, compression = cell
  base, job = sweep.plan([cell], [3], ["dense_long"], structured=True)
  assert base.method == "base" and job.needs() == [base]
  config = sweep.sweep_config(dataset, model, compression, 3, "dense_long", structured=True)
  assert config.methods == ("dense_long",)
  assert (config.base, config.gsm, config.seed) == (DEEP_PHASES[model]["base"],
                                                    DEEP_PHASES[model]["gsm"], 3)
  assert not sweep.is_recipe("dense_long")
  with pytest.raises(ValueError, match="dense_long.*structured=True"):
    sweep.sweep_config(dataset, model, compression, 3, "dense_long")


def test_sweep_stops_when_scratch_has_no_gsm_run(tmp_path, capsys):
  out = str(tmp_path)
  base = sweep.Job("fashion_mnist", "vit", 1.0, 0, "base")
  os.makedirs(os.path.join(base.directory(out), "base"))
  open(os.path.join(base.directory(out), "base", "result.json"), "w").close()
  job = sweep.Job("fashion_mnist", "vit", 2.0, 0, "scratch", structured=True)
  sweep.run_sweep([job], out, cores=[0])
  said = capsys.readouterr().out
  assert "scratch not started" in said and "structured_seed0 recommended" in said
