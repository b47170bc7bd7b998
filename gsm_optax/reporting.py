"""Sparsity reports: how many weights each leaf keeps."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from gsm_optax import eligibility

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LeafSparsity:
  """One parameter leaf of a :class:`SparsityReport`.

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import sparsity_report
    >>> sparsity_report({"w": jnp.array([[0., 1.], [0., 0.]])}).leaves[0].nonzeros
    1
  """

  path: str
  shape: tuple[int, ...]
  size: int
  nonzeros: int
  eligible: bool

  @property
  def density(self) -> float:
    return self.nonzeros / self.size if self.size else 0.0


@dataclasses.dataclass(frozen=True)
class SparsityReport:
  """Per-leaf and total non-zero counts of a params pytree.

  ``str(report)`` is a table for people; the fields are for programs.

  Attributes:
    leaves: one :class:`LeafSparsity` per parameter leaf, in flattening order.

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import sparsity_report
    >>> sparsity_report({"w": jnp.array([[0., 1.], [0., 0.]])}).nonzeros
    1
  """

  leaves: tuple[LeafSparsity, ...]

  @property
  def size(self) -> int:
    """Number of parameters in all leaves."""
    return sum(leaf.size for leaf in self.leaves)

  @property
  def nonzeros(self) -> int:
    """Number of non-zero parameters in all leaves."""
    return sum(leaf.nonzeros for leaf in self.leaves)

  @property
  def eligible_size(self) -> int:
    """Number of eligible (prunable) parameters."""
    return sum(leaf.size for leaf in self.leaves if leaf.eligible)

  @property
  def eligible_nonzeros(self) -> int:
    """Number of non-zero eligible parameters: what GSM's Q counts."""
    return sum(leaf.nonzeros for leaf in self.leaves if leaf.eligible)

  @property
  def density(self) -> float:
    """Non-zero fraction of the eligible parameters."""
    return self.eligible_nonzeros / max(self.eligible_size, 1)

  @property
  def compression(self) -> float:
    """Eligible parameters per non-zero eligible parameter (the paper's ratio)."""
    return self.eligible_size / self.eligible_nonzeros if self.eligible_nonzeros else float("inf")

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict of the totals and every leaf."""
    return {
        "size": self.size,
        "nonzeros": self.nonzeros,
        "eligible_size": self.eligible_size,
        "eligible_nonzeros": self.eligible_nonzeros,
        "density": self.density,
        "compression": self.compression,
        "leaves": [
            dict(dataclasses.asdict(leaf), shape=list(leaf.shape), density=leaf.density)
            for leaf in self.leaves
        ],
    }

  def __str__(self) -> str:
    rows = [("parameter", "shape", "size", "nonzeros", "density", "")]
    for leaf in self.leaves:
      rows.append((
          leaf.path,
          "x".join(map(str, leaf.shape)) or "scalar",
          f"{leaf.size:,}",
          f"{leaf.nonzeros:,}",
          f"{leaf.density:.4f}",
          "" if leaf.eligible else "(not pruned)",
      ))
    rows.append((
        "eligible total", "", f"{self.eligible_size:,}", f"{self.eligible_nonzeros:,}",
        f"{self.density:.4f}", f"compression {self.compression:.1f}x",
    ))
    rows.append(("all parameters", "", f"{self.size:,}", f"{self.nonzeros:,}",
                 f"{self.nonzeros / max(self.size, 1):.4f}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
      cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
      cells += [c.rjust(w) for c, w in zip(row[2:5], widths[2:5])] + [row[5]]
      lines.append("  ".join(cells).rstrip())
      if i == 0 or i == len(rows) - 3:
        lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def sparsity_report(params: PyTree, *, eligible: eligibility.Eligible = None) -> SparsityReport:
  """Counts the non-zeros of every leaf of ``params`` (on the host).

  Args:
    params: the parameters.
    eligible: which parameters are prunable, by the same rule as
      :func:`gsm_optax.prune` (see :func:`gsm_optax.keep_top_gradients`); the
      totals and the compression ratio count eligible parameters only, as the
      paper does.

  Raises:
    TypeError: when ``eligible`` marks a leaf that is not floating point, as
      :func:`gsm_optax.prune` does.

  Returns:
    A :class:`SparsityReport`; ``print(report)`` shows a table.

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import sparsity_report
    >>> report = sparsity_report({"w": jnp.array([[0., 1.], [0., 0.]]), "b": jnp.ones(2)})
    >>> report.compression
    4.0
  """
  flags = eligibility.eligible_flags(eligible, params)
  leaves = []
  for flag, (path, leaf) in zip(flags, jax.tree_util.tree_leaves_with_path(params)):
    value = np.asarray(jax.device_get(leaf))
    leaves.append(LeafSparsity(
        path=jax.tree_util.keystr(path),
        shape=tuple(value.shape),
        size=int(value.size),
        nonzeros=int(np.count_nonzero(value)),
        eligible=flag,
    ))
  return SparsityReport(tuple(leaves))
