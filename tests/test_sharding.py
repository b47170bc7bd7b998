"""gsm() on parameters sharded over 8 simulated CPU devices (1-D and 2-D meshes,
Explicit and Auto axes) gives the single-device result, keeps every sharding,
and moves no weights between devices."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.hlo import largest_collective

WORKER = os.path.join(os.path.dirname(__file__), "sharded_worker.py")
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def results():
  seed = int(np.random.SeedSequence().entropy % 2**31)
  print(f"seed={seed}")
  root = os.path.dirname(os.path.dirname(WORKER))
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = subprocess.run([sys.executable, WORKER, str(seed)], capture_output=True, text=True,
                       env=env, timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_four_meshes_ran_on_eight_devices(results):
  assert [r["mesh"] for r in results] == [
      "(8,) Explicit", "(2, 4) Explicit", "(8,) Auto", "(2, 4) Auto"]
  assert all(r["num_devices"] == 8 for r in results)


def test_same_params_state_and_masks_as_one_device(results):
  for r in results:
    assert r["same_params"], r["mesh"]
    assert r["same_state"], r["mesh"]
    assert r["same_masks"], r["mesh"]
    q = int(0.05 * (1024 * 64 + 512 * 256 + 256 * 128 + 3 * 3 * 64 * 128))
    assert r["kept"][0] == q and r["kept"][2] == q  # (step 1 has zero gradients too)


def test_every_output_keeps_its_input_sharding(results):
  for r in results:
    assert all(r["params_keep_sharding"].values()), r
    assert all(r["trace_keeps_sharding"].values()), r


def test_no_weight_sized_collectives(results):
  for r in results:
    for op, size in r["collectives"].items():
      assert size <= LIMIT, (r["mesh"], op, size)


def test_collective_parser_sees_a_weight_sized_gather():
  hlo = ("%ag = f32[512,256]{1,0} all-gather(f32[64,256]{1,0} %p), dimensions={0}\n"
         "%cp = (s32[], u32[2]) collective-permute-start(%x), source_target_pairs={{0,1}}\n"
         "%ar = f32[1000000]{0} all-reduce(%y), to_apply=%add")
  assert largest_collective(hlo) == {"all-gather": 512 * 256 * 4, "all-to-all": 0,
                                     "collective-permute": 8}
