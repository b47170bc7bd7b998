"""A small GSM training run that checkpoints, resumes and can kill itself.

Run by tests/test_resume.py in fresh processes:

  python tests/resume_worker.py --until 100 --out final.npz
  python tests/resume_worker.py --ckpt DIR --every 25 --until 50
  python tests/resume_worker.py --ckpt DIR --resume --until 100 --out resumed.npz
  python tests/resume_worker.py --ckpt DIR --every 10 --until 100 --kill-at 37

The batch of each step is drawn from ``state.step``, the keep ratio and the
learning rate follow schedules of the optimizer's own counters, and one kernel
is bfloat16, so a resumed run can only match if all of that state came back.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import gsm_optax
from gsm_optax.checkpointing import Checkpointer
from gsm_optax.experiments.cli import MLP

BATCH = 64


def data():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((512, 64)).astype(np.float32)
  teacher = rng.standard_normal((64, 10)).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(np.argmax(x @ teacher, -1).astype(np.int32))


def initial_state() -> train_state.TrainState:
  """The state at step 0; built in one jitted call (eager init compiles dozens of ops)."""
  model = MLP((32, 16, 10))
  tx = gsm_optax.gsm(
      optax.warmup_cosine_decay_schedule(0.0, 0.05, 10, 100),
      optax.linear_schedule(1.0, 0.1, 60),
      momentum=0.9,
      nesterov=True,
  )

  @jax.jit
  def create():
    params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 64)))["params"]
    params["Dense_1"]["kernel"] = params["Dense_1"]["kernel"].astype(jnp.bfloat16)
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  return create()


@jax.jit
def train_step(state, x, y):
  idx = jax.random.permutation(jax.random.fold_in(jax.random.PRNGKey(1), state.step), x.shape[0])
  idx = idx[:BATCH]

  def loss_fn(params):
    logits = state.apply_fn({"params": params}, x[idx]).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()

  return state.apply_gradients(grads=jax.grad(loss_fn)(state.params))


def state_arrays(state) -> dict[str, np.ndarray]:
  """Every array of the state, as raw bytes views keyed by path (bf16 safe)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path((state.step, state.params,
                                                          state.opt_state))[0]:
    value = np.asarray(jax.device_get(leaf))
    out[jax.tree_util.keystr(path) + "|" + str(value.dtype)] = value.view(f"u{value.itemsize}")
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--ckpt")
  p.add_argument("--resume", action="store_true")
  p.add_argument("--restore-step", type=int, help="resume from this step, not the newest")
  p.add_argument("--until", type=int, required=True)
  p.add_argument("--every", type=int, default=0)
  p.add_argument("--kill-at", type=int, default=-1, help="SIGKILL self after this step")
  p.add_argument("--kill-after-save", type=int, default=-1,
                 help="SIGKILL self right after starting the async save of this step")
  p.add_argument("--reset-opt-state", action="store_true",
                 help="after restoring, start the optimizer state afresh (a wrong resume)")
  p.add_argument("--sync", action="store_true", help="save synchronously")
  p.add_argument("--out")
  args = p.parse_args(argv)
  x, y = data()
  state = initial_state()
  ckpt = Checkpointer(args.ckpt, max_to_keep=3, async_save=not args.sync) if args.ckpt else None
  restored = None
  if args.resume:
    if args.restore_step is None:
      state, restored = ckpt.restore_or_init(state)
    else:
      state, restored = ckpt.restore(state, step=args.restore_step), args.restore_step
    if args.reset_opt_state:
      state = state.replace(opt_state=state.tx.init(state.params))
  while int(state.step) < args.until:
    state = train_step(state, x, y)
    step = int(state.step)
    if ckpt is not None and args.every and step % args.every == 0:
      ckpt.save(state)
      if step == args.kill_after_save:
        os.kill(os.getpid(), signal.SIGKILL)
    if step == args.kill_at:
      os.kill(os.getpid(), signal.SIGKILL)
  if ckpt is not None:
    ckpt.close()
  if args.out:
    np.savez(args.out, **state_arrays(state))
  stats = gsm_optax.selection_stats(state.opt_state)
  print(json.dumps({"restored": restored, "step": int(state.step),
                    "keep_count": int(stats.keep_count)}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
