"""Sparse export of pruned parameters: BCOO leaves and a compact, pickle-free file.

After GSM and :func:`gsm_optax.prune`, most eligible weights are zero.
:func:`to_sparse` stores each eligible leaf as a
``jax.experimental.sparse.BCOO`` holding only its non-zeros, :func:`to_dense`
turns such a tree back into plain arrays, and :func:`save_sparse` /
:func:`load_sparse` write and read it as one ``.npz`` file of plain numeric
arrays plus a JSON description of the tree (no pickled objects, so loading an
untrusted file runs no code).

To run a Flax model on the result, densify at load (``to_dense``): the logits
are then bit-identical to the dense pruned model's, every model works, and the
dense matmul is what CPUs and GPUs run fastest at these sizes.
``jax.experimental.sparse.sparsify(model.apply)`` also accepts the BCOO tree,
but only for models whose every primitive has a sparse rule: in jax 0.10 it
fails on ``jax.nn.relu`` (a ``custom_jvp``: ``KeyError: 'subfuns'``), so
e.g. :class:`gsm_optax.experiments.cli.MLP` cannot be sparsified, and its sums run in a
different order (logits equal up to float rounding, not bit for bit).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gsm_optax import eligibility

PyTree = Any

_FORMAT = "gsm_optax.sparse/1"

__all__ = ["load_sparse", "save_sparse", "to_dense", "to_sparse"]


def _bcoo() -> type:
  """``jax.experimental.sparse.BCOO``, imported on first use: it adds a third to the package's
  import time, and only the sparse export needs it."""
  from jax.experimental import sparse as jsparse

  return jsparse.BCOO


def _is_bcoo(x: Any) -> bool:
  # Nothing can be a BCOO before jax.experimental.sparse is imported.
  module = sys.modules.get("jax.experimental.sparse")
  return module is not None and isinstance(x, module.BCOO)


def to_sparse(params: PyTree, *, eligible: eligibility.Eligible = None) -> PyTree:
  """Stores every eligible leaf as a ``BCOO`` of its non-zero entries.

  Runs on the host (the number of non-zeros of each leaf fixes its BCOO's
  size), so call it outside ``jit``, typically once after
  :func:`gsm_optax.prune`. Leaves that are not eligible (biases, norms) and
  scalars stay dense. Entries equal to zero are dropped, ``-0.0`` included (it
  comes back as ``+0.0``); NaN and inf entries are kept.

  Args:
    params: the (pruned) parameters.
    eligible: which leaves to make sparse: None for every floating point array of rank
      >= 2 (the default pruning rule), or a pytree of bools / a callable, as in
      :func:`gsm_optax.keep_top_gradients`.

  Returns:
    A pytree like ``params`` whose eligible leaves are
    ``jax.experimental.sparse.BCOO`` arrays with exactly as many stored
    entries as non-zeros, in row-major order.

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import to_sparse, to_dense
    >>> sp = to_sparse({"w": jnp.array([[0., 2.], [0., 0.]]), "b": jnp.ones(2)})
    >>> sp["w"].nse
    1
    >>> to_dense(sp)["w"]
    Array([[0., 2.],
           [0., 0.]], dtype=float32)
  """
  if any(_is_bcoo(x) for x in jax.tree_util.tree_leaves(params, is_leaf=_is_bcoo)):
    raise TypeError("to_sparse got BCOO leaves: params are already sparse.")
  flags = jax.tree_util.tree_leaves(eligibility.resolve_eligible(eligible, params))
  leaves, treedef = jax.tree_util.tree_flatten(params)
  out = []
  for leaf, flag in zip(leaves, flags, strict=True):
    if flag and jnp.ndim(leaf) >= 1:
      # NumPy on the host, not jnp: XLA on CPU flushes subnormals to zero in
      # comparisons, which would drop tiny non-zero weights.
      value = np.asarray(jax.device_get(leaf))
      indices = np.stack(np.nonzero(value), axis=-1).astype(np.int32)
      indices = indices.reshape(-1, value.ndim)
      data = jnp.asarray(value[tuple(indices.T)])
      leaf = _bcoo()((data, jnp.asarray(indices)), shape=value.shape,
                     indices_sorted=True, unique_indices=True)
    out.append(leaf)
  return jax.tree_util.tree_unflatten(treedef, out)


def to_dense(params: PyTree) -> PyTree:
  """Turns every ``BCOO`` leaf back into a dense array; other leaves are unchanged.

  Runs on the host, bit-exactly (subnormal values included); inside ``jit``
  use ``BCOO.todense`` instead.

  Args:
    params: a pytree that may hold ``BCOO`` leaves (e.g. from
      :func:`to_sparse` or :func:`load_sparse`).

  Returns:
    The same pytree with only dense arrays, ready for ``model.apply``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gsm_optax import to_dense, to_sparse
    >>> to_dense(to_sparse({"w": jnp.array([0., 3.])}))["w"]
    Array([0., 3.], dtype=float32)
  """
  return jax.tree_util.tree_map(
      lambda x: _bcoo_to_dense(x) if _is_bcoo(x) else x, params, is_leaf=_is_bcoo
  )


def _bcoo_to_dense(x: Any) -> jax.Array:
  """Scatters on the host: ``BCOO.todense`` on CPU flushes subnormal values to 0."""
  if x.n_batch or x.n_dense:
    return x.todense()
  data = np.asarray(jax.device_get(x.data))
  indices = np.asarray(jax.device_get(x.indices))
  out = np.zeros(x.shape, data.dtype)
  out[tuple(indices.T)] = data
  return jnp.asarray(out)


def _describe(node: Any, path: str, leaves: list) -> Any:
  """JSON description of a pytree of dicts, lists, tuples and None."""
  if isinstance(node, dict) or type(node).__name__ == "FrozenDict":
    items = []
    for key in sorted(node):
      if not isinstance(key, str):
        raise TypeError(f"save_sparse needs string dict keys; got key {key!r} in params{path}.")
      items.append([key, _describe(node[key], f"{path}[{key!r}]", leaves)])
    return {"dict": items}
  if isinstance(node, (list, tuple)) and not hasattr(node, "_fields"):
    kind = "list" if isinstance(node, list) else "tuple"
    return {kind: [_describe(x, f"{path}[{i}]", leaves) for i, x in enumerate(node)]}
  if node is None:
    return None
  if _is_bcoo(node) or isinstance(node, (jax.Array, np.ndarray, np.generic, int, float)):
    leaves.append(node)
    return {"leaf": len(leaves) - 1}
  raise TypeError(
      f"save_sparse saves pytrees of dicts, lists, tuples and arrays; got a"
      f" {type(node).__name__} at params{path}."
  )


def _build(desc: Any, leaves: list) -> Any:
  if desc is None:
    return None
  if "dict" in desc:
    return {key: _build(sub, leaves) for key, sub in desc["dict"]}
  if "list" in desc:
    return [_build(sub, leaves) for sub in desc["list"]]
  if "tuple" in desc:
    return tuple(_build(sub, leaves) for sub in desc["tuple"])
  return leaves[desc["leaf"]]


def _raw(x: np.ndarray) -> np.ndarray:
  """The bytes of ``x`` as unsigned integers: npz-safe for bfloat16 too."""
  return x.view(f"u{x.dtype.itemsize}") if x.dtype != bool else x


def _index_dtype(size: int) -> Any:
  for dtype in (np.uint8, np.uint16, np.uint32):
    if size <= np.iinfo(dtype).max + 1:
      return dtype
  return np.uint64


def save_sparse(path: str | os.PathLike, params: PyTree, *,
                eligible: eligibility.Eligible = None) -> None:
  """Writes pruned parameters to a compact ``.npz`` file.

  Each sparse leaf is stored as its non-zero values and the gaps between
  their sorted row-major positions (in the narrowest unsigned integer type
  that fits), each dense leaf as its values, every leaf with its dtype name
  (so bfloat16 round-trips), plus a JSON description of the tree, all in a
  zip-compressed ``.npz``. Nothing is pickled.

  Args:
    path: the file to write (``.npz`` is appended by NumPy if missing).
    params: dense parameters (made sparse with :func:`to_sparse` and
      ``eligible``) or a tree that already holds ``BCOO`` leaves. Containers
      must be dicts with string keys, lists or tuples.
    eligible: which leaves to make sparse when ``params`` is dense; see
      :func:`to_sparse`.

  Example:
    >>> import os, tempfile, jax.numpy as jnp
    >>> from gsm_optax import save_sparse, load_sparse, to_dense
    >>> path = os.path.join(tempfile.mkdtemp(), "pruned.npz")
    >>> save_sparse(path, {"w": jnp.array([[0., 2.], [0., 0.]]), "b": jnp.ones(2)})
    >>> to_dense(load_sparse(path))["w"]
    Array([[0., 2.],
           [0., 0.]], dtype=float32)
  """
  if not any(_is_bcoo(x) for x in jax.tree_util.tree_leaves(params, is_leaf=_is_bcoo)):
    params = to_sparse(params, eligible=eligible)
  leaves: list = []
  tree = _describe(params, "", leaves)
  arrays: dict[str, Any] = {"format": np.array(_FORMAT), "tree": np.array(json.dumps(tree))}
  for i, leaf in enumerate(leaves):
    if _is_bcoo(leaf):
      if leaf.n_batch or leaf.n_dense:
        raise ValueError(f"save_sparse stores BCOO without batch or dense dimensions; leaf {i}"
                         f" has n_batch={leaf.n_batch}, n_dense={leaf.n_dense}.")
      values = np.asarray(jax.device_get(leaf.data))
      indices = np.asarray(jax.device_get(leaf.indices))
      flat = np.ravel_multi_index(tuple(indices.T), leaf.shape) if indices.size else (
          np.zeros(indices.shape[0], np.int64))
      order = np.argsort(flat, kind="stable")
      flat, values = flat[order], values[order]
      if np.any(np.diff(flat) == 0):
        raise ValueError(f"BCOO leaf {i} has duplicate indices; call .sum_duplicates() first.")
      # Gaps between sorted positions: small numbers in a narrow type, which
      # compress well (the values, trained floats, hardly do).
      gaps = np.diff(flat, prepend=0)
      arrays[f"{i}/values"] = _raw(values)
      arrays[f"{i}/index_gaps"] = gaps.astype(_index_dtype(int(gaps.max(initial=0)) + 1))
      arrays[f"{i}/shape"] = np.asarray(leaf.shape, np.int64)
    else:
      values = np.asarray(jax.device_get(leaf))
      arrays[f"{i}/dense"] = _raw(values)
    arrays[f"{i}/dtype"] = np.array(values.dtype.name)
  np.savez_compressed(path, **arrays)


def load_sparse(path: str | os.PathLike) -> PyTree:
  """Reads a file written by :func:`save_sparse`.

  Args:
    path: the ``.npz`` file.

  Returns:
    The parameters, with ``BCOO`` leaves where they were saved sparse (apply
    :func:`to_dense` to run a model on them) and the saved dtypes.

  Raises:
    ValueError: when the file is not a ``save_sparse`` file.

  Example:
    >>> import os, tempfile, jax.numpy as jnp
    >>> from gsm_optax import load_sparse, save_sparse
    >>> path = os.path.join(tempfile.mkdtemp(), "pruned.npz")
    >>> save_sparse(path, {"w": jnp.array([[0., 2.], [0., 0.]])})
    >>> load_sparse(path)["w"].nse  # a BCOO holding the one non-zero
    1
  """
  with np.load(path, allow_pickle=False) as data:
    if "format" not in data.files or str(data["format"]) != _FORMAT:
      raise ValueError(f"{os.fspath(path)!r} is not a gsm_optax.save_sparse file"
                       f" (expected format {_FORMAT!r}).")
    tree = json.loads(str(data["tree"]))
    leaves = []
    i = 0
    while f"{i}/dtype" in data.files:
      dtype = jnp.dtype(str(data[f"{i}/dtype"]))
      if f"{i}/dense" in data.files:
        leaves.append(jnp.asarray(data[f"{i}/dense"].view(dtype)))
      else:
        shape = tuple(int(s) for s in data[f"{i}/shape"])
        flat = np.cumsum(data[f"{i}/index_gaps"], dtype=np.int64)
        indices = np.stack(np.unravel_index(flat, shape), axis=-1).astype(np.int32)
        indices = indices.reshape(flat.shape[0], len(shape))
        values = jnp.asarray(data[f"{i}/values"].view(dtype))
        leaves.append(_bcoo()((values, jnp.asarray(indices)), shape=shape,
                              indices_sorted=True, unique_indices=True))
      i += 1
  return _build(tree, leaves)
