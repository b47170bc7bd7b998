"""The experiments' JSON results: older runs' key names load as today's names."""

import glob
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from gsm_optax.experiments.results import RENAMED_KEYS, load_results, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_results_written_with_the_old_names_load_with_the_new_ones(rng, tmp_path):
  fraction, carrying, largest = rng.uniform(), int(rng.integers(100)), rng.uniform()
  decay = float(rng.uniform())
  old = {
      "config": {"passive_decay": decay, "passive_decay_begin_epoch": 3,
                 "group_score": "summed_taylor", "compression": 60.0},
      "gsm": {"removed_l2_fraction": fraction, "carrying_beyond_q": carrying,
              "largest_removed_magnitude": largest,
              "history": [{"epoch": 1, "outside_fraction": fraction, "carrying_beyond_q": 1}]},
  }
  path = tmp_path / "results.json"
  path.write_text(json.dumps(old))
  new = load_results(str(path))
  assert new["config"] == {"passive_weight_decay": decay, "passive_weight_decay_begin_epoch": 3,
                           "group_importance": "taylor", "compression": 60.0}
  assert new["gsm"]["num_carrying"] == carrying and new["gsm"]["largest_removed"] == largest
  assert new["gsm"]["history"] == [{"epoch": 1, "removed_l2_fraction": fraction,
                                    "num_carrying": 1}]
  # The old config's "taylor" was |sum g*w|, the library's "group_taylor".
  path.write_text(json.dumps({"config": {"group_score": "taylor"}}))
  assert load_results(str(path)) == {"config": {"group_importance": "group_taylor"}}


def test_results_in_the_new_names_load_unchanged(rng, tmp_path):
  """A file already in today's names is not mapped again: its "taylor" stays sum |g*w|."""
  new = {"config": {"group_importance": "taylor",
                    "passive_weight_decay": float(rng.uniform())},
         "gsm": {"removed_l2_fraction": float(rng.uniform()), "num_carrying": 3}}
  path = tmp_path / "results.json"
  path.write_text(json.dumps(new))
  assert load_results(str(path)) == new
  # A key under both names keeps the new one.
  both = {"num_carrying": 2, "carrying_beyond_q": 7}
  path.write_text(json.dumps(both))
  assert load_results(str(path)) == {"num_carrying": 2}


def test_archived_results_are_in_the_new_names():
  paths = glob.glob(os.path.join(ROOT, "docs", "results", "**", "*.json"), recursive=True)
  assert paths
  for path in paths:
    with open(path) as f:
      text = f.read()
    stale = [old for old in RENAMED_KEYS if f'"{old}"' in text]
    assert not stale, (path, stale)
    assert load_results(path) == json.loads(text)


def test_write_json_writes_a_whole_file_or_none(rng, tmp_path):
  """A write that fails halfway (here on a value JSON cannot hold, after 20,000 numbers were
  written) leaves the previous file as it was, and no file where there was none: a job's
  results.json, which marks it done, is never a truncated one."""
  values = rng.normal(size=3)
  path = tmp_path / "results.json"
  write_json(str(path), {"a": np.float32(values[0]), "b": jnp.asarray(values), "c": [1, 2]})
  got = json.loads(path.read_text())
  assert got["a"] == pytest.approx(values[0], rel=1e-6) and got["c"] == [1, 2]
  np.testing.assert_allclose(got["b"], values, rtol=1e-6)
  before = path.read_text()
  broken = {"many": list(range(20_000)), "then": object()}
  with pytest.raises(TypeError, match="not JSON serialisable"):
    write_json(str(path), broken)
  assert path.read_text() == before
  fresh = tmp_path / "fresh" / "results.json"
  fresh.parent.mkdir()
  with pytest.raises(TypeError):
    write_json(str(fresh), broken)
  assert not fresh.exists()


def test_the_experiments_write_json_through_write_json_only():
  """Every JSON file the experiments write (runner, sweep jobs, CLI) goes through write_json."""
  experiments = os.path.join(ROOT, "gsm_optax", "experiments")
  for name in sorted(os.listdir(experiments)):
    if name.endswith(".py") and name != "results.py":
      with open(os.path.join(experiments, name)) as f:
        assert "json.dump(" not in f.read(), name


def test_summarize_prints_the_tables_of_results_md():
  """docs/results/summarize.py runs on the archived JSON (structured runs included in the
  directory) and prints the tables docs/RESULTS.md holds, line for line."""
  import subprocess
  import sys

  out = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "results", "summarize.py")],
                       capture_output=True, text=True, check=True).stdout
  with open(os.path.join(ROOT, "docs", "RESULTS.md")) as f:
    results_md = f.read()
  lines = [line for line in out.splitlines() if line.strip()]
  assert len(lines) > 20
  assert [line for line in lines if line not in results_md] == []
