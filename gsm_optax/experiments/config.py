"""What one experiment of :mod:`.runner` depends on, and the presets it starts from.

:class:`ExperimentConfig` (a model, a compression, two :class:`PhaseConfig` schedules, the
methods to compare and GSM's options) validates itself when built. The presets:
:func:`paper_config` (the authors' LeNet schedules, DingXiaoH/GSM-SGD), :func:`deep_config`
(:data:`DEEP_PHASES`, ResNet-20 and the ViT), :func:`fast_config` (about a minute on a 2-core
CPU) and :func:`recommended_config`; :func:`with_recipe` applies a named GSM recipe
(:data:`RECIPES`) to any of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optax

import gsm_optax
from gsm_optax.experiments import models

METHODS = ("gsm", "lottery", "oneshot", "gradual", "scratch", "dense_long")
STRUCTURED_METHODS = ("gsm", "gradual", "scratch", "dense_long")  # what a structured run compares
# The group scores of gsm_optax.keep_top_groups a structured run may rank by.
GROUP_IMPORTANCES = ("group_taylor", "group_rms", "taylor", "magnitude")

__all__ = [
    "DEEP_PHASES", "GROUP_IMPORTANCES", "METHODS", "RECIPES", "RECIPE_KEYS", "STRUCTURED_METHODS",
    "ExperimentConfig", "PhaseConfig", "deep_config", "fast_config", "group_importance_for",
    "paper_config", "recommended_config", "scratch_phase", "with_recipe",
]


@dataclasses.dataclass(frozen=True)
class PhaseConfig:
  """One training phase's optimizer and schedule (epochs counted from its start)."""

  learning_rate: float
  epochs: int
  boundaries: tuple[int, ...]
  momentum: float
  nesterov: bool = False
  weight_decay: float = 5e-4
  warmup_epochs: int = 5
  lr_factor: float = 0.1

  def schedule(self, steps_per_epoch: int) -> optax.Schedule:
    return gsm_optax.warmup_piecewise_schedule(
        self.learning_rate,
        warmup_steps=self.warmup_epochs * steps_per_epoch,
        boundaries=[b * steps_per_epoch for b in self.boundaries],
        factor=self.lr_factor,
    )


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Everything one run depends on.

  The defaults are the authors' LeNet settings (Ding et al. 2019, Section 4.1, and their public
  code, DingXiaoH/GSM-SGD): batch 256; base: lr 3e-2, momentum 0.9, weight decay 5e-4, 200
  epochs, x0.1 at 40/80/120/160; GSM: lr 1e-2, Nesterov momentum 0.99, weight decay 5e-4, 280
  epochs, x0.1 at 160/200/240; a 5-epoch linear warm-up in both.
  """

  model: str = "lenet300"
  # Attributes of the model's module (models.MODELS), e.g. {"width": 192, "depth": 6} for the
  # ViT; {} for its defaults.
  model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
  compression: float = 60.0
  dataset: str = "mnist"
  seed: int = 0
  batch_size: int = 256
  methods: tuple[str, ...] = ("gsm", "lottery", "oneshot", "gradual")  # scratch: structured only
  base: PhaseConfig = PhaseConfig(3e-2, 200, (40, 80, 120, 160), momentum=0.9)
  gsm: PhaseConfig = PhaseConfig(1e-2, 280, (160, 200, 240), momentum=0.99, nesterov=True)
  # GSM beyond the paper (0 is the paper's update; see gsm_optax.gsm):
  passive_weight_decay: float = 0.0  # extra decay of the weights outside the top-Q
  passive_weight_decay_begin_epoch: int = 0  # ... from this GSM epoch on (0 before it)
  importance_ema: float = 0.0  # rank by a moving average of the Taylor scores
  anneal_epochs: int = 0  # keep ratio from 1 to 1/compression by a cubic over these GSM epochs
  importance: str = "taylor"  # the weights' score: "taylor" (|g * w|, the paper) or "magnitude"
  # Structured GSM: rank and prune the groups of models.structured_groups (neurons, filters,
  # input features) instead of weights; compression is then counted in `budget`: "groups",
  # "weights" or "macs" (multiply-accumulates per image at the widths kept).
  structured: bool = False
  budget: str = "groups"
  # The group score, as gsm_optax.keep_top_groups names it: "group_taylor" (|sum g*w| over the
  # group), "group_rms" (the RMS of its weights), "taylor" (sum |g*w|) or "magnitude" (sum |w|).
  # A recipe ranking weights by magnitude ranks groups by "group_rms" (with_recipe sets it).
  group_importance: str = "group_taylor"
  per_mac: bool = False  # with budget "macs", rank groups by score per MAC (a knapsack's order)
  # Every group set whose size this divides keeps a multiple of it (gsm_optax.Groups'
  # multiple_of): 8 exports widths at which XLA:CPU's convolutions run as fast as their MACs
  # say (benchmarks/width_speed.py); 1: any width.
  multiple_of: int = 1
  # "global": one ranking of all groups; "uniform": the same fraction of every layer (structured
  # gradual pruning always allocates uniformly: magnitudes of different layers do not compare);
  # "normalized": one ranking of each layer's scores over their own root mean square.
  allocation: str = "global"
  # Gradual magnitude pruning prunes from epoch 0 up to this epoch of its phase
  # (None: the GSM phase's first learning-rate boundary), every this many steps.
  gradual_end_epoch: int | None = None
  gradual_update_every: int | None = None  # None: once an epoch
  train_subset: int | None = None  # use only the first N training images (smoke tests)
  checkpoint_every: int = 10  # epochs
  last_k: int = 5  # also report the mean test accuracy of the last k epochs
  # Structured runs time the exported model against the dense one this many times (medians).
  timing_repeats: int = 15

  def __post_init__(self):
    if self.model not in models.MODELS:
      raise ValueError(f"model must be one of {sorted(models.MODELS)}; got model={self.model!r}.")
    fields = {f.name for f in dataclasses.fields(models.MODELS[self.model])} - {"parent", "name"}
    unknown = sorted(set(self.model_options) - fields)
    if unknown:
      raise ValueError(f"model_options must be attributes of {self.model} ({sorted(fields)});"
                       f" got {unknown}.")
    if not (isinstance(self.compression, (int, float)) and self.compression >= 1):
      raise ValueError(f"compression must be a number >= 1; got compression={self.compression!r}.")
    if self.dataset not in ("mnist", "fashion_mnist"):
      raise ValueError(f"dataset must be 'mnist' or 'fashion_mnist'; got dataset={self.dataset!r}.")
    unknown = [m for m in self.methods if m not in METHODS]
    if unknown or not self.methods:
      raise ValueError(f"methods must be a non-empty subset of {METHODS}; got {self.methods!r}.")
    for name in ("batch_size", "checkpoint_every", "last_k", "timing_repeats"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1; got {name}={getattr(self, name)!r}.")
    if not 0 <= self.passive_weight_decay < float("inf"):
      raise ValueError("passive_weight_decay must be >= 0; got"
                       f" passive_weight_decay={self.passive_weight_decay!r}.")
    if not 0 <= self.importance_ema < 1:
      raise ValueError(f"importance_ema must be in [0, 1); got {self.importance_ema!r}.")
    if not 0 <= self.passive_weight_decay_begin_epoch <= self.gsm.epochs:
      raise ValueError("passive_weight_decay_begin_epoch must be in"
                       f" [0, gsm.epochs={self.gsm.epochs}];"
                       f" got {self.passive_weight_decay_begin_epoch!r}.")
    if not 0 <= self.anneal_epochs <= self.gsm.epochs:
      raise ValueError(f"anneal_epochs must be in [0, gsm.epochs={self.gsm.epochs}];"
                       f" got anneal_epochs={self.anneal_epochs!r}.")
    if self.importance not in ("taylor", "magnitude"):
      raise ValueError("importance must be 'taylor' or 'magnitude'; got"
                       f" importance={self.importance!r}.")
    if self.budget not in ("groups", "weights", "macs"):
      raise ValueError(f"budget must be 'groups', 'weights' or 'macs'; got {self.budget!r}.")
    if self.group_importance not in GROUP_IMPORTANCES:
      raise ValueError(f"group_importance must be one of {GROUP_IMPORTANCES}; got"
                       f" group_importance={self.group_importance!r}.")
    if self.allocation not in gsm_optax.grouping.ALLOCATIONS:
      raise ValueError(f"allocation must be one of {gsm_optax.grouping.ALLOCATIONS}; got"
                       f" allocation={self.allocation!r}.")
    if self.allocation != "global" and not self.structured:
      raise ValueError(f"allocation={self.allocation!r} needs structured=True (it splits a"
                       " budget of groups between their sets).")
    if isinstance(self.multiple_of, bool) or not isinstance(self.multiple_of, int) or (
        self.multiple_of < 1):
      raise ValueError(f"multiple_of must be an int >= 1; got multiple_of={self.multiple_of!r}.")
    if self.multiple_of != 1 and not self.structured:
      raise ValueError(f"multiple_of={self.multiple_of!r} needs structured=True.")
    if self.per_mac and self.budget != "macs":
      raise ValueError(f"per_mac needs budget='macs'; got budget={self.budget!r}.")
    if self.budget != "groups" and not self.structured:
      raise ValueError(f"budget={self.budget!r} needs structured=True.")
    if self.structured and set(self.methods) - set(STRUCTURED_METHODS):
      raise ValueError(f"structured runs compare methods {STRUCTURED_METHODS} only; got"
                       f" methods={self.methods!r}.")
    if "scratch" in self.methods:
      if self.model not in DEEP_PHASES or not self.structured:
        raise ValueError("method 'scratch' trains the widths of a structured GSM export of"
                         f" {sorted(DEEP_PHASES)}: it needs structured=True and one of those"
                         " models (the LeNets' exports also drop input pixels and positions,"
                         " which no freshly built LeNet takes); got"
                         f" model={self.model!r}, structured={self.structured!r}.")
      if "gsm" not in self.methods:
        raise ValueError("method 'scratch' trains the widths that structured GSM's export"
                         f" has: methods must include 'gsm'; got methods={self.methods!r}.")
    for name in ("base", "gsm"):
      phase = getattr(self, name)
      if phase.epochs < 1:
        raise ValueError(f"{name}.epochs must be >= 1; got {phase.epochs!r}.")

  @property
  def keep_ratio(self) -> float:
    return 1.0 / self.compression

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def paper_config(
    model: str = "lenet300", compression: float = 60.0, **overrides
) -> ExperimentConfig:
  """The authors' schedules and GSM update: 200 base epochs, 280 GSM epochs (DingXiaoH/GSM-SGD)."""
  return ExperimentConfig(model=model, compression=compression, **overrides)


