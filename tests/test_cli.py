"""The command line: the digits job in a short setting, and the mnist job's arguments."""

import json
import os
import re

import numpy as np
import pytest

import gsm_optax
from gsm_optax.experiments import cli


def test_digits_job_reaches_the_target_density(tmp_path):
  out = tmp_path / "digits.json"
  cli.main(["digits", "--base-epochs", "5", "--gsm-epochs", "10", "--hidden", "64",
            "--json", str(out), "--quiet"])
  result = json.loads(out.read_text())
  eligible = 64 * 64 + 64 * 10
  assert result["eligible_nonzeros"] == int(eligible / 10)
  assert result["compression"] >= 10
  assert result["gsm_accuracy_after_prune"] > 0.5


def test_mnist_overrides_reach_the_config():
  args = cli._parser().parse_args([
      "mnist", "--model", "lenet5", "--compression", "125", "--gsm-epochs", "16",
      "--gsm-boundaries", "10", "13", "--gsm-weight-decay", "8e-3", "--base-lr", "0.05",
      "--methods", "gsm", "lottery", "--seed", "3"])
  config = cli._mnist_config(args)
  assert (config.model, config.compression, config.seed) == ("lenet5", 125.0, 3)
  assert config.methods == ("gsm", "lottery")
  assert (config.gsm.epochs, config.gsm.boundaries, config.gsm.weight_decay) == (16, (10, 13), 8e-3)
  assert config.gsm.momentum == 0.99 and config.gsm.nesterov  # the authors' defaults stay
  assert config.base.learning_rate == 0.05 and config.base.epochs == 200


def test_train_takes_any_model_and_dataset():
  """`train` runs the registry's deep networks on their own schedule; `mnist` stays the paper's."""
  from gsm_optax.experiments.config import DEEP_PHASES

  vit = cli._mnist_config(cli._parser().parse_args(["train", "--model", "vit"]))
  assert (vit.model, vit.dataset, vit.compression) == ("vit", "fashion_mnist", 10.0)
  phases = DEEP_PHASES["vit"]
  assert (vit.base, vit.gsm) == (phases["base"], phases["gsm"])
  assert vit.anneal_epochs == vit.gsm.boundaries[0] and vit.importance == "magnitude"
  resnet = cli._mnist_config(cli._parser().parse_args(
      ["train", "--dataset", "mnist", "--compression", "20", "--gsm-epochs", "6",
       "--gsm-boundaries", "4", "5", "--fast"]))
  assert (resnet.model, resnet.dataset, resnet.compression) == ("resnet20", "mnist", 20.0)
  assert (resnet.gsm.epochs, resnet.anneal_epochs, resnet.train_subset) == (6, 4, 2048)
  lenet = cli._mnist_config(cli._parser().parse_args(
      ["train", "--model", "lenet5", "--compression", "60"]))
  assert lenet == cli._mnist_config(cli._parser().parse_args(["mnist", "--model", "lenet5"]))
  assert lenet.gsm.epochs == 280  # the authors' schedule


def test_mnist_recipe_flag():
  """The recommended recipe is the default; the paper's update is one flag away; flags win."""
  default = cli._mnist_config(cli._parser().parse_args(["mnist"]))
  assert (default.anneal_epochs, default.passive_weight_decay, default.importance) == (
      160, 100 * default.gsm.weight_decay, "magnitude")  # up to the first drop, at 160
  paper = cli._mnist_config(cli._parser().parse_args(["mnist", "--recipe", "paper"]))
  assert (paper.anneal_epochs, paper.passive_weight_decay, paper.importance_ema) == (0, 0.0, 0.0)
  assert paper.importance == "taylor"
  # Structured runs too, with the recipe's split of the budget between layers; flags win.
  structured = cli._mnist_config(cli._parser().parse_args(["mnist", "--structured"]))
  assert (structured.anneal_epochs, structured.importance, structured.allocation) == (
      160, "magnitude", gsm_optax.recipes.STRUCTURED_ALLOCATION)
  assert cli._mnist_config(cli._parser().parse_args(
      ["mnist", "--structured", "--allocation", "global"])).allocation == "global"
  assert cli._mnist_config(cli._parser().parse_args(
      ["mnist", "--structured", "--recipe", "fixed"])).allocation == "global"
  taylor = cli._mnist_config(cli._parser().parse_args(["mnist", "--importance", "taylor"]))
  assert (taylor.anneal_epochs, taylor.importance) == (160, "taylor")
  short = cli._mnist_config(cli._parser().parse_args(
      ["mnist", "--gsm-epochs", "90", "--gsm-boundaries", "51", "64", "77"]))
  assert short.anneal_epochs == 51  # the anneal scales with the schedule
  fixed = cli._mnist_config(cli._parser().parse_args(
      ["mnist", "--recipe", "fixed", "--gsm-epochs", "90", "--gsm-boundaries", "51", "64", "77"]))
  assert fixed.anneal_epochs == round(100 / 160 * 51)
  mixed = cli._mnist_config(cli._parser().parse_args(
      ["mnist", "--recipe", "paper", "--passive-weight-decay", "2e-3", "--importance-ema", "0.9"]))
  assert (mixed.anneal_epochs, mixed.passive_weight_decay, mixed.importance_ema) == (0, 2e-3, 0.9)
  with pytest.raises(SystemExit):
    cli._parser().parse_args(["mnist", "--recipe", "fancy"])


