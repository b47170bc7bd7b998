"""The paper's reproduction, and deep networks, built on the public ``gsm_optax`` API.

Not imported by ``import gsm_optax``: data loaders (:mod:`.datasets`), the
models and what each prunes (:mod:`.models`: the LeNets, ResNet-20, a ViT), a
jitted training loop (:mod:`.training`), an experiment's configuration and presets
(:mod:`.config`), the experiment runner behind ``gsm-optax mnist`` and
``gsm-optax train`` (:mod:`.runner`), the sweep (:mod:`.sweep`; its command line
:mod:`.sweep_cli`), plots (:mod:`.plotting`, needs matplotlib) and the command line
(:mod:`.cli`).
"""

from gsm_optax.experiments.config import (
    DEEP_PHASES,
    METHODS,
    ExperimentConfig,
    PhaseConfig,
    deep_config,
    fast_config,
    paper_config,
    recommended_config,
    with_recipe,
)
from gsm_optax.experiments.datasets import Dataset, load_fashion_mnist, load_mnist
from gsm_optax.experiments.models import MODELS, PRUNABLE, LeNet5, LeNet300100, ResNet20, ViT
from gsm_optax.experiments.runner import load_phase_params, load_phase_variables, run

__all__ = [
    "DEEP_PHASES",
    "METHODS",
    "MODELS",
    "PRUNABLE",
    "Dataset",
    "ExperimentConfig",
    "LeNet300100",
    "LeNet5",
    "PhaseConfig",
    "ResNet20",
    "ViT",
    "deep_config",
    "fast_config",
    "load_fashion_mnist",
    "load_mnist",
    "load_phase_params",
    "load_phase_variables",
    "paper_config",
    "recommended_config",
    "run",
    "with_recipe",
]
