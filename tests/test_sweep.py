"""The recipe sweep: its grid plan, its schedule, recipes as settings, and its summary table."""

import dataclasses
import glob
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import gsm_optax
from gsm_optax.experiments import models, runner, sweep, sweep_cli
from gsm_optax.experiments.config import DEEP_PHASES, PhaseConfig, paper_config, with_recipe


def test_plan_trains_each_base_once_before_its_methods():
  cells = [("mnist", "lenet300", 10.0), ("mnist", "lenet300", 60.0),
           ("fashion_mnist", "lenet5", 20.0)]
  jobs = sweep.plan(cells, seeds=[0, 1], methods=["paper", "gradual"])
  bases = [j for j in jobs if j.method == "base"]
  # One base per dataset, model and seed, shared by every compression of that model.
  assert sorted((j.dataset, j.model, j.seed) for j in bases) == sorted(
      [("mnist", "lenet300", 0), ("mnist", "lenet300", 1),
       ("fashion_mnist", "lenet5", 0), ("fashion_mnist", "lenet5", 1)])
  first_method = min(i for i, j in enumerate(jobs) if j.method != "base")
  assert all(j.method == "base" for j in jobs[:first_method])
  assert len(jobs) == len(bases) + len(cells) * 2 * 2
  dirs = {j.directory("out") for j in jobs}
  assert len(dirs) == len(jobs)  # no two jobs write to the same place


def test_sweep_schedule_keeps_the_authors_total_decay():
  """4x fewer GSM epochs and a 4x weight decay: the decay summed over the steps up to the first
  drop (sum lr * eta) is the authors', and a passive weight's envelope
  (gsm_optax.decay_shrink_factor) falls at least as far."""
  ours = sweep.sweep_config("mnist", "lenet300", 60.0, 0, "paper")
  paper = paper_config("lenet300", 60.0)
  spe = 234

  def summed(phase):
    steps = phase.boundaries[0] * spe
    schedule = phase.schedule(spe)
    return phase.weight_decay * math.fsum(float(schedule(t)) for t in range(0, steps, 7)) * 7

  def envelope(phase):
    return gsm_optax.decay_shrink_factor(phase.schedule(spe), phase.boundaries[0] * spe,
                                         momentum=phase.momentum, weight_decay=phase.weight_decay,
                                         nesterov=phase.nesterov)

  assert ours.gsm.epochs * 4 == paper.gsm.epochs
  np.testing.assert_allclose(summed(ours.gsm), summed(paper.gsm), rtol=0.05)
  assert envelope(ours.gsm) <= envelope(paper.gsm) < 1e-6


def test_full_schedule_is_the_authors():
  full = sweep.sweep_config("mnist", "lenet300", 60.0, 2, "recommended", schedule="full")
  paper = paper_config("lenet300", 60.0)
  assert (full.base, full.gsm) == (paper.base, paper.gsm)
  assert full == with_recipe(dataclasses.replace(
      paper, seed=2, methods=("gsm",), checkpoint_every=10, last_k=5), "recommended")
  # The plan carries the schedule to every job (a full-schedule sweep gets its own --out).
  jobs = sweep.plan([("mnist", "lenet300", 60.0)], [0], ["paper"], schedule="full")
  assert {j.schedule for j in jobs} == {"full"}
  with pytest.raises(ValueError, match="schedule='long'"):
    sweep.sweep_config("mnist", "lenet300", 60.0, 0, "paper", schedule="long")


@pytest.mark.parametrize("method", ["paper", "fixed", "late", "magnitude_short", "gradual"])
def test_methods_differ_only_in_the_gsm_update(method):
  config = sweep.sweep_config("fashion_mnist", "lenet300", 10.0, 1, method)
  paper = sweep.sweep_config("fashion_mnist", "lenet300", 10.0, 1, "paper")
  assert (config.base, config.gsm, config.seed, config.dataset) == (
      paper.base, paper.gsm, paper.seed, paper.dataset)
  assert config.methods == (("gradual",) if method == "gradual" else ("gsm",))


ALLOCATION_CANDIDATES = [m for m in sweep.STRUCTURED_ONLY if sweep.is_recipe(m)]


