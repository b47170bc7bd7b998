"""Parameter pytrees shaped like real networks, for the benchmarks."""

from __future__ import annotations

import numpy as np


def resnet50_shapes(width: int = 1, classes: int = 1000) -> dict[str, tuple[int, ...]]:
  """Every kernel, BatchNorm and bias shape of ResNet-50 (HWIO kernels).

  ``width`` multiplies every channel count: 1 gives ResNet-50's 25.6M
  parameters, 2 about 100M.
  """
  shapes: dict[str, tuple[int, ...]] = {}

  def conv(name, k, cin, cout):
    shapes[f"{name}/kernel"] = (k, k, cin, cout)
    shapes[f"{name}/bn_scale"] = (cout,)
    shapes[f"{name}/bn_bias"] = (cout,)

  conv("stem", 7, 3, 64 * width)
  cin = 64 * width
  for stage, (blocks, mid) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512])):
    mid *= width
    for block in range(blocks):
      name = f"stage{stage}/block{block}"
      conv(f"{name}/conv1", 1, cin, mid)
      conv(f"{name}/conv2", 3, mid, mid)
      conv(f"{name}/conv3", 1, mid, 4 * mid)
      if block == 0:
        conv(f"{name}/proj", 1, cin, 4 * mid)
      cin = 4 * mid
  shapes["fc/kernel"] = (cin, classes)
  shapes["fc/bias"] = (classes,)
  return shapes


def mlp_shapes(widths=(784, 1000, 200, 10)) -> dict[str, tuple[int, ...]]:
  """Dense kernels and biases of an MLP with the given layer widths."""
  shapes = {}
  for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
    shapes[f"dense{i}/kernel"] = (a, b)
    shapes[f"dense{i}/bias"] = (b,)
  return shapes


def count(shapes: dict[str, tuple[int, ...]]) -> int:
  return sum(int(np.prod(s)) for s in shapes.values())


def weights_and_gradients(shapes: dict[str, tuple[int, ...]], rng=None):
  """Float32 weights N(0, 0.05) and gradients N(0, 1e-3) shaped by ``shapes``, as jax arrays,
  drawn from ``rng`` (a fresh ``default_rng(0)`` when not given)."""
  import jax.numpy as jnp

  rng = np.random.default_rng(0) if rng is None else rng
  params = {k: jnp.asarray(rng.standard_normal(s, dtype=np.float32) * 0.05)
            for k, s in shapes.items()}
  grads = {k: jnp.asarray(rng.standard_normal(s, dtype=np.float32) * 1e-3)
           for k, s in shapes.items()}
  return params, grads


def transformer_shapes(layers: int, width: int = 256, vocab: int = 4096
                       ) -> dict[str, tuple[int, ...]]:
  """A pre-LN transformer's parameter shapes, unscanned: 12 leaves a layer (two
  LayerNorms, the fused QKV and output projections and the two MLP layers, each
  with a bias) and the token embedding: ``12 * layers + 1`` leaves."""
  shapes: dict[str, tuple[int, ...]] = {"embed": (vocab, width)}
  for i in range(layers):
    for norm in ("ln1", "ln2"):
      shapes[f"layer{i}/{norm}/scale"] = (width,)
      shapes[f"layer{i}/{norm}/bias"] = (width,)
    for dense, (a, b) in {"qkv": (width, 3 * width), "out": (width, width),
                          "mlp1": (width, 4 * width), "mlp2": (4 * width, width)}.items():
      shapes[f"layer{i}/{dense}/kernel"] = (a, b)
      shapes[f"layer{i}/{dense}/bias"] = (b,)
  return shapes
