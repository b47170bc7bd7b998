"""The experiments' models as Flax modules, and which of their parameters are prunable.

The paper's MNIST models, LeNet-300-100 and LeNet-5 (Caffe), and two deep ones adapted to
28x28x1 images: a CIFAR-style ResNet-20 (the family of the paper's ResNet-56) and a small
vision transformer. Every model takes normalised images shaped ``[batch, 28, 28, 1]`` (or
``[batch, 28, 28]``) and ``train`` (BatchNorm's batch statistics and dropout in training; the
LeNets have neither), and returns logits ``[batch, 10]``. :data:`MODELS` names them;
:func:`eligible` says which parameters each prunes, and :data:`PRUNABLE` says it in words.

References:
  LeCun et al., "Gradient-based learning applied to document recognition", 1998.
  He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Section 4.2.
  Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021.
  Ding et al., "Global Sparse Momentum SGD for Pruning Very Deep Neural Networks",
  NeurIPS 2019, Section 4.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import gsm_optax

__all__ = ["MODELS", "PRUNABLE", "LeNet300100", "LeNet5", "ResNet20", "ViT", "count_params",
           "couple_model", "eligible", "narrow_options", "structured_groups", "width_sets"]

_xavier = nn.initializers.xavier_uniform()


class LeNet300100(nn.Module):
  """784-300-100-10 ReLU MLP: 266,200 kernel weights + 410 biases.

  Attributes:
    num_classes: the width of the last layer.
    hidden: the widths of the hidden layers ``fc1``, ``fc2``, ...
  """

  num_classes: int = 10
  hidden: tuple[int, ...] = (300, 100)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # no dropout, no normalisation
    x = x.reshape(x.shape[0], -1)
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
  """

  num_classes: int = 10
  features: tuple[int, int, int] = (20, 50, 500)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # no dropout, no normalisation
    if x.ndim == 3:
      x = x[..., None]
    x = _Conv5x5(self.features[0], name="conv1")(x)
    x = _max_pool_2x2(nn.relu(x))
    x = _Conv5x5(self.features[1], name="conv2")(x)
    x = _max_pool_2x2(nn.relu(x))
    x = x.reshape(x.shape[0], -1)
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


class _BasicBlock(nn.Module):
  """Two 3x3 convolutions with BatchNorm, and a projection shortcut where the shape changes.

  ``inner`` channels between the two convolutions (``features`` in He et al.'s block).
  """

  features: int
  stride: int
  inner: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = lambda n, k, s: nn.Conv(n, (k, k), (s, s), use_bias=False, kernel_init=_he_normal)
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    h = nn.relu(norm()(conv(self.inner, 3, self.stride)(x)))
    h = norm()(conv(self.features, 3, 1)(h))
    if x.shape[-1] != self.features or self.stride != 1:
      x = norm()(conv(self.features, 1, self.stride)(x))
    return nn.relu(h + x)


class ResNet20(nn.Module):
  """CIFAR-style ResNet-20 (He et al. 2016, Section 4.2) for 28x28x1 images.

  A 3x3 convolution to 16 channels, three stages of three basic blocks (16, 32, 64 channels at
  28x28, 14x14 and 7x7), global average pooling and a dense layer: 6n + 2 = 20 layers with
  n = 3. BatchNorm after every convolution. Where a stage halves the resolution, the shortcut
  is a strided 1x1 convolution with BatchNorm (a projection, as in the authors' ResNet-56 of
  DingXiaoH/GSM-SGD), so that every block's input can be pruned like any other tensor.
  Kernels are He-normal; 272,186 parameters, 270,608 of them in kernels (rank >= 2).

  Attributes:
    num_classes: the width of the last layer.
    widths: the channels of the three stages (the residual stream's; the first convolution's).
    blocks: basic blocks per stage (n; 9 gives ResNet-56).
    inner_widths: the channels inside each basic block (between its two convolutions), one per
      block in order (``3 * blocks``); None: each its stage's width. A structurally pruned
      ResNet-20 is this model with narrower ``widths`` and ``inner_widths``
      (:func:`narrow_options`).
  """

  num_classes: int = 10
  widths: tuple[int, int, int] = (16, 32, 64)
  blocks: int = 3
  inner_widths: tuple[int, ...] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim == 3:
      x = x[..., None]
    x = nn.Conv(self.widths[0], (3, 3), use_bias=False, kernel_init=_he_normal)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    inner = self.inner_widths or tuple(w for w in self.widths for _ in range(self.blocks))
    if len(inner) != 3 * self.blocks:
      raise ValueError(f"inner_widths needs one width per block (3 * blocks = {3 * self.blocks});"
                       f" got inner_widths={self.inner_widths!r}.")
    for stage, width in enumerate(self.widths):
      for block in range(self.blocks):
        x = _BasicBlock(width, 2 if stage > 0 and block == 0 else 1,
                        inner[stage * self.blocks + block])(x, train)
    return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