@pytest.mark.parametrize("cell", sweep.STRUCTURED_GRID)
@pytest.mark.parametrize("candidate", ALLOCATION_CANDIDATES)
def test_allocation_candidates_differ_from_the_recipe_only_in_their_allocation(
    cell, candidate, capsys):
  """The structured candidates (the allocations the default was chosen among, but the one it
  uses) are the cell's recommended run with another allocation: one setting apart, so that the
  runs decide what each is worth; the recommended run's is the library's recipe's."""
  dataset, model, compression = cell
  recommended = sweep.sweep_config(dataset, model, compression, 1, "recommended",
                                   structured=True).to_dict()
  other = sweep.sweep_config(dataset, model, compression, 1, candidate,
                             structured=True).to_dict()
  assert recommended["allocation"] == gsm_optax.recipes.STRUCTURED_ALLOCATION
  assert other["allocation"] == sweep.METHODS[candidate]["allocation"] != recommended["allocation"]
  assert {k for k in other if other[k] != recommended[k]} == {"allocation"}
  # Unstructured, the recipe ranks weights in one ranking, and a candidate means nothing.
  assert sweep.sweep_config(dataset, model, compression, 1, "recommended").allocation == "global"
  with pytest.raises(ValueError, match=f"'{candidate}' is for structured cells only"):
    sweep.sweep_config(dataset, model, compression, 1, candidate)
  with pytest.raises(SystemExit):
    sweep_cli.main(["--summary", "--methods", candidate])
  assert f"{candidate}: structured runs only" in capsys.readouterr().err


def test_allocation_other_than_global_needs_a_structured_config():
  for allocation in set(gsm_optax.grouping.ALLOCATIONS) - {"global"}:
    with pytest.raises(ValueError, match=f"allocation='{allocation}' needs structured=True"):
      dataclasses.replace(paper_config("lenet300"), allocation=allocation)


def test_recipe_settings_scale_with_the_schedule():
  config = sweep.sweep_config("mnist", "lenet300", 60.0, 0, "paper")
  late = with_recipe(config, {"anneal_fraction": 0.5, "passive_weight_decay_factor": 3.0,
                                     "passive_from_anneal_end": True, "importance": "magnitude",
                                     "importance_ema": 0.9})
  first_drop = config.gsm.boundaries[0]
  assert late.anneal_epochs == round(0.5 * first_drop)
  assert late.passive_weight_decay_begin_epoch == late.anneal_epochs
  assert late.passive_weight_decay == pytest.approx(3.0 * config.gsm.weight_decay)
  assert (late.importance, late.importance_ema) == ("magnitude", 0.9)
  assert with_recipe(config, "paper") == config
  with pytest.raises(ValueError, match="passive_weight_decay"):
    with_recipe(config, {"passive_weight_decay": 1e-3})  # a factor, not an absolute decay
  with pytest.raises(ValueError, match="recipe"):
    with_recipe(config, "fancy")
  with pytest.raises(ValueError, match="importance"):
    with_recipe(config, {"importance": "hessian"})


def _write_result(out, cell, method, before, after, base):
  directory = os.path.join(out, cell, method)
  os.makedirs(directory)
  result = {"base": {"final_test_accuracy": base,
                     "history": [{"epoch": 1, "train_seconds": 1.0, "test_accuracy": base}]}}
  if not sweep.is_recipe(method):
    result[method] = {"final_test_accuracy": after}
  else:
    result["gsm"] = {"accuracy_before_prune": before, "accuracy_after_prune": after}
  with open(os.path.join(directory, "results.json"), "w") as f:
    json.dump(result, f)


def test_summary_compares_methods_seed_by_seed(tmp_path):
  out = str(tmp_path)
  rng = np.random.default_rng()
  acc = {(m, s): rng.uniform(0.8, 0.9) for m in ("paper", "recommended", "gradual")
         for s in (0, 1)}
  for s in (0, 1):
    for m in ("paper", "recommended", "gradual"):
      _write_result(out, f"mnist_lenet300_10x_seed{s}", m, acc[m, s] + 0.001, acc[m, s], 0.98)
  table = sweep.summarize(out, ["paper", "recommended", "gradual"])
  row = [line for line in table.splitlines() if line.startswith("| LeNet-300-100 10x MNIST")]
  assert len(row) == 1
  fields = [f.strip() for f in row[0].strip("|").split("|")]
  mean = lambda m: 100 * np.mean([acc[m, 0], acc[m, 1]])  # noqa: E731
  sd = lambda m: 100 * np.std([acc[m, 0], acc[m, 1]], ddof=1)  # noqa: E731
  assert fields[1] == "2"
  assert fields[3] == f"{mean('paper'):.2f} ± {sd('paper'):.2f}"
  assert fields[6] == "0.10"  # the prune cost of the default
  assert fields[7] == f"{mean('recommended') - mean('paper'):+.2f}"
  assert fields[8] == f"{mean('recommended') - mean('gradual'):+.2f}"


