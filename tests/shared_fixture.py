"""Run an expensive fixture body once per test session, across pytest-xdist workers.

A module-scoped fixture runs once per xdist worker, so with ``-n 2`` the
subprocess runs of the resume and determinism tests would happen twice. This
helper runs the body in the first worker that needs it, under a file lock in
the session's shared temporary directory, and lets the others reuse its
output directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
from collections.abc import Callable
from typing import Any


def once_per_session(tmp_path_factory, name: str, body: Callable[[pathlib.Path], Any]) -> Any:
  """Returns ``body(directory)``'s JSON-able result, computed once per session.

  Args:
    tmp_path_factory: pytest's fixture of that name.
    name: a unique name for this body.
    body: writes its outputs into the directory it gets; returns JSON-able data.

  Returns:
    The result and the directory: ``(result, directory)``.
  """
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker has a sub-directory
    root = root.parent
  directory = root / f"shared-{name}"
  directory.mkdir(parents=True, exist_ok=True)
  with open(root / f"shared-{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      done = directory / "result.json"
      if done.exists():
        return json.loads(done.read_text()), directory
      result = body(directory)
      done.write_text(json.dumps(result))
      return result, directory
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