def test_mnist_bad_arguments_fail_before_training():
  with pytest.raises(SystemExit, match="compression"):
    cli.main(["mnist", "--compression", "0.5"])
  with pytest.raises(SystemExit, match="batch_size"):
    cli.main(["mnist", "--batch-size", "0"])
  with pytest.raises(SystemExit, match="passive_weight_decay"):
    cli.main(["mnist", "--passive-weight-decay", "-1"])
  with pytest.raises(SystemExit, match="anneal_epochs"):
    cli.main(["mnist", "--anneal-epochs", "1000"])


def test_structured_group_score_follows_the_weights_score():
  """A structured run ranks groups by the group form of the weights' score unless told: the
  Taylor recipe by "group_taylor", a magnitude ranking by "group_rms"; the config names it."""
  def config(*flags):
    return cli._mnist_config(cli._parser().parse_args(["mnist", "--structured", *flags]))
  assert config().group_importance == "group_rms"  # the recipe ranks by magnitude
  assert config("--recipe", "fixed").group_importance == "group_taylor"
  assert config("--recipe", "fixed", "--importance", "magnitude").group_importance == "group_rms"
  assert config("--recipe", "recommended").group_importance == "group_rms"
  assert config("--recipe", "recommended",
                "--group-importance", "magnitude").group_importance == "magnitude"
  assert config("--group-importance", "group-rms").group_importance == "group_rms"


def test_mnist_structured_flags():
  args = cli._parser().parse_args(["mnist", "--model", "lenet5", "--structured", "--budget", "macs",
                                   "--group-importance", "taylor"])
  config = cli._mnist_config(args)
  assert (config.structured, config.budget, config.group_importance) == (True, "macs", "taylor")
  assert config.methods == ("gsm", "gradual")  # the structured comparison by default
  assert config.multiple_of == 1 and cli._mnist_config(cli._parser().parse_args(
      ["mnist", "--structured", "--multiple-of", "8"])).multiple_of == 8
  for flags in (["--budget", "macs"], ["--group-importance", "taylor"], ["--per-mac"],
                ["--allocation", "uniform"], ["--multiple-of", "8"]):
    with pytest.raises(ValueError, match="--structured"):
      cli._mnist_config(cli._parser().parse_args(["mnist", *flags]))
  with pytest.raises(SystemExit, match="methods"):
    cli.main(["mnist", "--structured", "--methods", "gsm", "lottery"])


def _help(argv, capsys):
  """The text ``gsm-optax ARGV --help`` prints."""
  with pytest.raises(SystemExit) as exit_:
    cli.main([*argv, "--help"])
  assert exit_.value.code == 0
  return capsys.readouterr().out


@pytest.mark.parametrize("command", [[], ["digits"], ["mnist"], ["train"], ["sweep"]])
def test_help_is_plain_text_and_says_how_long(command, capsys):
  text = _help(command, capsys)
  for markup in ("``", ":func:", ":mod:", ":data:", ":class:", "`"):
    assert markup not in text, (command, markup)
  if command:  # every command's description gives its running time
    description = text.split("options:")[0]
    assert re.search(r"~\d+(\.\d+)?(-\d+(\.\d+)?)? ?(s|min)\b", description), description


def test_sweep_help_explains_every_method_and_lists_every_cell(capsys):
  from gsm_optax.experiments import sweep

  text = _help(["sweep"], capsys)
  explained = dict(re.findall(r"^  (\w+) +(\S.*)$", text, flags=re.M))
  assert set(sweep.METHODS) <= set(explained), set(sweep.METHODS) - set(explained)
  models = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5", "resnet20": "ResNet-20",
            "vit": "ViT"}
  datasets = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
  listed = re.findall(r"^ +(\d+): (.+)$", text, flags=re.M)
  # The cells, then the structured cells (--structured --cells), each numbered from 0.
  assert listed == [(str(i), f"{models[m]} {c:g}x {datasets[d]}")
                    for grid in (sweep.GRID, sweep.STRUCTURED_GRID)
                    for i, (d, m, c) in enumerate(grid)]
  assert "structured cells (--structured --cells" in text


@pytest.mark.parametrize("command", ["mnist", "train"])
def test_model_help_says_what_each_model_prunes(command, capsys):
  from gsm_optax.experiments.models import MODELS, PRUNABLE

  text = " ".join(_help([command], capsys).split())  # unwrapped
  for name in MODELS:
    assert f"{name} prunes {PRUNABLE[name]}" in text, name
  assert "_fast with --fast" in text and "_structured with --structured" in text