def test_summary_cells_keeps_only_the_cells_named(tmp_path, capsys):
  """``--summary --cells`` prints the rows of the cells named (by index or name), in the grid's
  order, and no other."""
  out = str(tmp_path)
  rng = np.random.default_rng()
  named = [sweep.GRID.index(("fashion_mnist", "lenet300", 30.0)),
           sweep.GRID.index(("mnist", "lenet300", 10.0))]
  for cell in ("mnist_lenet300_10x", "fashion_mnist_lenet300_30x", "mnist_lenet300_60x"):
    for m in ("recommended", "gradual"):
      _write_result(out, f"{cell}_seed0", m, *rng.uniform(0.8, 0.9, 2), 0.9)
  methods = ["recommended", "gradual"]
  rows = lambda table: [line.split("|")[1].strip() for line in table.splitlines()[2:]]  # noqa: E731
  assert rows(sweep.summarize(out, methods)) == [
      "LeNet-300-100 60x MNIST", "LeNet-300-100 10x MNIST", "LeNet-300-100 30x Fashion-MNIST"]
  assert rows(sweep.summarize(out, methods, cells=[sweep.GRID[i] for i in named])) == [
      "LeNet-300-100 10x MNIST", "LeNet-300-100 30x Fashion-MNIST"]
  assert sweep_cli.main(["--summary", "--out", out, "--methods", *methods, "--cells",
                         str(named[0]), "LeNet-300-100 10x MNIST"]) == 0
  assert rows(capsys.readouterr().out.strip()) == [
      "LeNet-300-100 10x MNIST", "LeNet-300-100 30x Fashion-MNIST"]


def test_summary_leaves_out_a_seed_whose_runs_started_from_two_base_models(tmp_path):
  """A base model lost and retrained from the same seed is another model: the summary does not
  take differences between runs from the two, even where their accuracies happen to agree."""
  out = str(tmp_path)
  rng = np.random.default_rng()
  acc = {(m, s): rng.uniform(0.8, 0.9) for m in ("recommended", "gradual") for s in (0, 1, 2)}
  for s in (0, 1, 2):
    for m in ("recommended", "gradual"):
      _write_result(out, f"mnist_lenet300_10x_seed{s}", m, acc[m, s], acc[m, s], 0.98)
  # Seed 1's gradual run started from a retrained base: same accuracy, another run.
  path = os.path.join(out, "mnist_lenet300_10x_seed1", "gradual", "results.json")
  with open(path) as f:
    result = json.load(f)
  result["base"]["history"][0]["train_seconds"] = float(rng.uniform(2, 1e4))
  with open(path, "w") as f:
    json.dump(result, f)
  table = sweep.summarize(out, ["recommended", "gradual"]).splitlines()
  row = [line for line in table if line.startswith("| LeNet-300-100 10x MNIST")]
  fields = [f.strip() for f in row[0].strip("|").split("|")]
  assert fields[1] == "2"  # seeds 0 and 2
  gap = 100 * np.mean([acc["recommended", s] - acc["gradual", s] for s in (0, 2)])
  assert fields[-1] == f"{gap:+.2f}"
  assert table[-1] == ("LeNet-300-100 10x MNIST, seed 1: left out, its runs of recommended,"
                       " gradual did not all start from the same base model")
  # Summary fields beside the history that a newer runner adds do not make another base.
  path = os.path.join(out, "mnist_lenet300_10x_seed2", "gradual", "results.json")
  with open(path) as f:
    result = json.load(f)
  result["base"]["last_k"] = 3
  with open(path, "w") as f:
    json.dump(result, f)
  assert sweep.summarize(out, ["recommended", "gradual"]).splitlines() == table
  # Without gradual, the seeds are summarised whole.
  alone = sweep.summarize(out, ["recommended"]).splitlines()
  assert [f.strip() for f in alone[2].strip("|").split("|")][1] == "3"
  assert "left out" not in "\n".join(alone)


