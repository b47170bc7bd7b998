"""The paper's MNIST models as Flax modules: LeNet-300-100 and LeNet-5 (Caffe).

Both take normalised images shaped ``[batch, 28, 28, 1]`` (or ``[batch, 28, 28]``)
and return logits ``[batch, 10]``. Kernels are Xavier-uniform and biases zero,
as in the authors' code.

References:
  LeCun et al., "Gradient-based learning applied to document recognition", 1998.
  Ding et al., "Global Sparse Momentum SGD for Pruning Very Deep Neural Networks",
  NeurIPS 2019, Section 4.1.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["LeNet300100", "LeNet5", "MODELS", "count_params", "exported_model"]

_xavier = nn.initializers.xavier_uniform()


class LeNet300100(nn.Module):
  """784-300-100-10 ReLU MLP: 266,200 kernel weights + 410 biases.

  Attributes:
    num_classes: the width of the last layer.
    hidden: the widths of the hidden layers ``fc1``, ``fc2``, ... (an exported,
      narrower model has fewer).
    inputs: the pixel indices of the flattened image fed to ``fc1``, or None for all
      (:attr:`gsm_optax.export.Exported.input_indices`).
  """

  num_classes: int = 10
  hidden: tuple[int, ...] = (300, 100)
  inputs: tuple[int, ...] | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    if self.inputs is not None:
      x = jnp.take(x, jnp.asarray(self.inputs, jnp.int32), axis=1)
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, kernel_init=_xavier, name=f"fc{i + 1}")(x))
    last = f"fc{len(self.hidden) + 1}"
    return nn.Dense(self.num_classes, kernel_init=_xavier, name=last)(x)


class LeNet5(nn.Module):
  """LeNet-5, Caffe variant: conv 20@5x5, pool 2, conv 50@5x5, pool 2, dense 500, dense 10.

  ReLU after both convolutions and the first dense layer, as in the authors'
  code. 430,500 kernel weights + 580 biases = 431,080 parameters.

  Attributes:
    num_classes: the width of the last layer.
    features: the widths of ``conv1``, ``conv2`` and ``fc1``.
    fc1_inputs: the indices of the flattened ``conv2`` features (NHWC order) fed to
      ``fc1``, or None for all (:attr:`gsm_optax.export.Exported.input_indices`).
  """

  num_classes: int = 10
  features: tuple[int, int, int] = (20, 50, 500)
  fc1_inputs: tuple[int, ...] | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim == 3:
      x = x[..., None]
    x = _Conv5x5(self.features[0], name="conv1")(x)
    x = _max_pool_2x2(nn.relu(x))
    x = _Conv5x5(self.features[1], name="conv2")(x)
    x = _max_pool_2x2(nn.relu(x))
    x = x.reshape(x.shape[0], -1)
    if self.fc1_inputs is not None:
      x = jnp.take(x, jnp.asarray(self.fc1_inputs, jnp.int32), axis=1)
    x = nn.relu(nn.Dense(self.features[2], kernel_init=_xavier, name="fc1")(x))
    return nn.Dense(self.num_classes, kernel_init=_xavier, name="fc2")(x)


class _Conv5x5(nn.Module):
  """A 5x5 'VALID' convolution with ``nn.Conv``'s parameters, computed as one matmul.

  The 25 shifted views of the input are concatenated along the channels
  (im2col) and multiplied by the kernel reshaped to ``[25 * in, out]``. Same
  parameters (``kernel [5, 5, in, out]``, ``bias [out]``) and values as
  ``nn.Conv(out, (5, 5), padding="VALID")``, but on XLA's CPU backend a
  convolution's gradient inside a ``lax.scan`` (how an epoch is run) is about
  12x slower than this matmul, which is what made LeNet-5 training take hours.
  """

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param("kernel", _xavier, (5, 5, channels, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    h, w = x.shape[1] - 4, x.shape[2] - 4
    patches = jnp.concatenate(
        [x[:, i:i + h, j:j + w, :] for i in range(5) for j in range(5)], axis=-1)
    return patches @ kernel.reshape(25 * channels, self.features).astype(x.dtype) + bias


def _max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling, stride 2, on even-sized NHWC maps.

  The same values as ``nn.max_pool(x, (2, 2), strides=(2, 2))``, written as a
  reshape and a max: its gradient compiles to element-wise selects instead of
  XLA's ``select_and_scatter``, which makes a LeNet-5 training step on a CPU
  about 1.4x faster.
  """
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