# The deep networks' schedules. The authors' ResNet-56 on CIFAR-10 (DingXiaoH/GSM-SGD) trains
# 500 base epochs (lr 0.1, momentum 0.9) and 600 GSM epochs (lr 5e-3, momentum 0.98, drops at
# 400 and 500) at batch 64; here every job must fit 75 minutes on one CPU core, where a
# ResNet-20 step at batch 128 takes ~0.67 s (5.2 min an epoch of Fashion-MNIST) and the ViT's
# ~0.50 s. So: batch 128, the base at He et al.'s lr 0.1 for that batch (the ViT 0.05), GSM at
# the authors' 5e-3 doubled with the batch; 13 and 12 epochs (ResNet-20) or 18 and 16 (ViT),
# GSM's drops at the same fractions of the phase as theirs (2/3 and 5/6), a 1-2 epoch warm-up,
# and weight decay 5e-4 in the base phase (theirs 1e-4; the usual value for short CIFAR runs).
# GSM's weight decay is 1e-3, as the LeNet sweep raises it for its shorter schedule: a weight
# that leaves the top-Q at the end of the recipe's anneal (the first drop) must shrink in the
# few epochs left, at a tenth of the rate. With 1e-3 (the recipe's passive decay 0.1) its
# envelope falls to 5e-5 (ResNet-20) and 5e-7 (ViT) by the end; with 5e-4 only to 0.05 and 0.012
# (gsm_optax.decay_shrink_factor).
DEEP_PHASES: dict[str, dict[str, Any]] = {
    "resnet20": dict(
        batch_size=128,
        base=PhaseConfig(0.1, 13, (7, 10), momentum=0.9, weight_decay=5e-4, warmup_epochs=1),
        gsm=PhaseConfig(1e-2, 12, (8, 10), momentum=0.98, weight_decay=1e-3,
                        warmup_epochs=1)),
    "vit": dict(
        batch_size=128,
        base=PhaseConfig(0.05, 18, (12, 15), momentum=0.9, weight_decay=5e-4, warmup_epochs=2),
        gsm=PhaseConfig(1e-2, 16, (11, 14), momentum=0.98, weight_decay=1e-3,
                        warmup_epochs=1)),
}


