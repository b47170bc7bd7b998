"""What gsm() costs in a whole training step, against optax's momentum SGD.

Per model, plain momentum SGD (``optax.chain(add_decayed_weights, trace,
scale_by_learning_rate)``, the decay on the same weights) and
``gsm_optax.gsm`` side by side, in one process:

  update    the optimizer update alone, jitted on the model's parameters
  step      the whole jitted training step: forward, backward, update and
            apply_updates, params and optimizer state donated

  compile s   wall time of ``lower(...).compile()`` (a fresh function each
              time: no cache); ``cpu s`` the process's CPU time for the same
              (every thread), which a busy machine inflates less
  cuda ops    ``stablehlo.`` operations of the module exported for ``cuda``
              with ``jax.export`` (no GPU needed)
  temp MiB    XLA's ``memory_analysis().temp_size_in_bytes`` of the step
  step ms     median of ``--repeats`` steps, the two optimizers interleaved

Models: ``resnet20`` and ``vit``, the ResNet-20 and ViT of
``gsm_optax.experiments.models`` at batch 128 on 28x28x1 images, each pruning
(and decaying) what the experiments prune; ``transformer6``, a 6-layer pre-LayerNorm causal
language model (``--width``, batch 16 x 64 tokens). For the update alone at
24 and 48 layers and on ResNet-50's shapes, see ``benchmarks.compile_cost``.

  python -m benchmarks.train_step                           # the three models
  python -m benchmarks.train_step --models transformer6 --width 512
  python -m benchmarks.train_step --models transformer6 --importance magnitude

``gsm`` ranks by the paper's ``|g * w|`` unless ``--importance magnitude`` (the
recommended recipe's ``|w|``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import gsm_optax
from benchmarks.compile_cost import KEEP, count_ops
from benchmarks.step_time import (
    DECAY,
    LR,
    MOMENTUM,
    add_importance_flag,
    plain_tx,
    print_header,
)
from gsm_optax.experiments import models


class Block(nn.Module):
  """Pre-LayerNorm transformer block: causal self-attention, then a GELU MLP."""

  heads: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(nn.LayerNorm()(x), mask=mask)
    h = nn.gelu(nn.Dense(4 * x.shape[-1])(nn.LayerNorm()(x)))
    return x + nn.Dense(x.shape[-1])(h)


class LanguageModel(nn.Module):
  """Token and position embeddings, ``layers`` blocks, a final LayerNorm and a dense head."""

  layers: int
  width: int
  vocab: int = 256
  heads: int = 8

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    del train
    x = nn.Embed(self.vocab, self.width)(tokens)
    x = x + self.param("position", nn.initializers.normal(0.02), (1, *x.shape[1:]))
    for _ in range(self.layers):
      x = Block(self.heads)(x)
    return nn.Dense(self.vocab)(nn.LayerNorm()(x))


def image_model(name: str) -> tuple[nn.Module, jax.Array, jax.Array]:
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((128, 28, 28, 1)), jnp.float32)
  return models.MODELS[name](), images, jnp.asarray(rng.integers(0, 10, 128))


def transformer6(width: int) -> tuple[nn.Module, jax.Array, jax.Array]:
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 65)))
  return LanguageModel(6, width), tokens[:, :-1], tokens[:, 1:]


def make_step(model: nn.Module, tx: optax.GradientTransformation) -> Callable:
  """One training step on (params, opt_state, model_state, inputs, labels)."""

  def loss_fn(params, model_state, inputs, labels):
    logits, updates = model.apply({"params": params, **model_state}, inputs, train=True,
                                  mutable=list(model_state))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, updates

  def step(params, opt_state, model_state, inputs, labels):
    (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, model_state, inputs, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, model_state, loss

  return step


def compile_seconds(fn: Callable, args: tuple, **jit_kwargs) -> tuple[float, float, object]:
  """Wall and process CPU seconds of lowering and compiling ``fn``, and the executable."""
  wall, cpu = time.perf_counter(), time.process_time()
  compiled = jax.jit(fn, **jit_kwargs).lower(*args).compile()
  return time.perf_counter() - wall, time.process_time() - cpu, compiled


def cuda_ops(fn: Callable, args: tuple) -> int:
  structs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
  return count_ops(jax.export.export(jax.jit(fn), platforms=["cuda"])(*structs).mlir_module())


def measure(model: nn.Module, inputs: jax.Array, labels: jax.Array, repeats: int,
            eligible: Callable[[Any], Any] = gsm_optax.default_eligible,
            importance: str = "taylor") -> dict:
  variables = model.init(jax.random.key(0), inputs, train=False)
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  txs = {"plain": plain_tx(eligible),
         "gsm": gsm_optax.gsm(LR, KEEP, momentum=MOMENTUM, weight_decay=DECAY,
                              eligible=eligible, importance=importance)}
  out: dict = {"leaves": len(jax.tree.leaves(params)),
               "params": sum(x.size for x in jax.tree.leaves(params))}
  steps, carries = {}, {}
  for name, tx in txs.items():
    opt_state = tx.init(params)

    def update(grads, state, params, tx=tx):
      return tx.update(grads, state, params)

    step = make_step(model, tx)
    args = (params, opt_state, model_state, inputs, labels)
    u_wall, u_cpu, _ = compile_seconds(update, (params, opt_state, params))
    s_wall, s_cpu, compiled = compile_seconds(step, args, donate_argnums=(0, 1, 2))
    out[name] = dict(update_compile_s=u_wall, update_compile_cpu_s=u_cpu,
                     update_cuda_ops=cuda_ops(update, (params, opt_state, params)),
                     step_compile_s=s_wall, step_compile_cpu_s=s_cpu,
                     step_cuda_ops=cuda_ops(step, args),
                     temp_bytes=compiled.memory_analysis().temp_size_in_bytes, step_s=[])
    steps[name] = compiled
    # Each optimizer steps its own copy: the step donates what it is given.
    carries[name] = jax.tree.map(jnp.copy, (params, opt_state, model_state))
  for _ in range(repeats + 1):  # the first round warms up and is dropped
    for name, compiled in steps.items():
      start = time.perf_counter()
      *carry, loss = compiled(*carries[name], inputs, labels)
      loss.block_until_ready()
      out[name]["step_s"].append(time.perf_counter() - start)
      carries[name] = tuple(carry)
  for name in steps:
    out[name]["step_s"] = out[name]["step_s"][1:]
  out["eligible_bytes"] = 4 * sum(x.size for x, e in zip(jax.tree.leaves(params),
                                                         jax.tree.leaves(eligible(params))) if e)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", nargs="+", default=["resnet20", "vit", "transformer6"],
                      choices=["resnet20", "vit", "transformer6"])
  parser.add_argument("--width", type=int, default=256, help="the transformer's width")
  parser.add_argument("--repeats", type=int, default=7)
  add_importance_flag(parser)
  parser.add_argument("--json", help="also write the rows to this JSON file")
  args = parser.parse_args()

  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  print_header(
      f"{'model':>12} {'params':>10} {'leaves':>6} | {'update compile s':>16} {'cuda ops':>14}"
      f" | {'step compile s (cpu s)':>27} {'ratio':>5} {'cuda ops':>15}"
      f" | {'temp MiB':>11} {'extra/elig':>10} | {'step ms':>11} {'ratio':>6}",
      f", keep {KEEP}, gsm ranking by {args.importance}, load average {load};"
      " each pair: plain gsm")
  rows = []
  for name in args.models:
    if name == "transformer6":
      r = measure(*transformer6(args.width), args.repeats, importance=args.importance)
    else:
      r = measure(*image_model(name), args.repeats, eligible=models.eligible(name),
                  importance=args.importance)
    p, g = r["plain"], r["gsm"]
    p_ms, g_ms = (1e3 * float(np.median(x["step_s"])) for x in (p, g))
    extra = (g["temp_bytes"] - p["temp_bytes"]) / r["eligible_bytes"]
    print(f"{name:>12} {r['params']:>10,} {r['leaves']:>6} |"
          f" {p['update_compile_s']:>7.2f} {g['update_compile_s']:>8.2f}"
          f" {p['update_cuda_ops']:>6,} {g['update_cuda_ops']:>7,} |"
          f" {p['step_compile_s']:>5.2f} ({p['step_compile_cpu_s']:>5.2f})"
          f" {g['step_compile_s']:>6.2f} ({g['step_compile_cpu_s']:>5.2f})"
          f" {g['step_compile_s'] / p['step_compile_s']:>4.2f}x"
          f" {p['step_cuda_ops']:>7,} {g['step_cuda_ops']:>7,} |"
          f" {p['temp_bytes'] / 2**20:>5.1f} {g['temp_bytes'] / 2**20:>5.1f} {extra:>9.2f}x |"
          f" {p_ms:>5.0f} {g_ms:>5.0f} {g_ms / p_ms:>5.3f}x", flush=True)
    rows.append(dict(model=name, **r))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": str(jax.devices()[0]), "keep": KEEP, "importance": args.importance,
                 "load": load, "rows": rows},
                f, indent=2)


if __name__ == "__main__":
  main()