MODELS: dict[str, type[nn.Module]] = {"lenet300": LeNet300100, "lenet5": LeNet5}


def exported_model(name: str, exported) -> nn.Module:
  """The narrower model that runs the parameters of a :func:`gsm_optax.export.export_pruned`.

  Args:
    name: ``"lenet300"`` or ``"lenet5"``.
    exported: the :class:`gsm_optax.export.Exported` of that model's pruned parameters.

  Returns:
    The model with the exported widths, gathering the kept inputs of its first dense layer;
    apply it to ``{"params": exported.params}``.

  Raises:
    ValueError: naming the model when it is not one of :data:`MODELS`, or when a layer other
      than ``fc1`` must gather its inputs (these models cannot).
  """
  if name not in MODELS:
    raise ValueError(f"no exported model for name={name!r}; choose one of {sorted(MODELS)}.")
  gathers = sorted(k for k, v in exported.input_indices.items() if v is not None and k != "fc1")
  if gathers:
    raise ValueError(f"{name} can gather the inputs of fc1 only; exported.input_indices has"
                     f" kept inputs for {gathers} too.")
  inputs = exported.input_indices.get("fc1")
  inputs = None if inputs is None else tuple(int(i) for i in inputs)
  w = exported.widths
  if name == "lenet300":
    return LeNet300100(num_classes=w["fc3"], hidden=(w["fc1"], w["fc2"]), inputs=inputs)
  return LeNet5(num_classes=w["fc2"], features=(w["conv1"], w["conv2"], w["fc1"]),
                fc1_inputs=inputs)


def count_params(params) -> int:
  """Total number of scalars in a parameter pytree."""
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def structured_groups(model: str, params, *, per_mac: bool = False) -> tuple[tuple, object]:
  """The groups structured GSM ranks in the paper's models, and a budget in their MACs.

  LeNet-300-100: the input features of its three dense layers (the pixels, then the hidden
  units of each layer, which are unused once their row is pruned). LeNet-5: the filters of its
  two convolutions (with their biases) and the input features of its two dense layers, as in
  the widths reported by Wen et al. (SSL) and Neklyudov et al. (SBP).

  Returns:
    The groups, and :func:`gsm_optax.mac_costs` of them: the multiply-accumulates per image
    of every layer, scaled by the fractions of its input and output units kept (groups
    ranked by score per MAC with ``per_mac``).
  """
  from gsm_optax import MacTerm, input_groups, mac_costs, output_groups

  def named(names):
    return lambda p: {k: {kk: k in names and kk == "kernel" for kk in v} for k, v in p.items()}

  if model == "lenet300":
    spec = input_groups(params)
    terms = [MacTerm(784 * 300, ("fc1 inputs", "fc2 inputs")),
             MacTerm(300 * 100, ("fc2 inputs", "fc3 inputs")),
             MacTerm(100 * 10, ("fc3 inputs",))]
  elif model == "lenet5":
    spec = (output_groups(params, where=named(("conv1", "conv2")))
            + input_groups(params, where=named(("fc1", "fc2"))))
    terms = [MacTerm(24 * 24 * 25 * 1 * 20, ("conv1",)),  # 28 - 4 = 24
             MacTerm(8 * 8 * 25 * 20 * 50, ("conv1", "conv2")),  # pooled 12 - 4 = 8
             MacTerm(800 * 500, ("fc1 inputs", "fc2 inputs")),
             MacTerm(500 * 10, ("fc2 inputs",))]
  else:
    raise ValueError(f"no structured groups for model={model!r}; choose one of {sorted(MODELS)}.")
  return spec, mac_costs(spec, terms, per_mac=per_mac)