def test_write_table_replaces_only_the_marked_block(tmp_path):
  path = tmp_path / "RESULTS.md"
  path.write_text(f"# Title\n\nbefore\n{sweep.BEGIN}\nold table\n{sweep.END}\nafter\n")
  sweep.write_table(str(path), "| new | table |")
  assert path.read_text() == (f"# Title\n\nbefore\n{sweep.BEGIN}\n| new | table |\n{sweep.END}"
                              "\nafter\n")
  bare = tmp_path / "bare.md"
  bare.write_text("no markers\n")
  with pytest.raises(ValueError, match="no sweep table"):
    sweep.write_table(str(bare), "x")


def test_archive_copies_results_that_summarize_reads_back(tmp_path):
  runs, dest = str(tmp_path / "runs"), str(tmp_path / "archive")
  for s in (0, 1):
    for m in ("paper", "recommended", "gradual"):
      _write_result(runs, f"fashion_mnist_lenet300_60x_seed{s}", m, 0.88, 0.87 + s / 100, 0.9)
  os.makedirs(os.path.join(runs, "bases", "fashion_mnist_lenet300_seed0", "base"))
  copied = sweep.archive(runs, dest)
  assert len(copied) == 6 and not os.path.exists(os.path.join(dest, "bases"))
  methods = ["paper", "recommended", "gradual"]
  assert sweep.summarize(dest, methods) == sweep.summarize(runs, methods)


@pytest.mark.parametrize("archive,schedule,least", [("sweep", "short", 60),
                                                    ("sweep_full_schedule", "full", 2),
                                                    ("structured_first_base", "short", 2)])
def test_archived_results_were_run_with_the_settings_their_names_say(archive, schedule, least):
  """Every result kept in docs/results/ was produced by the config its directory names, so a
  renamed or redefined method cannot leave the published table describing other runs."""
  root = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "results", archive)
  keys = ("passive_weight_decay", "passive_weight_decay_begin_epoch", "anneal_epochs", "importance",
          "importance_ema", "compression", "dataset", "model", "seed", "methods", "base", "gsm")
  checked = 0
  for cell in sorted(os.listdir(root)):
    for method in sorted(os.listdir(os.path.join(root, cell))):
      with open(os.path.join(root, cell, method, "results.json")) as f:
        stored = json.load(f)["config"]
      jobs = [sweep.Job(d, m, c, stored["seed"], method, structured=structured)
              for structured in (False, True)
              for d, m, c in (sweep.STRUCTURED_GRID if structured else sweep.GRID)]
      job = next(j for j in jobs
                 if j.method == method and sweep.job_dir("", j.dataset, j.model, j.compression,
                                                         j.seed, method, j.structured)
                 .startswith(cell + "/"))
      expected = sweep.sweep_config(job.dataset, job.model, job.compression, job.seed, method,
                                    schedule, structured=job.structured).to_dict()
      for key in keys + (("structured", "budget", "multiple_of", "allocation")
                         if job.structured else ()):
        assert json.loads(json.dumps(expected[key])) == stored[key], (cell, method, key)
      checked += 1
  assert checked >= least


