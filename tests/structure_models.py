"""Small models of the families people prune, in Flax linen and nnx, for the structure tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import nnx

# -- linen ------------------------------------------------------------------------------


class BasicBlock(nn.Module):
  features: int
  stride: int = 1
  train: bool = False

  @nn.compact
  def __call__(self, x):
    norm = lambda: nn.BatchNorm(use_running_average=not self.train)
    h = nn.Conv(self.features, (3, 3), (self.stride, self.stride), use_bias=False)(x)
    h = nn.relu(norm()(h))
    h = norm()(nn.Conv(self.features, (3, 3), use_bias=False)(h))
    if x.shape[-1] != self.features or self.stride != 1:
      x = norm()(nn.Conv(self.features, (1, 1), (self.stride, self.stride), use_bias=False)(x))
    return nn.relu(h + x)


class ResNet(nn.Module):
  """CIFAR ResNet-(6n+2): ResNet-20 with n=3, ResNet-56 with n=9 (He et al. 2016)."""

  n: int = 3
  widths: tuple[int, int, int] = (16, 32, 64)
  classes: int = 10
  train: bool = False

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.widths[0], (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not self.train)(x))
    for stage, width in enumerate(self.widths):
      for block in range(self.n):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(width, stride, self.train)(x)
    return nn.Dense(self.classes)(x.mean(axis=(1, 2)))


class Bottleneck(nn.Module):
  features: int  # the bottleneck width; the block outputs 4x

  @nn.compact
  def __call__(self, x):
    norm = lambda: nn.BatchNorm(use_running_average=True)
    h = nn.relu(norm()(nn.Conv(self.features, (1, 1), use_bias=False)(x)))
    h = nn.relu(norm()(nn.Conv(self.features, (3, 3), use_bias=False)(h)))
    h = norm()(nn.Conv(4 * self.features, (1, 1), use_bias=False)(h))
    if x.shape[-1] != 4 * self.features:
      x = norm()(nn.Conv(4 * self.features, (1, 1), use_bias=False)(x))
    return nn.relu(h + x)


class BottleneckStage(nn.Module):
  features: int = 4
  blocks: int = 2

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(8, (3, 3))(x)
    for _ in range(self.blocks):
      x = Bottleneck(self.features)(x)
    return nn.Dense(5)(x.mean(axis=(1, 2)))


class InvertedResidual(nn.Module):
  """MobileNetV2's block: expand 1x1, depthwise 3x3, project 1x1, residual."""

  expand: int = 24

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(8, (3, 3))(x)
    for _ in range(2):
      norm = lambda: nn.BatchNorm(use_running_average=True)
      h = nn.relu6(norm()(nn.Conv(self.expand, (1, 1), use_bias=False)(x)))
      h = nn.relu6(norm()(nn.Conv(self.expand, (3, 3), feature_group_count=self.expand,
                                  use_bias=False)(h)))
      x = x + norm()(nn.Conv(8, (1, 1), use_bias=False)(h))
    return nn.Dense(5)(x.mean(axis=(1, 2)))


class DenseBlock(nn.Module):
  """DenseNet-style: each layer's output is concatenated to its input."""

  growth: int = 6
  layers: int = 3

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(8, (3, 3))(x)
    for _ in range(self.layers):
      h = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(self.growth, (3, 3))(x)))
      x = jnp.concatenate([x, h], axis=-1)
    x = nn.relu(nn.Conv(10, (1, 1))(x))
    return nn.Dense(5)(x.mean(axis=(1, 2)))


class EncoderLayer(nn.Module):
  heads: int = 4
  hidden: int = 32

  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(h)
    h = nn.LayerNorm()(x)
    return x + nn.Dense(x.shape[-1])(nn.gelu(nn.Dense(self.hidden)(h)))


class Transformer(nn.Module):
  """A pre-LayerNorm transformer encoder over float token features."""

  depth: int = 2
  width: int = 16
  heads: int = 4
  hidden: int = 32

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.width)(x)
    for _ in range(self.depth):
      x = EncoderLayer(self.heads, self.hidden)(x)
    return nn.Dense(5)(nn.LayerNorm()(x).mean(axis=1))


class SwiGLU(nn.Module):
  hidden: int = 24

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(8)(x)
    for _ in range(2):
      h = nn.silu(nn.Dense(self.hidden, use_bias=False)(x)) * nn.Dense(self.hidden,
                                                                         use_bias=False)(x)
      x = x + nn.Dense(8, use_bias=False)(h)
    return nn.Dense(3)(x)


