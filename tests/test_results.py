"""The experiments' JSON results: older runs' key names load as today's names."""

import glob
import json
import os

from gsm_optax.experiments.results import RENAMED_KEYS, load_results

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
