"""gsm() and global_topk_mask() on parameters sharded over 8 simulated CPU
devices (1-D and 2-D meshes, Explicit and Auto axes, sharded on any dimension),
under ``jax.set_mesh`` and under a plain ``jax.jit`` of arrays that carry their
shardings, give the single-device result, keep every sharding, and move no
weights between devices."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.hlo import largest_collective

WORKER = os.path.join(os.path.dirname(__file__), "sharded_worker.py")
LIMIT = 64 * 1024
MESHES = {"(8,) Explicit": "8-Explicit", "(2, 4) Explicit": "2x4-Explicit",
          "(8,) Auto": "8-Auto", "(2, 4) Auto": "2x4-Auto"}
CASES = [(mesh, context) for mesh in MESHES for context in (True, False)]
EACH_CASE = pytest.mark.parametrize(
    "mesh,context", CASES,
    ids=[f"{MESHES[m]}-{'set_mesh' if c else 'no_mesh'}" for m, c in CASES])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  seed = int(np.random.SeedSequence().entropy % 2**31)
  print(f"seed={seed}")
  root = os.path.dirname(os.path.dirname(WORKER))
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
  path = str(tmp_path_factory.mktemp("sharding") / "one_device.npz")
  for mode in ("reference", "sharded"):  # one device, then eight
    out = subprocess.run([sys.executable, WORKER, str(seed), mode, path], capture_output=True,
                         text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def case(results, mesh, context):
  """The results of one mesh with (or without) ``jax.set_mesh``; it must have run."""
  (r,) = [r for r in results if (r["mesh"], r["context"]) == (mesh, context)]
  assert r["error"] is None, r["error"]
  return r


def test_every_case_ran(results):
  assert [(r["mesh"], r["context"]) for r in results] == CASES


@EACH_CASE
def test_ran_on_eight_devices(results, mesh, context):
  assert case(results, mesh, context)["num_devices"] == 8


@EACH_CASE
def test_same_params_state_and_masks_as_one_device(results, mesh, context):
  r = case(results, mesh, context)
  assert r["same_params"]
  assert r["same_state"]
  assert r["same_masks"]
  q = int(0.05 * (1024 * 64 + 512 * 256 + 256 * 128 + 3 * 3 * 64 * 128))
  assert r["kept"][0] == q and r["kept"][2] == q  # (step 1 has zero gradients too)


@EACH_CASE
def test_global_topk_mask_same_as_one_device(results, mesh, context):
  ways = ["arrays", "in_shardings"] if "Auto" in mesh else ["arrays"]
  assert case(results, mesh, context)["same_topk"] == dict.fromkeys(ways, True)


@EACH_CASE
def test_every_output_keeps_its_input_sharding(results, mesh, context):
  r = case(results, mesh, context)
  assert all(r["params_keep_sharding"].values()), r["params_keep_sharding"]
  assert all(r["trace_keeps_sharding"].values()), r["trace_keeps_sharding"]


@EACH_CASE
def test_no_weight_sized_collectives(results, mesh, context):
  r = case(results, mesh, context)
  assert len(r["collectives"]) == (3 if "Auto" in mesh else 2)  # gsm, global_topk_mask
  too_big = {fn: r["moved"][fn] for fn, sizes in r["collectives"].items()
             if max(sizes.values()) > LIMIT}
  assert not too_big


def test_collective_parser_sees_a_weight_sized_gather():
  hlo = ("%ag = f32[512,256]{1,0} all-gather(f32[64,256]{1,0} %p), dimensions={0}\n"
         "%cp = (s32[], u32[2]) collective-permute-start(%x), source_target_pairs={{0,1}}\n"
         "%ar = f32[1000000]{0} all-reduce(%y), to_apply=%add")
  assert largest_collective(hlo) == {"all-gather": 512 * 256 * 4, "all-to-all": 0,
                                     "collective-permute": 8}