def test_kept_base_models_are_the_bases_of_the_archived_runs():
  """A base model kept in docs/results/bases/ (which a sweep reuses when it is copied into its
  --out) is the one its name says: its model's shapes, its schedule's epochs and steps, and the
  very base of at least one archived run (their ``base`` results are one record, epoch seconds
  included, so no retrained model of the same seed passes for it)."""
  docs = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "results")
  names = sorted(os.listdir(os.path.join(docs, "bases")))
  assert names
  for name in names:
    cells = [(d, m) for d, m, _ in sweep.GRID + sweep.STRUCTURED_GRID
             if name.startswith(f"{d}_{m}_seed")]
    assert len(set(cells)) == 1, name
    dataset, model = cells[0]
    seed = int(name.rsplit("seed", 1)[1])
    config = sweep.sweep_config(dataset, model, 1.0, seed, "paper")
    kept = os.path.join(docs, "bases", name)
    variables = runner.load_phase_variables(kept, "base", config)
    module = models.MODELS[model](**config.model_options)
    like = jax.eval_shape(module.init, jax.random.PRNGKey(0), np.zeros((1, 28, 28, 1), np.float32))
    assert jax.tree.structure(variables) == jax.tree.structure(dict(like))
    for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(dict(like))):
      assert got.shape == want.shape and got.dtype == want.dtype, name
      assert np.all(np.isfinite(got)), name
    with open(os.path.join(kept, "base", "result.json")) as f:
      result = json.load(f)
    assert result["epochs"] == config.base.epochs
    assert result["steps"] == config.base.epochs * (60_000 // config.batch_size)
    users = []
    for path in glob.glob(os.path.join(docs, "sweep", f"{dataset}_{model}_*_seed{seed}", "*",
                                       "results.json")):
      with open(path) as f:
        base = json.load(f)["base"]
      if all(base.get(k) == v for k, v in result.items()):  # the runner adds "last_k"
        users.append(path)
    assert users, f"no archived run of {name} started from the kept base model"


def _shifted(schedule, begin):
  return lambda t: schedule(t + begin)


def test_deep_cells_run_on_their_own_schedule():
  """ResNet-20 and the ViT: their schedules (an hour a phase on one core), the recipe scaled to
  them, one-shot pruning + fine-tuning as a method, and no 'full' schedule."""
  deep = [(d, m, c) for d, m, c in sweep.GRID if m in ("resnet20", "vit")]
  assert {(m, c) for _, m, c in deep} == {(m, c) for m in ("resnet20", "vit") for c in (10, 20)}
  for _, model, _ in deep:
    phases = DEEP_PHASES[model]
    rec = sweep.sweep_config("fashion_mnist", model, 10.0, 0, "recommended")
    assert (rec.base, rec.gsm, rec.batch_size) == (phases["base"], phases["gsm"], 128)
    assert rec.anneal_epochs == phases["gsm"].boundaries[0]  # up to the first drop
    assert rec.passive_weight_decay == pytest.approx(100 * phases["gsm"].weight_decay)
    assert rec.importance == "magnitude" and rec.methods == ("gsm",)
    oneshot = sweep.sweep_config("fashion_mnist", model, 10.0, 0, "oneshot")
    assert oneshot.methods == ("oneshot",) and oneshot.passive_weight_decay == 0
    steps_per_epoch = 60_000 // 128
    # Every job fits 75 minutes at the measured ~0.67 s (ResNet-20) / ~0.50 s (ViT) a step.
    per_step = {"resnet20": 0.67, "vit": 0.50}[model]
    for phase in (phases["base"], phases["gsm"]):
      assert phase.epochs * steps_per_epoch * per_step / 60 <= 75
    with pytest.raises(ValueError, match="schedule"):
      sweep.sweep_config("fashion_mnist", model, 10.0, 0, "recommended", schedule="full")
    # A weight that leaves the top-Q as the anneal ends shrinks below the runner's warning
    # threshold (1e-3) in the epochs left (the exact recurrence, and its envelope).
    gsm, begin = rec.gsm, rec.anneal_epochs * steps_per_epoch
    after = _shifted(gsm.schedule(steps_per_epoch), begin)
    late = dict(momentum=gsm.momentum, weight_decay=gsm.weight_decay + rec.passive_weight_decay)
    rest = gsm.epochs * steps_per_epoch - begin
    exact = gsm_optax.simulate_decay_shrink(after, rest, **late)
    envelope = gsm_optax.decay_shrink_factor(after, rest, **late)
    assert abs(exact) < 1e-3 and envelope < 1e-3, (model, exact, envelope)


def test_summary_reads_oneshot_results(tmp_path):
  runs = str(tmp_path)
  _write_result(runs, "fashion_mnist_resnet20_10x_seed0", "recommended", 0.90, 0.90, 0.92)
  _write_result(runs, "fashion_mnist_resnet20_10x_seed0", "gradual", 0.89, 0.89, 0.92)
  _write_result(runs, "fashion_mnist_resnet20_10x_seed0", "oneshot", 0.87, 0.87, 0.92)
  table = sweep.summarize(runs, ["recommended", "gradual", "oneshot"]).splitlines()
  row = [line for line in table if "ResNet-20 10x Fashion-MNIST" in line]
  assert len(row) == 1 and "| 87.00 |" in row[0] and "| 90.00 |" in row[0]
  # Every goal of the cell has its column: the paper's (not run: "-"), gradual's, one-shot's.
  assert table[0].endswith("| recommended - paper | recommended - gradual"
                           " | recommended - oneshot |")
  assert row[0].endswith("| 0.00 | - | +1.00 | +3.00 |")


def test_summary_gives_each_listed_structured_baseline_a_gap(tmp_path):
  """A structured cell's summary compares the default with gradual pruning and ``scratch``,
  and with ``dense_long`` when it is listed, seed by seed."""
  runs = str(tmp_path)
  rng = np.random.default_rng()
  methods = ["recommended", "gradual", "scratch", "dense_long"]
  acc = {(m, s): rng.uniform(0.8, 0.9) for m in methods for s in (0, 1)}
  for s in (0, 1):
    for m in methods:
      _write_result(runs, f"fashion_mnist_vit_2x_structured_seed{s}", m, acc[m, s], acc[m, s],
                    0.88)
  table = sweep.summarize(runs, methods, structured=True).splitlines()
  assert table[0].endswith("| recommended - gradual | recommended - scratch"
                           " | recommended - dense_long |")
  fields = [f.strip() for f in table[2].strip("|").split("|")]
  for other, field in zip(("gradual", "scratch", "dense_long"), fields[-3:]):
    gap = 100 * np.mean([acc["recommended", s] - acc[other, s] for s in (0, 1)])
    assert field == f"{gap:+.2f}", other
  # Not listed, no column.
  assert "dense_long" not in sweep.summarize(runs, methods[:3], structured=True)


def test_summary_without_runs_says_how_to_make_them(tmp_path, capsys):
  results = tmp_path / "RESULTS.md"
  results.write_text(f"{sweep.BEGIN}\nold table\n{sweep.END}\n")
  out = str(tmp_path / "empty")
  assert sweep_cli.main(["--summary", "--out", out, "--write", str(results)]) == 1
  text = capsys.readouterr().out
  assert f"no finished runs in {out}" in text and "| cell |" not in text
  assert f"gsm-optax sweep --out {out} --methods paper recommended gradual --seeds 0 1" in text
  assert "old table" in results.read_text()  # nothing written over the published table
  # Runs of other methods only: say which there are.
  _write_result(out, "mnist_lenet300_10x_seed0", "gradual", 0.9, 0.9, 0.95)
  assert sweep_cli.main(["--summary", "--out", out, "--methods", "paper", "gradual"]) == 1
  text = capsys.readouterr().out
  assert "finished: gradual" in text and "| cell |" not in text
  assert sweep_cli.main(["--summary", "--out", out, "--methods", "gradual"]) == 0
  assert "| LeNet-300-100 10x MNIST | 1 |" in capsys.readouterr().out


def test_tickets_wait_for_the_runs_whose_masks_they_take():
  tickets = sweep.Job("mnist", "lenet5", 125.0, 3, "tickets")
  needs = {(j.method, j.compression, j.seed) for j in tickets.needs()}
  assert needs == {("base", 1.0, 3)} | {(m, 125.0, 3) for m in sweep.TICKET_SOURCES}
  assert sweep.Job("mnist", "lenet5", 125.0, 3, "paper").needs() == [
      sweep.Job("mnist", "lenet5", 1.0, 3, "base")]
  config = sweep.sweep_config("mnist", "lenet5", 125.0, 3, "tickets")
  paper = sweep.sweep_config("mnist", "lenet5", 125.0, 3, "paper")
  assert config.methods == ("lottery",) and config.base == paper.base


def test_sweep_stops_when_a_ticket_source_is_not_in_it(tmp_path, capsys):
  out = str(tmp_path)
  base = sweep.Job("mnist", "lenet300", 1.0, 0, "base")
  os.makedirs(os.path.join(base.directory(out), "base"))
  open(os.path.join(base.directory(out), "base", "result.json"), "w").close()
  sweep.run_sweep([sweep.Job("mnist", "lenet300", 60.0, 0, "tickets")], out, cores=[0])
  said = capsys.readouterr().out
  assert "tickets not started" in said and "recommended" in said and "paper" in said


def _tiny(config_fn):
  """The sweep's configs shrunk to seconds: 256 images, 1 base epoch, 2 GSM epochs; the tickets
  retrained at a learning rate of 1e-30, below every weight's float32 resolution, so that each
  must end exactly where it started."""
  def tiny(dataset, model, compression, seed, method, schedule="short", structured=False):
    config = config_fn(dataset, model, compression, seed, method, schedule, structured)
    return dataclasses.replace(
        config, train_subset=256, batch_size=64, checkpoint_every=1, last_k=1,
        base=PhaseConfig(1e-30 if method == "tickets" else 3e-2, 1, (), momentum=0.9),
        gsm=PhaseConfig(1e-2, 2, (1,), momentum=0.9, weight_decay=1e-2),
        anneal_epochs=min(config.anneal_epochs, 1), passive_weight_decay_begin_epoch=0)
  return tiny


def test_tickets_start_from_the_initial_weights_under_each_runs_final_mask(
    tmp_path, monkeypatch):
  monkeypatch.setattr(sweep, "sweep_config", _tiny(sweep.sweep_config))
  monkeypatch.setattr(sweep, "TICKET_SOURCES", ("recommended",))  # each source runs alike
  out, seed = str(tmp_path), int(np.random.default_rng().integers(1000))
  cell = ("mnist", "lenet300", 60.0)
  for method in ("base", *sweep.TICKET_SOURCES, "tickets"):
    sweep.run_job(sweep.Job(*cell, seed, method), out)
  config = sweep.sweep_config(*cell, seed, "tickets")
  directory = sweep.Job(*cell, seed, "tickets").directory(out)
  r = runner.Runner(config, directory, quiet=True)
  init = jax.tree_util.tree_leaves(r.init_variables()["params"])
  eligible = jax.tree_util.tree_leaves(r.eligible(r.init_variables()["params"]))
  q = int(config.keep_ratio * sum(w.size for w, e in zip(init, eligible) if e))

  def top_q(params):  # the brute-force global magnitude mask (ties: first in tree order)
    flat = np.concatenate([np.abs(np.asarray(w, np.float64)).ravel()
                           for w, e in zip(params, eligible) if e])
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(-flat, kind="stable")[:q]] = True
    return keep

  sources = {"magnitude": ("base", runner.load_phase_params(
      directory, "base", config))}
  for source in sweep.TICKET_SOURCES:
    source_dir = sweep.Job(*cell, seed, source).directory(out)
    sources[source] = ("gsm", runner.load_phase_params(source_dir, "gsm", config))
  with open(os.path.join(directory, "results.json")) as f:
    result = json.load(f)
  assert set(result["lottery"]) == set(sources)
  for source, (_, params) in sources.items():
    mask = top_q(jax.tree_util.tree_leaves(params))
    ticket = jax.tree_util.tree_leaves(
        runner.load_phase_params(directory, f"lottery_{source}", config))
    trained = np.concatenate([np.asarray(w).ravel() for w, e in zip(ticket, eligible) if e])
    assert np.all(trained[~mask] == 0) and np.count_nonzero(trained[mask]) == q
    start = np.concatenate([np.asarray(w).ravel() for w, e in zip(init, eligible) if e])
    np.testing.assert_array_equal(trained[mask], start[mask])  # the initial weights
  # The GSM run's mask differs from the magnitude one: each ticket took its own run's mask.
  masks = [top_q(jax.tree_util.tree_leaves(p)) for _, p in sources.values()]
  assert not np.array_equal(masks[0], masks[1])
  table = sweep.tickets_table(out)
  assert f"| LeNet-300-100 60x MNIST | {seed} |" in table