class ResidualMLP(nn.Module):
  """The example of the issue: an identity skip with matching widths."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(8)(x))
    h = h + nn.Dense(8)(nn.relu(nn.Dense(8)(h)))
    return nn.Dense(3)(h)


LINEN = {
    "resnet20": (lambda: ResNet(3, (4, 8, 16)), (2, 8, 8, 3)),
    "bottleneck": (BottleneckStage, (2, 6, 6, 3)),
    "depthwise": (InvertedResidual, (2, 6, 6, 3)),
    "densenet": (DenseBlock, (2, 6, 6, 3)),
    "transformer": (Transformer, (2, 5, 7)),
    "swiglu": (SwiGLU, (2, 6)),
    "residual_mlp": (ResidualMLP, (2, 5)),
}

# -- nnx --------------------------------------------------------------------------------


class NnxBasicBlock(nnx.Module):

  def __init__(self, cin, cout, stride, rngs):
    self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(cout, use_running_average=True, rngs=rngs)
    self.conv2 = nnx.Conv(cout, cout, (3, 3), use_bias=False, rngs=rngs)
    self.bn2 = nnx.BatchNorm(cout, use_running_average=True, rngs=rngs)
    self.proj = nnx.data(None)
    if cin != cout or stride != 1:
      self.proj = nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
      self.proj_bn = nnx.BatchNorm(cout, use_running_average=True, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.bn1(self.conv1(x)))
    h = self.bn2(self.conv2(h))
    if self.proj is not None:
      x = self.proj_bn(self.proj(x))
    return nnx.relu(h + x)


class NnxResNet(nnx.Module):

  def __init__(self, n=3, widths=(4, 8, 16), classes=10, *, rngs):
    self.stem = nnx.Conv(3, widths[0], (3, 3), use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(widths[0], use_running_average=True, rngs=rngs)
    blocks, cin = [], widths[0]
    for stage, width in enumerate(widths):
      for block in range(n):
        blocks.append(NnxBasicBlock(cin, width, 2 if stage > 0 and block == 0 else 1, rngs))
        cin = width
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(widths[-1], classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.stem(x)))
    for b in self.blocks:
      x = b(x)
    return self.head(x.mean(axis=(1, 2)))


class NnxBottleneckStage(nnx.Module):

  def __init__(self, features=4, *, rngs):
    bn = lambda c: nnx.BatchNorm(c, use_running_average=True, rngs=rngs)
    self.stem = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    layers, cin = [], 8
    for _ in range(2):
      layer = nnx.Dict()
      layer["c1"], layer["b1"] = nnx.Conv(cin, features, (1, 1), use_bias=False, rngs=rngs), bn(
          features)
      layer["c2"], layer["b2"] = nnx.Conv(features, features, (3, 3), use_bias=False,
                                          rngs=rngs), bn(features)
      layer["c3"], layer["b3"] = nnx.Conv(features, 4 * features, (1, 1), use_bias=False,
                                          rngs=rngs), bn(4 * features)
      if cin != 4 * features:
        layer["p"], layer["pb"] = nnx.Conv(cin, 4 * features, (1, 1), use_bias=False,
                                           rngs=rngs), bn(4 * features)
      layers.append(layer)
      cin = 4 * features
    self.layers = nnx.List(layers)
    self.head = nnx.Linear(cin, 5, rngs=rngs)

  def __call__(self, x):
    x = self.stem(x)
    for m in self.layers:
      h = nnx.relu(m["b1"](m["c1"](x)))
      h = nnx.relu(m["b2"](m["c2"](h)))
      h = m["b3"](m["c3"](h))
      if "p" in m:
        x = m["pb"](m["p"](x))
      x = nnx.relu(h + x)
    return self.head(x.mean(axis=(1, 2)))


class NnxInvertedResidual(nnx.Module):

  def __init__(self, expand=24, *, rngs):
    bn = lambda c: nnx.BatchNorm(c, use_running_average=True, rngs=rngs)
    self.stem = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.expand = nnx.List([nnx.Conv(8, expand, (1, 1), use_bias=False, rngs=rngs)
                            for _ in range(2)])
    self.dw = nnx.List([nnx.Conv(expand, expand, (3, 3), feature_group_count=expand,
                                 use_bias=False, rngs=rngs) for _ in range(2)])
    self.project = nnx.List([nnx.Conv(expand, 8, (1, 1), use_bias=False, rngs=rngs)
                             for _ in range(2)])
    self.bns = nnx.List([bn(c) for _ in range(2) for c in (expand, expand, 8)])
    self.head = nnx.Linear(8, 5, rngs=rngs)

  def __call__(self, x):
    x = self.stem(x)
    for i in range(2):
      h = nnx.relu6(self.bns[3 * i](self.expand[i](x)))
      h = nnx.relu6(self.bns[3 * i + 1](self.dw[i](h)))
      x = x + self.bns[3 * i + 2](self.project[i](h))
    return self.head(x.mean(axis=(1, 2)))


class NnxDenseBlock(nnx.Module):

  def __init__(self, growth=6, layers=3, *, rngs):
    self.stem = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    convs, bns, c = [], [], 8
    for _ in range(layers):
      convs.append(nnx.Conv(c, growth, (3, 3), rngs=rngs))
      bns.append(nnx.BatchNorm(growth, use_running_average=True, rngs=rngs))
      c += growth
    self.convs, self.bns = nnx.List(convs), nnx.List(bns)
    self.mix = nnx.Conv(c, 10, (1, 1), rngs=rngs)
    self.head = nnx.Linear(10, 5, rngs=rngs)

  def __call__(self, x):
    x = self.stem(x)
    for conv, bn in zip(self.convs, self.bns):
      x = jnp.concatenate([x, nnx.relu(bn(conv(x)))], axis=-1)
    return self.head(nnx.relu(self.mix(x)).mean(axis=(1, 2)))


class NnxTransformer(nnx.Module):

  def __init__(self, depth=2, width=16, heads=4, hidden=32, *, rngs):
    self.embed = nnx.Linear(7, width, rngs=rngs)
    self.ln1 = nnx.List([nnx.LayerNorm(width, rngs=rngs) for _ in range(depth)])
    self.attn = nnx.List([nnx.MultiHeadAttention(heads, width, decode=False, rngs=rngs)
                          for _ in range(depth)])
    self.ln2 = nnx.List([nnx.LayerNorm(width, rngs=rngs) for _ in range(depth)])
    self.up = nnx.List([nnx.Linear(width, hidden, rngs=rngs) for _ in range(depth)])
    self.down = nnx.List([nnx.Linear(hidden, width, rngs=rngs) for _ in range(depth)])
    self.ln = nnx.LayerNorm(width, rngs=rngs)
    self.head = nnx.Linear(width, 5, rngs=rngs)

  def __call__(self, x):
    x = self.embed(x)
    for ln1, attn, ln2, up, down in zip(self.ln1, self.attn, self.ln2, self.up, self.down):
      x = x + attn(ln1(x))
      x = x + down(nnx.gelu(up(ln2(x))))
    return self.head(self.ln(x).mean(axis=1))


class NnxSwiGLU(nnx.Module):

  def __init__(self, hidden=24, *, rngs):
    self.inp = nnx.Linear(6, 8, rngs=rngs)
    self.w1 = nnx.List([nnx.Linear(8, hidden, use_bias=False, rngs=rngs) for _ in range(2)])
    self.w3 = nnx.List([nnx.Linear(8, hidden, use_bias=False, rngs=rngs) for _ in range(2)])
    self.w2 = nnx.List([nnx.Linear(hidden, 8, use_bias=False, rngs=rngs) for _ in range(2)])
    self.out = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    x = self.inp(x)
    for w1, w2, w3 in zip(self.w1, self.w2, self.w3):
      x = x + w2(nnx.silu(w1(x)) * w3(x))
    return self.out(x)


NNX = {
    "resnet20": (lambda r: NnxResNet(rngs=r), (2, 8, 8, 3)),
    "bottleneck": (lambda r: NnxBottleneckStage(rngs=r), (2, 6, 6, 3)),
    "depthwise": (lambda r: NnxInvertedResidual(rngs=r), (2, 6, 6, 3)),
    "densenet": (lambda r: NnxDenseBlock(rngs=r), (2, 6, 6, 3)),
    "transformer": (lambda r: NnxTransformer(rngs=r), (2, 5, 7)),
    "swiglu": (lambda r: NnxSwiGLU(rngs=r), (2, 6)),
}


def _fill(shapes, rng):
  """Random values for a pytree of shapes: kernels ~ N(0, 1/fan_in), others N(0, 0.5),
  variances in [0.5, 2] (no compilation: initialisers compile slowly on a loaded CPU)."""

  def value(path, x):
    name = str(path[-1]).strip("[]'.")
    if name == "var":
      v = rng.uniform(0.5, 2.0, x.shape)
    elif name in ("kernel", "embedding") or len(x.shape) >= 2:
      fan_in = int(np.prod(x.shape[:-1])) if len(x.shape) > 1 else 1
      v = rng.normal(0, 1 / np.sqrt(max(fan_in, 1)), x.shape)
    elif name == "scale":
      v = rng.uniform(0.5, 1.5, x.shape)
    else:
      v = rng.normal(0, 0.5, x.shape)
    return jnp.asarray(v, x.dtype)

  return jax.tree_util.tree_map_with_path(value, shapes)


def random_variables(model, x, rng):
  """Random linen variables of ``model`` (shapes from ``jax.eval_shape``, values from rng)."""
  return _fill(jax.eval_shape(model.init, jax.random.PRNGKey(0), x), rng)


def random_nnx(make, rng):
  """An nnx module built abstractly, its state filled with random values."""
  abstract = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  pure = _fill(nnx.to_pure_dict(state), rng)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def random_batch_stats(variables, key):
  """Random running means and variances, so that BatchNorm is not the identity."""
  if "batch_stats" not in variables:
    return variables
  leaves, tree = jax.tree_util.tree_flatten_with_path(variables["batch_stats"])
  keys = jax.random.split(key, len(leaves))
  new = [jax.random.normal(k, x.shape) * 0.5 if p[-1].key == "mean"
         else jax.random.uniform(k, x.shape, minval=0.5, maxval=2.0)
         for (p, x), k in zip(leaves, keys)]
  return {**variables, "batch_stats": jax.tree_util.tree_unflatten(tree, new)}