def test_sweep_takes_cells_by_name_or_index(tmp_path, capsys):
  from gsm_optax.experiments import sweep, sweep_cli

  assert sweep_cli.main(["--summary", "--out", str(tmp_path), "--cells", "lenet-5  125X mnist",
                         "3"]) == 1
  assert "--cells 6 3" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    sweep_cli.main(["--summary", "--out", str(tmp_path), "--cells", str(len(sweep.GRID))])
  assert "no cell" in capsys.readouterr().err


def test_mnist_prints_where_it_writes_and_ends_on_the_result(tmp_path, capsys):
  """A tiny run: the output directory first; last, every accuracy of results.json and the
  files, each of which exists."""
  out = str(tmp_path / "run")
  cli.main(["mnist", "--fast", "--train-subset", "1024", "--base-epochs", "1",
            "--base-boundaries", "--base-warmup-epochs", "0", "--gsm-epochs", "1",
            "--gsm-boundaries", "--gsm-warmup-epochs", "0", "--out", out, "--quiet"])
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0] == f"writing to {out}"
  with open(os.path.join(out, "results.json")) as f:
    results = json.load(f)
  expected = [results["base"]["final_test_accuracy"], results["gsm"]["accuracy_before_prune"],
              results["gsm"]["accuracy_after_prune"], results["oneshot"]["final_test_accuracy"],
              results["gradual"]["final_test_accuracy"],
              results["lottery"]["gsm"]["final_test_accuracy"],
              results["lottery"]["magnitude"]["final_test_accuracy"]]
  files = lines.index("files:")
  summary = lines[files - len(expected):files]
  names = ["dense base", "GSM, before", "GSM, after", "one-shot", "gradual", "lottery ticket from"
           " GSM's", "lottery ticket from the magnitude"]
  for line, name, accuracy in zip(summary, names, expected):
    assert line.strip().startswith(name), (line, name)
    assert line.endswith(f"{100 * accuracy:.2f}%"), (line, accuracy)
  paths = [line.strip() for line in lines[files + 1:]]
  assert paths[0] == os.path.join(out, "results.json") and len(paths) == 3
  assert all(os.path.exists(path) for path in paths)


def test_default_out_names_fast_and_structured():
  args = cli._parser().parse_args(["mnist", "--fast", "--structured", "--seed", "2"])
  config = cli._mnist_config(args)
  assert cli.output_dir(config, args.fast) == os.path.join(
      "runs", "mnist_lenet300_60x_seed2_structured_fast")


def test_training_plot_shows_every_epoch_in_plain_words():
  from gsm_optax.experiments import plotting

  rng = np.random.default_rng()
  epochs = 8
  pruned = np.sort(rng.uniform(0.05, 0.9, epochs))  # low in the first epochs
  history = [{"epoch": e + 1, "test_accuracy": rng.uniform(0.9, 0.99),
              "pruned_test_accuracy": p, "removed_l2_fraction": rng.uniform(1e-6, 0.5)}
             for e, p in enumerate(pruned)]
  results = {"gsm": {"history": history}, "target_nonzeros": 4436,
             "base": {"final_test_accuracy": rng.uniform(0.95, 0.99)}}
  plt = plotting._pyplot()
  fig = plotting._training_figure(plt, results)
  accuracy_axes, distance_axes = fig.axes
  low, high = accuracy_axes.get_ylim()
  values = [100 * r[k] for r in history for k in ("test_accuracy", "pruned_test_accuracy")]
  assert low <= min(values) and high >= max(values)
  assert "top-Q" not in distance_axes.get_ylabel()
  assert "final prune would remove" in " ".join(distance_axes.get_ylabel().split())
  plt.close(fig)


def test_closing_summary_of_a_structured_run_lists_what_ran():
  """A structured run keeps groups, not Q weights, and runs GSM and gradual pruning only."""
  rng = np.random.default_rng()
  base, before, after, gradual = rng.uniform(0.5, 1.0, 4)
  results = {"config": {"model": "lenet5", "dataset": "mnist", "compression": 4.0, "seed": 1,
                        "structured": True, "budget": "macs"},
             "target_nonzeros": 1, "eligible_weights": 4,
             "base": {"final_test_accuracy": base},
             "gsm": {"accuracy_before_prune": before, "accuracy_after_prune": after},
             "gradual": {"final_test_accuracy": gradual}}
  lines = cli.closing_summary(results, ["out/results.json"]).splitlines()
  assert "structured, by macs" in lines[0] and "prunable weights" not in lines[0]
  assert [line.rsplit(None, 1)[-1] for line in lines[1:5]] == [
      f"{100 * a:.2f}%" for a in (base, before, after, gradual)]
  assert lines[5:] == ["files:", "  out/results.json"]