def test_summary_default_takes_the_gaps_of_a_candidate(tmp_path, capsys):
  """``--default normalized``: the prune cost and the differences to the baselines are the
  candidate's, as they would be if it were the default; a baseline or a method not listed is
  refused by name."""
  out = str(tmp_path)
  rng = np.random.default_rng()
  acc = {m: rng.uniform(0.8, 0.9) for m in ("recommended", "normalized", "gradual")}
  for m, a in acc.items():
    _write_result(out, "fashion_mnist_resnet20_2x_structured_seed0", m, a + 0.002, a, 0.93)
  args = ["--summary", "--structured", "--out", out, "--methods", "recommended", "normalized",
          "gradual"]
  assert sweep_cli.main(args + ["--default", "normalized"]) == 0
  head, _, row = capsys.readouterr().out.splitlines()[:3]
  fields = dict(zip([f.strip() for f in head.strip("|").split("|")],
                    [f.strip() for f in row.strip("|").split("|")]))
  assert fields["normalized: prune cost"] == "0.20"
  assert fields["normalized - gradual"] == f"{100 * (acc['normalized'] - acc['gradual']):+.2f}"
  assert fields["normalized - scratch"] == "-"
  for wrong in ("gradual", "paper"):
    with pytest.raises(SystemExit):
      sweep_cli.main(args + ["--default", wrong])
    assert f"argument --default: '{wrong}'" in capsys.readouterr().err


