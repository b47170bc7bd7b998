"""Structured runs' report: the exported narrower model, its MACs, accuracy and speed.

The pruned parameters of a structured run are exported with the library's
:func:`gsm_optax.narrow` (the coupling read from the model by :func:`gsm_optax.couple`),
whose ``apply`` runs the narrow model, and both models are timed side by side in this
process, jitted, at a few batch sizes.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

import gsm_optax
from gsm_optax.experiments import models
from gsm_optax.experiments.training import accuracy

PyTree = Any

__all__ = ["EXACT", "export_line", "kept_widths", "speedup_line", "speedups",
           "structured_report", "time_side_by_side"]

# The largest difference of the exported model's logits from the masked model's, relative to
# the largest masked logit, that counts as the same model (float32 arithmetic in another order).
EXACT = 1e-5


def kept_widths(model: str, small: gsm_optax.Narrow,
                coupling: gsm_optax.Coupling | None = None,
                options: dict[str, Any] | None = None) -> dict[str, int]:
  """The widths in the notation of the papers' tables.

  LeNet-300-100: input pixels, hidden units of fc1 and of fc2. LeNet-5: filters of conv1
  and conv2, input features of fc1 (the flattened conv2 maps it reads) and of fc2 (the units
  of fc1), as reported by Wen et al. (SSL) and Neklyudov et al. (SBP). ResNet-20 and the
  ViT: the width of each set :func:`models.width_sets` names (``stage1``..., ``block1``...;
  ``block0 heads``, ``block0 mlp``...), which :func:`models.narrow_options` takes.

  Args:
    model: a name of :data:`models.MODELS`.
    small: :func:`gsm_optax.narrow` of that model's pruned parameters.
    coupling: the coupling ``small`` was narrowed with (ResNet-20 and the ViT).
    options: the model's module attributes (ResNet-20 and the ViT).
  """
  w = small.widths
  if model in ("resnet20", "vit"):
    if coupling is None:
      raise ValueError(f"kept_widths of {model} needs the coupling it was narrowed with.")
    return {name: w[s] for name, s in models.width_sets(model, coupling, options).items()}
  fc1_in = small.input_indices.get("fc1/kernel")
  if model == "lenet300":
    pixels = 784 if fc1_in is None else len(fc1_in)
    return {"input pixels": pixels, "fc1": w["fc1"], "fc2": w["fc2"]}
  features = 16 * w["conv2"] if fc1_in is None else len(fc1_in)
  return {"conv1": w["conv1"], "conv2": w["conv2"], "fc1 inputs": features, "fc2 inputs": w["fc1"]}


def time_side_by_side(fns: dict[str, Any], args: dict[str, tuple], *, repeats: int = 15,
                      min_seconds: float = 0.05) -> dict[str, float]:
  """Median seconds per call of each jitted function, measured in alternation.

  Each repeat times every function in turn over enough calls to last ``min_seconds``, so
  that a slower or faster stretch of a shared machine affects all of them alike.
  """
  for name, fn in fns.items():  # compile and warm up
    jax.block_until_ready(fn(*args[name]))
  calls = {}
  for name, fn in fns.items():
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
      jax.block_until_ready(fn(*args[name]))
      n += 1
    calls[name] = max(n, 1)
  samples: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      for _ in range(calls[name]):
        out = fn(*args[name])
      jax.block_until_ready(out)
      samples[name].append((time.perf_counter() - start) / calls[name])
  return {name: float(np.median(s)) for name, s in samples.items()}


def structured_report(model: str, params: PyTree, x_test: jax.Array, y_test: jax.Array, *,
                      model_state: dict[str, PyTree] | None = None,
                      options: dict[str, Any] | None = None,
                      batch_sizes: tuple[int, ...] = (1, 256), repeats: int = 15
                      ) -> dict[str, Any]:
  """Exports structurally pruned ``params`` of a model and measures both models.

  Args:
    model: a name of :data:`models.MODELS`.
    params: its pruned parameters (whole units zeroed, as ``gsm_optax.prune(...,
      groups=...)`` leaves them).
    x_test: test images; y_test: their labels.
    model_state: its other collections (ResNet-20's ``batch_stats``: the export cuts the
      running statistics of the removed channels with them).
    options: the model's module attributes (``ExperimentConfig.model_options``).
    batch_sizes: the batch sizes to time.
    repeats: timing repeats (medians are reported).

  Returns:
    A JSON-ready dict: the kept widths (:func:`kept_widths`) and those of the groups' layers
    (``layer_widths``, by channel set), MACs and parameters of the dense and the exported
    model, the test accuracy of the masked dense model and of the exported one, the largest
    difference of their logits on the first 1,000 test images (``max_logit_difference``) and
    that over the largest masked logit (``max_relative_logit_difference``; ``exact``: at most
    :data:`EXACT`), and the seconds per batch of both, with the speed-up.
  """
  dense = models.MODELS[model](**(options or {}))
  model_state = model_state or {}
  coupling = models.couple_model(model, params, model_state=model_state, options=options)
  small = gsm_optax.narrow(coupling, {"params": params, **model_state})
  narrow_vars = small.variables
  dense_vars = {"params": params, **model_state}
  apply_dense = jax.jit(dense.apply)
  apply_narrow = jax.jit(small.apply)
  masked = np.asarray(apply_dense(dense_vars, x_test[:1000]), np.float64)
  exported = np.asarray(apply_narrow(narrow_vars, x_test[:1000]), np.float64)
  diff = float(np.max(np.abs(masked - exported)))
  relative = diff / float(np.max(np.abs(masked)))
  narrow_state = {k: v for k, v in narrow_vars.items() if k != "params"}
  report: dict[str, Any] = {
      "kept_widths": kept_widths(model, small, coupling, options),
      "layer_widths": {g.name: small.widths[g.name] for g in coupling.groups},
      "macs_dense": coupling.macs,
      "macs_exported": small.macs,
      "params_dense": models.count_params(params),
      "params_exported": models.count_params(narrow_vars["params"]),
      "accuracy_masked": accuracy(dense.apply, params, x_test, y_test, model_state),
      "accuracy_exported": accuracy(lambda v, x: small.apply(v, x), narrow_vars["params"],
                                    x_test, y_test, narrow_state),
      "max_logit_difference": diff,
      "max_relative_logit_difference": relative,
      "exact": relative <= EXACT,
      "timing": {},
  }
  report["mac_reduction"] = report["macs_dense"] / report["macs_exported"]
  report["timing"] = speedups(apply_dense, dense_vars, apply_narrow, narrow_vars, x_test,
                              batch_sizes=batch_sizes, repeats=repeats)
  return report


def speedups(apply_dense: Any, dense_vars: PyTree, apply_small: Any, small_vars: PyTree,
             x_test: jax.Array, *, batch_sizes: tuple[int, ...] = (1, 256),
             repeats: int = 15) -> dict[str, dict[str, float]]:
  """Seconds per batch of the dense and the small model, side by side, at each batch size:
  ``{"1": {"dense_seconds", "exported_seconds", "speedup"}, ...}``."""
  timing = {}
  for batch in batch_sizes:
    x = x_test[:batch]
    seconds = time_side_by_side({"dense": apply_dense, "exported": apply_small},
                                {"dense": (dense_vars, x), "exported": (small_vars, x)},
                                repeats=repeats)
    timing[str(batch)] = {
        "dense_seconds": seconds["dense"], "exported_seconds": seconds["exported"],
        "speedup": seconds["dense"] / seconds["exported"]}
  return timing


def speedup_line(timing: dict[str, Any]) -> str:
  """``"batch 1: 1.52x faster, batch 256: 1.87x faster"`` from a report's ``timing``."""
  return ", ".join(f"batch {b}: {t['speedup']:.2f}x faster" for b, t in timing.items())


def export_line(report: dict[str, Any]) -> str:
  """A :func:`structured_report` in one line, as a run logs it (or why there was no export)."""
  if "error" in report:
    return f"not exported: {report['error']}"
  widths = "-".join(str(v) for v in report["kept_widths"].values())
  timing = speedup_line(report["timing"])
  exact = "exact" if report["exact"] else f"NOT EXACT (> {EXACT:g})"
  return (f"exported widths {widths}, {report['mac_reduction']:.1f}x fewer MACs,"
          f" {report['params_exported']:,} parameters; accuracy {report['accuracy_masked']:.4f}"
          f" masked, {report['accuracy_exported']:.4f} exported; logits"
          f" {report['max_relative_logit_difference']:.2g} apart relative, {exact}; {timing}")