class _EncoderBlock(nn.Module):
  """A pre-LayerNorm transformer block: self-attention, then a GELU MLP, each residual."""

  heads: int
  head_dim: int
  mlp_width: int
  dropout: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    h = nn.LayerNorm(name="norm_attention")(x)
    h = nn.MultiHeadDotProductAttention(num_heads=self.heads,
                                        qkv_features=self.heads * self.head_dim,
                                        dropout_rate=self.dropout, deterministic=not train,
                                        name="attention")(h)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.LayerNorm(name="norm_mlp")(x)
    h = nn.gelu(nn.Dense(self.mlp_width, name="mlp_in")(h))
    h = nn.Dense(x.shape[-1], name="mlp_out")(nn.Dropout(self.dropout, deterministic=not train)(h))
    return x + nn.Dropout(self.dropout, deterministic=not train)(h)


class ViT(nn.Module):
  """A small vision transformer (Dosovitskiy et al. 2021) for 28x28x1 images.

  Non-overlapping 4x4 patches (49 tokens) embedded by one dense layer, a learned position
  embedding, pre-LayerNorm encoder blocks (multi-head self-attention and a GELU MLP), a final
  LayerNorm, the mean over the tokens and a dense head. Dropout, where its rate is above 0, in
  the attention weights and after the embedding and each residual branch; 0 by default, since
  on one CPU core it makes a training step 1.5x longer (0.74 s against 0.50 s at batch 128).

  Attributes:
    num_classes: the width of the head.
    width: the residual stream's channels.
    depth: encoder blocks.
    heads: attention heads per block, or a tuple of one per block.
    mlp_width: hidden units of each block's MLP, or a tuple of one per block.
    patch: the patch's side, in pixels.
    dropout: the dropout rate in training.
    head_dim: the channels of each head; None: ``width // heads`` (``heads`` an int). A
      structurally pruned ViT is this model with fewer heads and MLP units per block and the
      dense model's ``head_dim`` (:func:`narrow_options`).
  """

  num_classes: int = 10
  width: int = 128
  depth: int = 4
  heads: int | tuple[int, ...] = 4
  mlp_width: int | tuple[int, ...] = 256
  patch: int = 4
  dropout: float = 0.0
  head_dim: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim == 3:
      x = x[..., None]
    n, h, w, c = x.shape
    p = self.patch
    x = x.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = nn.Dense(self.width, name="patch_embedding")(x.reshape(n, (h // p) * (w // p), p * p * c))
    x = x + self.param("position_embedding", nn.initializers.normal(0.02), (1, *x.shape[1:]))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    heads = _per_block(self.heads, self.depth, "heads")
    mlp = _per_block(self.mlp_width, self.depth, "mlp_width")
    if self.head_dim is None and not isinstance(self.heads, int):
      raise ValueError(f"heads={self.heads!r} per block needs head_dim.")
    head_dim = self.head_dim or self.width // heads[0]
    for i in range(self.depth):
      x = _EncoderBlock(heads[i], head_dim, mlp[i], self.dropout, name=f"block{i}")(x, train)
    x = nn.LayerNorm(name="norm")(x).mean(axis=1)
    return nn.Dense(self.num_classes, name="head")(x)


def _per_block(value: int | tuple[int, ...], depth: int, name: str) -> tuple[int, ...]:
  """``value`` for every block: an int repeated, or a tuple of ``depth`` ints."""
  if isinstance(value, int):
    return (value,) * depth
  if len(value) != depth:
    raise ValueError(f"{name} needs one value per block (depth={depth}); got {name}={value!r}.")
  return tuple(value)


_he_normal = nn.initializers.he_normal()

MODELS: dict[str, type[nn.Module]] = {
    "lenet300": LeNet300100, "lenet5": LeNet5, "resnet20": ResNet20, "vit": ViT}


def _vit_eligible(params: Any) -> Any:
  """The ViT's encoder kernels: attention (query, key, value, out) and MLP, every block.

  By name, not by rank: the attention's query, key and value biases are ``[heads, head_dim]``.
  """
  def prunable(path, _):
    names = [getattr(k, "key", None) for k in path]
    return str(names[0]).startswith("block") and names[-1] == "kernel"

  return jax.tree_util.tree_map_with_path(prunable, params)


# Which parameters each model prunes, in words (printed by the runner, written to its JSON).
PRUNABLE: dict[str, str] = {
    "lenet300": "every kernel (rank >= 2), the authors' rule",
    "lenet5": "every kernel (rank >= 2), the authors' rule",
    "resnet20": ("every convolution and dense kernel (rank >= 2: the first convolution, the"
                 " projection shortcuts and the classifier included), the authors' rule;"
                 " BatchNorm's scales and offsets are never pruned"),
    "vit": ("the encoder blocks' kernels (attention query/key/value/out, MLP); not the position"
            " embedding, the patch embedding (2,048 weights, the only path from the pixels), the"
            " head (1,280 weights, the classifier), LayerNorms or biases: 524,288 of 539,914"),
}


def eligible(model: str) -> Callable[[Any], Any]:
  """The mask of the parameters ``model`` prunes, as ``gsm_optax``'s ``eligible=`` takes it."""
  if model not in MODELS:
    raise ValueError(f"model must be one of {sorted(MODELS)}; got model={model!r}.")
  return _vit_eligible if model == "vit" else gsm_optax.default_eligible


def count_params(params) -> int:
  """Total number of scalars in a parameter pytree."""
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def structured_groups(model: str, params: Any, *, model_state: dict[str, Any] | None = None,
                      options: dict[str, Any] | None = None, per_mac: bool = False,
                      multiple_of: int = 1,
                      ) -> tuple[tuple[gsm_optax.Groups, ...], gsm_optax.MacCost]:
  """The groups structured GSM ranks in the experiments' models, and a budget in their MACs.

  LeNet-300-100: the input features of its three dense layers (the pixels, then the hidden
  units of each layer, which are unused once their row is pruned). LeNet-5: the filters of its
  two convolutions (with their biases) and the input features of its two dense layers, as in
  the widths reported by Wen et al. (SSL) and Neklyudov et al. (SBP). A dense layer's input
  features are :func:`gsm_optax.input_groups`: single pixels and single positions of conv2's
  flattened map are no channels of :func:`gsm_optax.couple`, which groups whole channels.

  ResNet-20 and the ViT: every group set that :func:`gsm_optax.couple` reads from the model
  (:attr:`gsm_optax.Coupling.groups`), which are the sets :func:`width_sets` names:

  - ResNet-20: each basic block's inner filters (its first convolution's outputs, with their
    BatchNorm's scale and offset), and each stage's residual stream: the channels that the
    stage's blocks add to, coupled into one set with every convolution that writes to it (the
    first convolution for the first stage, each block's second convolution and the projection
    shortcut where a stage starts), their BatchNorms, and the next stage's projection and
    first convolution that read it. The classifier's outputs (the classes) are left whole.
  - ViT: each block's attention heads (query, key and value, with their biases) and its MLP's
    hidden units. The residual stream (the patch embedding's outputs) is left whole: every
    LayerNorm reduces over it, so a removed channel would change the others' normalisation
    (``couple`` says so); so are the patch embedding's inputs (the pixels of a patch) and the
    head's outputs (the classes). The head dimension within each head is not ranked: a head's
    query/key/value kernels belong to its head group.

  Every set keeps at least one group (:class:`gsm_optax.Groups`' ``min_kept=1``, couple's
  default). Emptying a residual stream would cut the outputs off the inputs
  (``ChannelSet.can_empty`` is False); a block's inner filters, heads or MLP units could go
  whole (:meth:`gsm_optax.Coupling.allow_empty`), but the block left would be no block of
  :class:`ResNet20` or :class:`ViT`, which the same narrow architecture trained from scratch
  (the runner's ``scratch`` method) needs.

  Args:
    model: a name of :data:`MODELS`.
    params: its parameters.
    model_state: its other collections (``{"batch_stats": ...}`` for ResNet-20).
    options: the attributes of the model's module (``ExperimentConfig.model_options``).
    per_mac: rank groups by score per MAC.
    multiple_of: every set whose size it divides keeps a multiple of this many groups
      (:class:`gsm_optax.Groups`' ``multiple_of``); the others (the ViT's 4 heads, LeNet-5's 6
      filters, with 8) any number.

  Returns:
    The groups, and ``Coupling.mac_costs`` of them, read from the model by
    :func:`gsm_optax.couple`: the multiply-accumulates per image of every layer, scaled by
    the fractions of its input and output units kept (groups ranked by score per MAC with
    ``per_mac``). A layer that no group scales (the ViT's patch embedding and head) is left out
    of the budget: its MACs are the same at every width.
  """
  if model not in MODELS:
    raise ValueError(f"model must be one of {sorted(MODELS)}; got model={model!r}.")
  coupling = couple_model(model, params, model_state=model_state, options=options)
  if model == "lenet300":
    groups = gsm_optax.input_groups(params)
  elif model == "lenet5":
    def dense(p):
      return {k: {kk: k in ("fc1", "fc2") and kk == "kernel" for kk in v} for k, v in p.items()}

    filters = tuple(g for g in coupling.groups if g.name in ("conv1", "conv2"))
    groups = filters + gsm_optax.input_groups(params, eligible=dense)
  else:
    groups = coupling.groups
  groups = tuple(g._replace(multiple_of=multiple_of) if g.size % multiple_of == 0 else g
                 for g in groups)
  return groups, coupling.mac_costs(groups, per_mac=per_mac)


def couple_model(model: str, params: Any, *, model_state: dict[str, Any] | None = None,
                 options: dict[str, Any] | None = None) -> gsm_optax.Coupling:
  """:func:`gsm_optax.couple` of a model of :data:`MODELS`, in evaluation mode.

  Coupled on two 28x28x1 images: with a batch of one, the trace cannot tell the batch axis
  from other axes of size 1 (the flatten bakes it in), and the narrow model would take a batch
  of one only (its apply refuses another). In evaluation mode (BatchNorm with its running
  statistics, no dropout) the narrow model takes any batch of two or more.

  Args:
    model: a name of :data:`MODELS`.
    params: its parameters.
    model_state: its other collections: ResNet-20's ``{"batch_stats": ...}``, which
      :func:`gsm_optax.narrow` then cuts along with the channels.
    options: the attributes of the model's module (``ExperimentConfig.model_options``).
  """
  module = MODELS[model](**(options or {}))
  variables = {"params": params, **(model_state or {})}
  if model == "resnet20" and "batch_stats" not in variables:
    raise ValueError("couple_model: resnet20 has BatchNorm statistics; pass"
                     " model_state={'batch_stats': ...} (the run's, or model.init's).")
  return gsm_optax.couple(lambda v, x: module.apply(v, x), variables,
                          jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32))


def width_sets(model: str, coupling: gsm_optax.Coupling,
               options: dict[str, Any] | None = None) -> dict[str, str]:
  """The group sets of a deep model, by the width of the module each is: name -> set name.

  ResNet-20: ``"stage1"``, ``"stage2"``, ``"stage3"`` (the residual streams: ``widths``) and
  ``"block1"`` ... ``"block9"`` (each basic block's inner filters: ``inner_widths``). ViT:
  ``"block0 heads"``, ``"block0 mlp"``, ... (``heads`` and ``mlp_width`` of each block).
  Found by the kernel each set holds, not by the names ``couple`` gives.
  """
  module = MODELS[model](**(options or {}))
  if model == "resnet20":
    n = module.blocks
    owners = {f"stage{s + 1}": f"_BasicBlock_{s * n}/Conv_1/kernel" for s in range(3)}
    owners |= {f"block{k + 1}": f"_BasicBlock_{k}/Conv_0/kernel" for k in range(3 * n)}
  elif model == "vit":
    owners = {}
    for i in range(module.depth):
      owners[f"block{i} heads"] = f"block{i}/attention/query/kernel"
      owners[f"block{i} mlp"] = f"block{i}/mlp_in/kernel"
  else:
    raise ValueError(f"width_sets names the sets of 'resnet20' and 'vit'; got model={model!r}.")
  by_kernel = {m.path: g.name for g in coupling.groups for m in g.members}
  return {name: by_kernel[kernel] for name, kernel in owners.items()}


def narrow_options(model: str, options: dict[str, Any] | None,
                   widths: dict[str, int]) -> dict[str, Any]:
  """The module attributes of a deep model narrowed to ``widths`` (by :func:`width_sets`' names).

  The same architecture as :func:`gsm_optax.narrow`'s export of the pruned model: ResNet-20
  with ``widths`` (the streams) and ``inner_widths`` (the blocks); the ViT with ``heads`` and
  ``mlp_width`` per block and the dense model's ``head_dim``.
  """
  options = dict(options or {})
  module = MODELS[model](**options)
  if model == "resnet20":
    return options | {"widths": tuple(widths[f"stage{s + 1}"] for s in range(3)),
                      "inner_widths": tuple(widths[f"block{k + 1}"]
                                            for k in range(3 * module.blocks))}
  if model == "vit":
    head_dim = module.head_dim or module.width // _per_block(module.heads, module.depth,
                                                              "heads")[0]
    return options | {"heads": tuple(widths[f"block{i} heads"] for i in range(module.depth)),
                      "mlp_width": tuple(widths[f"block{i} mlp"] for i in range(module.depth)),
                      "head_dim": head_dim}
  raise ValueError(f"narrow_options narrows 'resnet20' and 'vit'; got model={model!r}.")
