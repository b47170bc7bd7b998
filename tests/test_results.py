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


def test_layer_density_counts_what_each_method_kept(rng, tmp_path):
  """docs/results/layer_density.py: a GSM job's layers come from its results.json; a
  gradual job's are the non-zeros of its saved parameters, over the same prunable leaves, and
  so are a tickets job's magnitude mask (its lottery_magnitude phase's)."""
  import importlib.util

  from flax import serialization

  spec = importlib.util.spec_from_file_location(
      "layer_density", os.path.join(ROOT, "docs", "results", "layer_density.py"))
  layer_density = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(layer_density)

  shapes = {"conv": (3, 3, 2, int(rng.integers(2, 6))), "dense": (int(rng.integers(5, 40)), 7)}
  def sparse_params():
    return {name: {"kernel": np.where(rng.uniform(size=s) < rng.uniform(0.05, 0.9),
                                      rng.normal(size=s), 0.0).astype(np.float32),
                   "bias": rng.normal(size=s[-1:]).astype(np.float32)}
            for name, s in shapes.items()}

  params, ticket = sparse_params(), sparse_params()
  gsm_kept = {name: int(rng.integers(0, np.prod(s))) for name, s in shapes.items()}
  leaves = []
  for name, s in shapes.items():  # flattening order: bias before kernel
    leaves.append({"path": f"['{name}']['bias']", "size": s[-1], "nonzeros": s[-1],
                   "eligible": False})
    leaves.append({"path": f"['{name}']['kernel']", "size": int(np.prod(s)),
                   "nonzeros": gsm_kept[name], "eligible": True})
  cell = tmp_path / "mnist_lenet5_125x_seed0"
  for job in ("recommended", "gradual/gradual", "tickets/lottery_magnitude", "paper"):
    os.makedirs(cell / job)
  write_json(str(cell / "recommended" / "results.json"), {"gsm": {"layers": {"leaves": leaves}}})
  write_json(str(cell / "gradual" / "results.json"), {"gradual": {"nonzeros": 0}})
  (cell / "gradual" / "gradual" / "params.msgpack").write_bytes(
      serialization.msgpack_serialize(params))
  write_json(str(cell / "tickets" / "results.json"), {"lottery": {}})
  (cell / "tickets" / "lottery_magnitude" / "params.msgpack").write_bytes(
      serialization.msgpack_serialize(ticket))

  out = tmp_path / "layers.json"
  assert layer_density.main([str(cell), "--json", str(out)]) == 0
  got = json.loads(out.read_text())
  assert [layer["path"] for layer in got["layers"]] == ["['conv']['kernel']", "['dense']['kernel']"]
  assert got["methods"]["recommended"] == [gsm_kept["conv"], gsm_kept["dense"]]
  assert got["methods"]["gradual"] == [int(np.count_nonzero(params[n]["kernel"]))
                                       for n in ("conv", "dense")]
  assert got["methods"]["magnitude mask"] == [int(np.count_nonzero(ticket[n]["kernel"]))
                                              for n in ("conv", "dense")]
  assert sorted(got["methods"]) == ["gradual", "magnitude mask", "recommended"]  # paper: unfinished


def test_schedules_puts_every_job_on_the_cell_time_axis(rng, tmp_path):
  """docs/results/schedules.py: a pruning job's epochs count on after its base model's, a job
  from fresh weights (scratch, dense_long) from 1; the table reads each job's accuracy at the
  epochs asked for, "-" outside its span."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(
      "schedules", os.path.join(ROOT, "docs", "results", "schedules.py"))
  schedules = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(schedules)

  def history(n):
    return [{"epoch": e + 1, "test_accuracy": float(a)}
            for e, a in enumerate(rng.uniform(0.5, 1.0, size=n))]

  n_base, n_prune = int(rng.integers(2, 6)), int(rng.integers(2, 6))
  base = {"history": history(n_base)}
  jobs = {"recommended": ("gsm", n_prune), "gradual": ("gradual", n_prune),
          "scratch": ("scratch", n_base + n_prune), "dense_long": ("dense_long", n_base + n_prune)}
  written = {}
  for job, (phase, n) in jobs.items():
    written[job] = history(n)
    os.makedirs(tmp_path / job)
    with open(tmp_path / job / "results.json", "w") as f:
      json.dump({"base": base, phase: {"history": written[job]}}, f)
  os.makedirs(tmp_path / "tickets")  # not a job with a curve
  data = schedules.curves(str(tmp_path))
  assert set(data) == {"base", *jobs}
  assert data["base"] == [(r["epoch"], 100 * r["test_accuracy"]) for r in base["history"]]
  for job in jobs:
    offset = 0 if job in ("scratch", "dense_long") else n_base
    assert data[job] == [(offset + r["epoch"], 100 * r["test_accuracy"]) for r in written[job]]
  rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in
          schedules.table(data, [1, n_base + 1]).splitlines()[2:]}
  assert rows["recommended"][0] == "-"
  assert rows["recommended"][1] == f"{100 * written['recommended'][0]['test_accuracy']:.2f}"
  assert rows["scratch"][0] == f"{100 * written['scratch'][0]['test_accuracy']:.2f}"
  assert rows["base"][1] == "-"