def scratch_phase(base: PhaseConfig, gsm: PhaseConfig) -> PhaseConfig:
  """The schedule of the ``scratch`` and ``dense_long`` methods: the base phase's optimizer for
  ``base.epochs + gsm.epochs`` epochs (the same total as a pruned model's), its learning-rate
  drops at the same fractions of the longer phase (rounded to whole epochs), the same warm-up."""
  total = base.epochs + gsm.epochs
  return dataclasses.replace(base, epochs=total, boundaries=tuple(
      round(b * total / base.epochs) for b in base.boundaries))


def deep_config(model: str = "resnet20", compression: float = 10.0,
                dataset: str = "fashion_mnist", **overrides) -> ExperimentConfig:
  """A deep network's schedules (:data:`DEEP_PHASES`): every phase fits 75 min on one core."""
  if model not in DEEP_PHASES:
    raise ValueError(f"model must be one of {sorted(DEEP_PHASES)}; got model={model!r}.")
  settings = dict(DEEP_PHASES[model], checkpoint_every=1, last_k=3) | overrides
  return ExperimentConfig(model=model, compression=compression, dataset=dataset, **settings)


# Named GSM recipes (README, docs/RESULTS.md). Each is a set of options of `gsm_optax.gsm` whose
# lengths are fractions of the GSM phase's epochs up to its first learning-rate drop, so that a
# recipe means the same thing on the authors' 280-epoch schedule and on a shorter one:
# - anneal_fraction: the keep ratio falls from 1 to Q by a cubic over this fraction (0: Q at once);
# - passive_weight_decay_factor: the extra decay of the weights outside the top-Q, as a multiple
#   of the GSM phase's weight decay (which a shorter schedule raises to decay as much in all);
# - passive_from_anneal_end: the passive decay applies only once the keep ratio has reached Q;
# - importance, importance_ema: the score and the rate of its moving average;
# - allocation (structured runs only; an unstructured run ranks its weights in one ranking):
#   "global", one ranking of all groups, "uniform", the same fraction of every group set, or
#   "normalized", one ranking of each set's scores over their own root mean square.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},
    # Fitted on LeNet-300-100 at 60x on MNIST alone (the default until the robustness sweep):
    "fixed": {"anneal_fraction": 100 / 160, "passive_weight_decay_factor": 10.0},
    # The default, chosen by the recipe sweep (gsm_optax.experiments.sweep, docs/RESULTS.md):
    "recommended": {"anneal_fraction": 1.0, "passive_weight_decay_factor": 100.0,
                    "importance": "magnitude",
                    # chosen by the structured cells of the sweep (docs/RESULTS.md)
                    "allocation": gsm_optax.recipes.STRUCTURED_ALLOCATION},
}
RECIPE_KEYS = ("anneal_fraction", "passive_weight_decay_factor", "passive_from_anneal_end",
               "importance", "importance_ema", "allocation")


