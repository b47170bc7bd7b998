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


def test_mnist_bad_arguments_fail_before_training():
  with pytest.raises(SystemExit, match="compression"):
    cli.main(["mnist", "--compression", "0.5"])
  with pytest.raises(SystemExit, match="batch_size"):
    cli.main(["mnist", "--batch-size", "0"])
