"""The command line: the digits job in a short setting, and the mnist job's arguments."""

import json

import pytest

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
  from gsm_optax.experiments import runner

  vit = cli._mnist_config(cli._parser().parse_args(["train", "--model", "vit"]))
  assert (vit.model, vit.dataset, vit.compression) == ("vit", "fashion_mnist", 10.0)
  phases = runner.DEEP_PHASES["vit"]
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
  assert (default.anneal_epochs, default.passive_decay, default.importance) == (
      160, 100 * default.gsm.weight_decay, "magnitude")  # up to the first drop, at 160
  paper = cli._mnist_config(cli._parser().parse_args(["mnist", "--recipe", "paper"]))
  assert (paper.anneal_epochs, paper.passive_decay, paper.importance_ema) == (0, 0.0, 0.0)
  assert paper.importance == "taylor"
  structured = cli._mnist_config(cli._parser().parse_args(["mnist", "--structured"]))
  assert (structured.anneal_epochs, structured.importance) == (100, "taylor")  # as measured
  taylor = cli._mnist_config(cli._parser().parse_args(["mnist", "--importance", "taylor"]))
  assert (taylor.anneal_epochs, taylor.importance) == (160, "taylor")
  short = cli._mnist_config(cli._parser().parse_args(
      ["mnist", "--gsm-epochs", "90", "--gsm-boundaries", "51", "64", "77"]))
  assert short.anneal_epochs == 51  # the anneal scales with the schedule
  fixed = cli._mnist_config(cli._parser().parse_args(
      ["mnist", "--recipe", "fixed", "--gsm-epochs", "90", "--gsm-boundaries", "51", "64", "77"]))
  assert fixed.anneal_epochs == round(100 / 160 * 51)
  mixed = cli._mnist_config(cli._parser().parse_args(
      ["mnist", "--recipe", "paper", "--passive-decay", "2e-3", "--importance-ema", "0.9"]))
  assert (mixed.anneal_epochs, mixed.passive_decay, mixed.importance_ema) == (0, 2e-3, 0.9)
  with pytest.raises(SystemExit):
    cli._parser().parse_args(["mnist", "--recipe", "fancy"])


def test_mnist_bad_arguments_fail_before_training():
  with pytest.raises(SystemExit, match="compression"):
    cli.main(["mnist", "--compression", "0.5"])
  with pytest.raises(SystemExit, match="batch_size"):
    cli.main(["mnist", "--batch-size", "0"])
  with pytest.raises(SystemExit, match="passive_decay"):
    cli.main(["mnist", "--passive-decay", "-1"])
  with pytest.raises(SystemExit, match="anneal_epochs"):
    cli.main(["mnist", "--anneal-epochs", "1000"])


def test_mnist_structured_flags():
  args = cli._parser().parse_args(["mnist", "--model", "lenet5", "--structured", "--budget", "macs",
                                   "--group-score", "summed-taylor"])
  config = cli._mnist_config(args)
  assert (config.structured, config.budget, config.group_score) == (True, "macs", "summed_taylor")
  assert config.methods == ("gsm", "gradual")  # the structured comparison by default
  for flags in (["--budget", "macs"], ["--group-score", "summed-taylor"], ["--per-mac"],
                ["--allocation", "uniform"]):
    with pytest.raises(ValueError, match="--structured"):
      cli._mnist_config(cli._parser().parse_args(["mnist", *flags]))
  with pytest.raises(SystemExit, match="methods"):
    cli.main(["mnist", "--structured", "--methods", "gsm", "lottery"])