def with_recipe(config: ExperimentConfig, recipe: str | dict[str, Any]) -> ExperimentConfig:
  """``config`` with a GSM recipe: a name of :data:`RECIPES` or a dict of its settings.

  ``"paper"`` leaves the authors' update unchanged. A recipe's anneal length is
  ``anneal_fraction`` of the GSM epochs up to the first learning-rate drop (100 of the authors'
  160 for ``anneal_fraction = 100 / 160``), and its passive decay a multiple of the phase's
  weight decay (``passive_weight_decay_factor = 10``: 5e-3 with the authors' 5e-4). Its
  ``allocation`` applies to a structured ``config`` only.
  """
  if isinstance(recipe, str):
    if recipe not in RECIPES:
      raise ValueError(f"recipe must be one of {sorted(RECIPES)}; got recipe={recipe!r}.")
    settings = RECIPES[recipe]
  else:
    settings = dict(recipe)
    unknown = sorted(set(settings) - set(RECIPE_KEYS))
    if unknown:
      raise ValueError(f"recipe settings must be among {RECIPE_KEYS}; got {unknown}.")
  if not settings:
    return config
  phase = config.gsm
  first_drop = phase.boundaries[0] if phase.boundaries else phase.epochs
  fraction = settings.get("anneal_fraction", 0.0)
  anneal = max(1, round(fraction * first_drop)) if fraction else 0
  return dataclasses.replace(
      config, anneal_epochs=anneal,
      passive_weight_decay=settings.get("passive_weight_decay_factor", 0.0) * phase.weight_decay,
      passive_weight_decay_begin_epoch=anneal if settings.get("passive_from_anneal_end") else 0,
      importance=settings.get("importance", "taylor"),
      group_importance=group_importance_for(settings.get("importance", "taylor"),
                                            config.group_importance),
      importance_ema=settings.get("importance_ema", 0.0),
      allocation=(settings.get("allocation", config.allocation) if config.structured
                  else config.allocation))