def test_a_method_a_cell_cannot_run_is_refused_before_any_job_starts(tmp_path, capsys):
  """scratch trains a deep model's export widths; on a structured LeNet cell the plan refuses
  it at once (every job's experiment is built first), and the CLI says so, running nothing."""
  lenet = next(c for c in sweep.STRUCTURED_GRID if c[1] == "lenet300")
  with pytest.raises(ValueError, match="method 'scratch'.*model='lenet300'"):
    sweep.plan([lenet], [0], ["recommended", "scratch"], structured=True)
  index = str(sweep.STRUCTURED_GRID.index(lenet))
  with pytest.raises(SystemExit):
    sweep_cli.main(["--out", str(tmp_path), "--structured", "--cells", index, "--methods",
                    "recommended", "scratch", "--seeds", "0"])
  assert "model='lenet300'" in capsys.readouterr().err
  assert not any(tmp_path.iterdir())
  deep = sweep.plan([sweep.STRUCTURED_GRID[0]], [0], ["recommended", "scratch"], structured=True)
  assert [j.method for j in deep] == ["base", "recommended", "scratch"]


def test_a_job_that_another_sweep_starts_meanwhile_is_not_run_twice(tmp_path):
  """Two sweeps on one --out: a job the other started after this one planned (a live pid in its
  running.pid) or that has since finished is dropped when a core comes free, not run again; a
  job whose base has not finished waits."""
  out = str(tmp_path)
  base, paper, gradual, recommended = sweep.plan([("mnist", "lenet300", 60.0)], [0],
                                                 ["paper", "gradual", "recommended"])
  pending = [paper, gradual, recommended]
  assert sweep.next_job(pending, out) is None and len(pending) == 3  # the base is not done
  os.makedirs(os.path.join(base.directory(out), "base"))
  with open(os.path.join(base.directory(out), "base", "result.json"), "w") as f:
    f.write("{}")
  other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    os.makedirs(paper.directory(out))
    with open(os.path.join(paper.directory(out), "running.pid"), "w") as f:
      f.write(str(other.pid))
    os.makedirs(gradual.directory(out))
    with open(os.path.join(gradual.directory(out), "results.json"), "w") as f:
      f.write("{}")
    assert sweep.next_job(pending, out) == recommended
    assert pending == []
  finally:
    other.kill()
    other.wait()
  # Once the other process is gone, its job is this sweep's again (and resumes).
  pending = [paper]
  assert sweep.next_job(pending, out) == paper


def test_a_job_leaves_no_running_pid_behind(tmp_path, monkeypatch):
  """A worker's running.pid names it while its job runs and is gone once the job ends, even by
  an error (interrupted), so that a later process given the same pid never passes for it."""
  out = str(tmp_path)
  job = sweep.plan([("mnist", "lenet300", 60.0)], [0], ["paper"])[-1]
  seen = []

  def interrupted(config, directory, quiet):
    with open(os.path.join(directory, "running.pid")) as f:
      seen.append(int(f.read()))
    raise KeyboardInterrupt

  monkeypatch.setattr(sweep, "_link_base", lambda *args: None)
  monkeypatch.setattr(runner, "run", interrupted)
  with pytest.raises(KeyboardInterrupt):
    sweep.run_job(job, out)
  assert seen == [os.getpid()]
  assert not os.path.exists(os.path.join(job.directory(out), "running.pid"))
  assert not job.running_elsewhere(out)
