"""The digits job behind `make demo`, in a short setting."""

import json

from gsm_optax import cli


def test_digits_job_reaches_the_target_density(tmp_path):
  out = tmp_path / "digits.json"
  cli.main(["digits", "--base-epochs", "5", "--gsm-epochs", "10", "--hidden", "64",
            "--json", str(out), "--quiet"])
  result = json.loads(out.read_text())
  eligible = 64 * 64 + 64 * 10
  assert result["eligible_nonzeros"] == int(eligible / 10)
  assert result["compression"] >= 10
  assert result["gsm_accuracy_after_prune"] > 0.5
