"""A gsm() step over ResNet-50's parameter shapes, lowered for TPU and CUDA with
jax.export (no device needed), holds no weight-sized scatter or sort: on TPUs a
scatter runs largely as a loop over its updates, on GPUs as one atomic each."""

import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gsm_optax
from benchmarks.shapes import resnet50_shapes

LIMIT = 2**20


def _elements(tensor_type: str) -> int:
  dims = tensor_type.split("x")[:-1]
  return int(np.prod([int(d) for d in dims])) if dims else 1


def scatters_and_sorts(mlir: str) -> tuple[list[int], list[int]]:
  """Updates of each ``stablehlo.scatter`` and elements of each ``stablehlo.sort``.

  Both carry a region (the update or comparison), so their operand types follow
  on the line that closes it: ``}) : (operand types) -> result types``.
  """
  scatters, sorts, pending = [], [], None
  for line in mlir.splitlines():
    opened = re.search(r'"stablehlo\.(scatter|sort)"\(', line)
    if opened:
      pending = opened.group(1)
    closed = re.match(r"\s*\}\) : \((.*)\) ->", line)
    if closed and pending:
      types = re.findall(r"tensor<([^>]*)>", closed.group(1))
      if pending == "scatter":
        scatters.append(_elements(types[-1]))  # the updates come last
      else:
        sorts.append(_elements(types[0]))
      pending = None
  return scatters, sorts


@pytest.fixture(scope="module")
def step_and_args():
  shapes = resnet50_shapes()
  params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
  tx = gsm_optax.gsm(0.1, 0.1, momentum=0.9, weight_decay=1e-4)
  state = jax.eval_shape(tx.init, params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step), (params, state, params)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_no_weight_sized_scatter_or_sort(step_and_args, platform):
  step, args = step_and_args
  mlir = jax.export.export(step, platforms=[platform])(*args).mlir_module()
  scatters, sorts = scatters_and_sorts(mlir)
  assert not [s for s in scatters if s > LIMIT], scatters
  assert not [s for s in sorts if s > LIMIT], sorts
  assert sorts  # the sample and the band are sorted: the parser sees sorts


def test_parser_sees_a_weight_sized_scatter():
  def histogram(x):
    return jnp.zeros(65536, jnp.int32).at[x].add(1)

  x = jax.ShapeDtypeStruct((2**21,), jnp.int32)
  mlir = jax.export.export(jax.jit(histogram), platforms=["tpu"])(x).mlir_module()
  scatters, _ = scatters_and_sorts(mlir)
  assert max(scatters) == 2**21
  sort_mlir = jax.export.export(jax.jit(jnp.sort), platforms=["cuda"])(
      jax.ShapeDtypeStruct((2**21,), jnp.float32)).mlir_module()
  assert max(scatters_and_sorts(sort_mlir)[1]) == 2**21


def _cuda_ops(fn, *args) -> int:
  mlir = jax.export.export(jax.jit(fn), platforms=["cuda"])(*args).mlir_module()
  return len(re.findall(r"\bstablehlo\.[a-z_]+", mlir))


def test_module_does_not_grow_with_the_leaves():
  """The passes are written once over one buffer of keys: a leaf adds only its
  keys' write into the buffer and its mask's slice (the per-leaf passes of
  before added ~570 operations a leaf)."""
  def ops(num_leaves):
    scores = [jax.ShapeDtypeStruct((64, 48), jnp.float32)] * num_leaves
    return _cuda_ops(lambda s: gsm_optax.global_topk_mask(s, 1000), scores)

  assert (ops(40) - ops(10)) / 30 <= 30


def test_temporaries_are_one_buffer_of_keys():
  """Beyond the masks it returns, the selection of ``|g * w|`` holds one key per
  score (4 bytes), its histograms and the padding to a multiple of 65,536."""
  shapes = [(512, 320), (320, 640), (64, 1000), (7, 3, 3, 100)]
  structs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
  n = sum(int(np.prod(s)) for s in shapes)

  def select(grads, params):
    return gsm_optax.global_topk_mask([jnp.abs(g * w) for g, w in zip(grads, params)], n // 10)

  compiled = jax.jit(select).lower(structs, structs).compile()
  assert compiled.memory_analysis().temp_size_in_bytes <= 4 * n + 2**20


def _distinct_cpu_kernels(num_leaves: int, mesh: jax.sharding.Mesh | None = None) -> int:
  """Distinct fused computations in the CPU executable of a gsm update on
  ``num_leaves`` leaves of one shape (names and metadata aside); under ``mesh``
  (``jax.set_mesh``) the leaves may be sharded and take the sharded path."""
  params = [jax.ShapeDtypeStruct((64, 48), jnp.float32)] * num_leaves
  tx = gsm_optax.gsm(0.1, 0.1, momentum=0.9)
  state = jax.eval_shape(tx.init, params)
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    text = jax.jit(tx.update).lower(params, state, params).compile().as_text()
  bodies = re.findall(r"^%fused\S* .*?\{\n(.*?)\n\}", text, re.M | re.S)
  assert bodies  # the parser sees the fused computations
  return len({re.sub(r"%[\w.-]+", "%x", re.sub(r"metadata=\{.*?\}", "", body))
              for body in bodies})


def test_leaves_of_one_shape_share_their_cpu_kernels():
  """XLA:CPU compiles one kernel per distinct fused computation: a leaf's
  position written in as a constant would make every leaf's kernels distinct,
  and the compile time grow with the leaves (docs/PERFORMANCE.md)."""
  assert _distinct_cpu_kernels(12) == _distinct_cpu_kernels(3)


def test_leaves_that_may_be_sharded_share_their_cpu_kernels():
  """The same on the sharded path (a mesh in context): its tie search and its
  masks take each leaf's position as an operand too."""
  mesh = jax.make_mesh((1,), ("x",))
  assert _distinct_cpu_kernels(12, mesh) == _distinct_cpu_kernels(3, mesh)
