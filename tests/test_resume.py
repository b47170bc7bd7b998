"""Resuming from an orbax checkpoint in a new process is bit-for-bit exact.

Every run happens in its own process (tests/resume_worker.py), as after a
preemption: nothing survives but the checkpoint directory.
"""

import json
import os
import signal
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsm_optax.checkpointing import Checkpointer
from tests import resume_worker
from tests.shared_fixture import once_per_session

WORKER = os.path.join(os.path.dirname(__file__), "resume_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """Subprocess environment: one CPU device, a shared compilation cache.

  The cache only saves compile time; an executable loaded from it is the one
  a fresh compile produces.
  """
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env["JAX_PLATFORMS"] = "cpu"
  # Shared by the pytest-xdist workers (getbasetemp() is per worker).
  cache = tmp_path_factory.getbasetemp().parent / "gsm_resume_jax_cache"
  env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _run(env, *args, expect_kill=False):
  proc = subprocess.run([sys.executable, WORKER, *map(str, args)], env=env,
                        capture_output=True, text=True, timeout=300)
  if expect_kill:
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    return None
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_same_bits(path_a, path_b):
  a, b = np.load(path_a), np.load(path_b)
  assert sorted(a.files) == sorted(b.files)
  assert any("bfloat16" in k for k in a.files)
  chex.assert_trees_all_equal({k: a[k] for k in a.files}, {k: b[k] for k in b.files})


@pytest.fixture(scope="module")
def uninterrupted(env, tmp_path_factory):
  """The reference: 100 steps in one process, saving checkpoints at 50 and 100."""

  def body(out):
    return _run(env, "--ckpt", out / "ckpt", "--every", 50, "--until", 100,
                "--out", out / "final.npz")

  result, out = once_per_session(tmp_path_factory, "resume-uninterrupted", body)
  # The keep ratio schedule ends at 0.1 of the 64*32 + 32*16 + 16*10 kernel weights.
  q = (64 * 32 + 32 * 16 + 16 * 10) // 10
  assert result == {"restored": None, "step": 100, "keep_count": q}
  return out


def test_resume_in_a_new_process_is_bit_exact(env, uninterrupted, tmp_path):
  resumed = _run(env, "--ckpt", uninterrupted / "ckpt", "--resume", "--restore-step", 50,
                 "--until", 100, "--out", tmp_path / "r.npz")
  assert resumed["restored"] == 50 and resumed["step"] == 100
  # Params, the whole optimizer state (selection counter, momentum, schedule
  # counters) and the step, compared bit for bit after 50 more steps.
  _assert_same_bits(uninterrupted / "final.npz", tmp_path / "r.npz")


def test_resuming_without_the_optimizer_state_is_caught(env, uninterrupted, tmp_path):
  """The comparison can fail: params and step alone (a fresh GSM state) diverge."""
  _run(env, "--ckpt", uninterrupted / "ckpt", "--resume", "--restore-step", 50,
       "--reset-opt-state", "--until", 100, "--out", tmp_path / "r.npz")
  a, b = np.load(uninterrupted / "final.npz"), np.load(tmp_path / "r.npz")
  params = [k for k in a.files if k.startswith("[1]")]
  assert not all(np.array_equal(a[k], b[k]) for k in params)


def test_sigkill_between_checkpoints_resumes_from_the_last_complete_one(
    env, uninterrupted, tmp_path):
  ckpt = tmp_path / "ckpt"
  # Synchronous saves: step 30 is on disk before step 31 starts.
  _run(env, "--ckpt", ckpt, "--sync", "--every", 10, "--until", 100, "--kill-at", 37,
       expect_kill=True)
  with Checkpointer(ckpt) as c:
    assert c.all_steps() == [10, 20, 30]
  # A partial write of a newer checkpoint, as orbax leaves it when killed
  # mid-save: a temporary directory with a truncated copy of a checkpoint.
  partial = tmp_path / "ckpt" / "40.orbax-checkpoint-tmp"
  _copy_truncated(ckpt / "30", partial)
  resumed = _run(env, "--ckpt", ckpt, "--resume", "--until", 100, "--out", tmp_path / "r.npz")
  assert resumed["restored"] == 30
  _assert_same_bits(uninterrupted / "final.npz", tmp_path / "r.npz")


def test_sigkill_during_an_async_save_never_loads_the_partial_checkpoint(env, tmp_path):
  ckpt = tmp_path / "ckpt"
  _run(env, "--ckpt", ckpt, "--every", 10, "--until", 100, "--kill-after-save", 30,
       expect_kill=True)
  entries = sorted(os.listdir(ckpt))
  with Checkpointer(ckpt) as c:
    steps = c.all_steps()
  # Killed while the files of step 30 were being written, or just after: either
  # step 30 is complete, or it is a temporary directory that is not listed.
  assert steps in ([10, 20], [10, 20, 30]), entries
  assert all(e.isdigit() or ".orbax-checkpoint-tmp" in e for e in entries), entries
  print(f"entries after SIGKILL during the save of step 30: {entries}")
  template = resume_worker.initial_state()
  with Checkpointer(ckpt) as c:
    state = c.restore(template)
  assert int(state.step) == steps[-1]


def _copy_truncated(src, dst):
  for root, _, files in os.walk(src):
    target = os.path.join(dst, os.path.relpath(root, src))
    os.makedirs(target, exist_ok=True)
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        data = f.read()
      with open(os.path.join(target, name), "wb") as f:
        f.write(data[: len(data) // 2])


def test_restore_refuses_a_mismatched_state(tmp_path):
  state = {"w": jnp.ones((2, 3), jnp.bfloat16), "count": jnp.int32(4)}
  with Checkpointer(tmp_path, async_save=False) as ckpt:
    assert ckpt.save(state, step=7)
    chex.assert_trees_all_equal(ckpt.restore(jax.tree.map(jnp.zeros_like, state)), state)
    with pytest.raises(ValueError, match=r"w: dtype bfloat16 saved, float32 wanted"):
      ckpt.restore({"w": jnp.ones((2, 3), jnp.float32), "count": jnp.int32(0)})
    with pytest.raises(ValueError, match=r"w: shape \(2, 3\) saved, \(3, 2\) wanted"):
      ckpt.restore({"w": jnp.ones((3, 2), jnp.bfloat16), "count": jnp.int32(0)})
    with pytest.raises(ValueError, match=r"extra: in the target state but not in the checkpoint"):
      ckpt.restore(dict(state, extra=jnp.zeros(())))
    with pytest.raises(FileNotFoundError, match=r"step=8.*have \[7\]"):
      ckpt.restore(state, step=8)
    with pytest.raises(ValueError, match="step=7 already exists"):
      ckpt.save(state, step=7)
    with pytest.raises(ValueError, match="pass step="):
      ckpt.save(state)
    with pytest.raises(ValueError, match="step=-1"):
      ckpt.save(state, step=-1)


def test_bad_checkpointer_arguments(tmp_path):
  with pytest.raises(ValueError, match="max_to_keep=0"):
    Checkpointer(tmp_path, max_to_keep=0)
  with pytest.raises(ValueError, match="save_interval_steps=0"):
    Checkpointer(tmp_path, save_interval_steps=0)
  with pytest.raises(TypeError, match="directory=3"):
    Checkpointer(3)
  with Checkpointer(tmp_path / "empty") as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.restore_or_init({"a": 1}) == ({"a": 1}, None)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
      ckpt.restore({"a": jnp.zeros(())})