def group_importance_for(importance: str, group_importance: str) -> str:
  """The group score of a run whose weights are ranked by ``importance``: ``"group_rms"``, the
  groups' magnitude, for ``"magnitude"`` where the group score is still the default
  ``"group_taylor"``; ``group_importance`` otherwise."""
  if importance == "magnitude" and group_importance == "group_taylor":
    return "group_rms"
  return group_importance


def recommended_config(
    model: str = "lenet300", compression: float = 60.0, **overrides
) -> ExperimentConfig:
  """The authors' schedules with the recommended GSM recipe (see :func:`with_recipe`)."""
  return with_recipe(paper_config(model, compression, **overrides), "recommended")


def fast_config(
    model: str = "lenet300", compression: float = 60.0, **overrides
) -> ExperimentConfig:
  """The whole pipeline in about a minute on a 2-core CPU, for demos and smoke tests.

  The GSM phase is 10 epochs instead of 280, so the authors' weight decay would
  leave the weights outside the top-Q far from zero (see
  :func:`gsm_optax.decay_shrink_factor`); it uses 1.2e-2 instead, enough (with the
  recommended recipe's extra passive decay) for them to shrink below 1e-3 of their size.
  """
  defaults: dict[str, Any] = dict(
      train_subset=20_000,
      base=PhaseConfig(3e-2, 4, (3,), momentum=0.9, warmup_epochs=1),
      gsm=PhaseConfig(1e-2, 10, (7,), momentum=0.99, nesterov=True, weight_decay=1.2e-2,
                      warmup_epochs=1),
      checkpoint_every=2,
      last_k=2,
  )
  if model in DEEP_PHASES:
    defaults["dataset"] = "fashion_mnist"
    defaults["train_subset"] = 2_048
    defaults["batch_size"] = 128
    defaults["base"] = PhaseConfig(0.05, 2, (1,), momentum=0.9, warmup_epochs=1)
    defaults["gsm"] = PhaseConfig(1e-2, 3, (2,), momentum=0.98, weight_decay=5e-3,
                                  warmup_epochs=1)
  elif model == "lenet5":
    defaults["train_subset"] = 5_000
    defaults["base"] = PhaseConfig(3e-2, 2, (1,), momentum=0.9, warmup_epochs=1)
    defaults["gsm"] = PhaseConfig(1e-2, 4, (3,), momentum=0.99, nesterov=True,
                                  weight_decay=2e-2, warmup_epochs=1)
  defaults.update(overrides)
  return ExperimentConfig(model=model, compression=compression, **defaults)
