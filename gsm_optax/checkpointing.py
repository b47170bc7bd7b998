"""Exact, crash-safe checkpoints of a training state with orbax.

A GSM run is only resumable if everything the next update depends on is saved:
the parameters, the whole optimizer state (the selection stage's step counter,
which drives the keep-ratio schedule, the momentum buffers, the learning-rate
schedule's counter) and the training step. :class:`Checkpointer` saves any
pytree of those, typically a ``flax.training.train_state.TrainState``, with an
``orbax.checkpoint.CheckpointManager`` and restores it into the structure,
dtypes and shardings of a freshly built state, so a new process continues
bit-for-bit where the old one stopped.

Crash safety comes from orbax's commit protocol: a checkpoint is written to a
temporary directory (``<step>.orbax-checkpoint-tmp-*``) and renamed to
``<step>`` only once every file is written, so a process killed mid-save leaves
a temporary directory that is never listed and never restored (and is replaced
if that step is saved again). It is not deleted when a directory is opened: a
reader opening it while a trainer is saving must not remove the trainer's
in-progress write.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any

__all__ = ["Checkpointer"]


def _key_name(key: Any) -> str:
  """One path element as orbax names it: dict keys, attribute names, indices."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _leaf_specs(tree: PyTree) -> dict[tuple[str, ...], Any]:
  """Maps each leaf's normalised path to the leaf."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(_key_name(k) for k in path): leaf for path, leaf in leaves}


def _check_compatible(stored: PyTree, target: PyTree, step: int, directory: str) -> None:
  """Raises a ValueError unless the checkpoint holds exactly target's arrays.

  orbax would silently cast a float32 checkpoint into a bfloat16 target; an
  exact resume must refuse that instead.
  """
  saved = _leaf_specs(stored)
  wanted = _leaf_specs(target)
  problems = []
  for path in sorted(set(wanted) - set(saved))[:5]:
    problems.append(f"{'.'.join(path)}: in the target state but not in the checkpoint")
  for path in sorted(set(saved) - set(wanted))[:5]:
    problems.append(f"{'.'.join(path)}: in the checkpoint but not in the target state")
  for path in sorted(set(saved) & set(wanted)):
    meta, leaf = saved[path], wanted[path]
    if not isinstance(leaf, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)):
      continue  # Python scalars (e.g. TrainState.create's step=0) adopt the stored value.
    shape, dtype = getattr(meta, "shape", None), getattr(meta, "dtype", None)
    if shape is not None and tuple(shape) != tuple(leaf.shape):
      problems.append(f"{'.'.join(path)}: shape {tuple(shape)} saved, {tuple(leaf.shape)} wanted")
    elif dtype is not None and np.dtype(dtype) != np.dtype(leaf.dtype):
      problems.append(f"{'.'.join(path)}: dtype {np.dtype(dtype)} saved, {leaf.dtype} wanted")
  if problems:
    raise ValueError(
        f"checkpoint step {step} in {directory} does not match the target state (was the"
        " model, the optimizer or a parameter dtype changed?):\n  " + "\n  ".join(problems)
    )


class Checkpointer:
  """Saves and restores a training state (params, optimizer state, step).

  A thin layer over ``orbax.checkpoint.CheckpointManager`` that checks its
  arguments, names the step from the state, and restores into the exact
  structure, dtypes and shardings of a template state, refusing a checkpoint
  that does not match it rather than casting.

  Args:
    directory: where checkpoints live; one sub-directory per step. Created if
      missing.
    max_to_keep: how many of the newest checkpoints to keep (None: all).
    save_interval_steps: :meth:`save` writes only when ``step`` is a multiple
      of this (unless ``force=True``).
    async_save: write in a background thread, so training goes on while the
      files are written; :meth:`wait_until_finished` (called by :meth:`close`
      and by the next save) waits for it.

  Example:
    >>> import tempfile, jax, jax.numpy as jnp
    >>> from flax.training import train_state
    >>> from gsm_optax import gsm
    >>> from gsm_optax.checkpointing import Checkpointer
    >>> params = {"w": jnp.ones((4, 4)), "b": jnp.zeros(4)}
    >>> make = lambda: train_state.TrainState.create(
    ...     apply_fn=None, params=params, tx=gsm(0.1, 0.5))
    >>> state = make()
    >>> with Checkpointer(tempfile.mkdtemp()) as ckpt:
    ...   _ = ckpt.save(state.replace(step=10))
    ...   state, step = ckpt.restore_or_init(make())
    >>> step
    10
  """

  def __init__(
      self,
      directory: str | os.PathLike,
      *,
      max_to_keep: int | None = 3,
      save_interval_steps: int = 1,
      async_save: bool = True,
  ):
    if not isinstance(directory, (str, os.PathLike)):
      raise TypeError(f"directory must be a path; got directory={directory!r}.")
    if max_to_keep is not None and (
        isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1
    ):
      raise ValueError(f"max_to_keep must be None or an int >= 1; got max_to_keep={max_to_keep!r}.")
    if (isinstance(save_interval_steps, bool) or not isinstance(save_interval_steps, int)
        or save_interval_steps < 1):
      raise ValueError(
          "save_interval_steps must be an int >= 1; got"
          f" save_interval_steps={save_interval_steps!r}."
      )
    self._directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        save_interval_steps=save_interval_steps,
        enable_async_checkpointing=bool(async_save),
        create=True,
    )
    self._manager = ocp.CheckpointManager(
        self._directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
    )

  @property
  def directory(self) -> str:
    """The absolute checkpoint directory."""
    return self._directory

  def all_steps(self) -> list[int]:
    """The steps of every complete checkpoint, ascending (partial ones are never listed)."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None when there is none."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, state: PyTree, *, step: int | None = None, force: bool = False) -> bool:
    """Saves ``state`` as checkpoint ``step``.

    Args:
      state: a pytree of arrays, e.g. a ``TrainState``; static fields (the
        model's ``apply_fn``, the optimizer ``tx``) are not saved: they come
        from the template given to :meth:`restore`.
      step: the checkpoint's step; by default ``state.step``.
      force: save even when ``step`` is not a multiple of
        ``save_interval_steps``.

    Returns:
      Whether a checkpoint was written (or started, with ``async_save``).
    """
    if step is None:
      if not hasattr(state, "step"):
        raise ValueError(
            "save needs a step: pass step=... or a state with a .step field;"
            f" got a {type(state).__name__} without one."
        )
      step = state.step
    try:
      step_value = int(jax.device_get(step))
    except (TypeError, ValueError) as e:
      raise TypeError(f"step must be an integer; got step={step!r}.") from e
    if step_value < 0 or step_value != np.asarray(jax.device_get(step)):
      raise ValueError(f"step must be an integer >= 0; got step={step!r}.")
    if step_value in self._manager.all_steps():
      raise ValueError(f"a checkpoint for step={step_value} already exists in {self._directory}.")
    return self._manager.save(step_value, args=ocp.args.StandardSave(state), force=force)

  def restore(self, target: PyTree, *, step: int | None = None) -> PyTree:
    """Restores a checkpoint into the structure of ``target``.

    Args:
      target: a state of the same model and optimizer as the saved one, e.g. a
        freshly created ``TrainState``; its structure, dtypes and shardings
        are those of the result, and its static fields (``apply_fn``, ``tx``)
        are kept. Only its shapes and dtypes are read.
      step: which checkpoint; by default the newest complete one.

    Returns:
      The restored state.

    Raises:
      FileNotFoundError: when there is no (such) complete checkpoint.
      ValueError: when the checkpoint's arrays do not match ``target``'s in
        structure, shape or dtype.
    """
    self._manager.wait_until_finished()
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise FileNotFoundError(f"no complete checkpoint in {self._directory}.")
      step = steps[-1]
    elif step not in steps:
      raise FileNotFoundError(
          f"no complete checkpoint for step={step!r} in {self._directory}; have {steps}."
      )
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    _check_compatible(self._manager.item_metadata(step).tree, abstract, step, self._directory)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def restore_or_init(self, target: PyTree) -> tuple[PyTree, int | None]:
    """The newest complete checkpoint, or ``target`` itself when there is none.

    Args:
      target: a freshly initialised state (see :meth:`restore`).

    Returns:
      ``(state, step)``, with ``step`` None when nothing was restored.
    """
    step = self.latest_step()
    if step is None:
      return target, None
    return self.restore(target, step=step), step

  def wait_until_finished(self) -> None:
    """Blocks until a pending asynchronous save is complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's resources."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
