"""The paper's MNIST reproduction, built on the public ``gsm_optax`` API.

Not imported by ``import gsm_optax``: data loaders (:mod:`.datasets`), the
LeNet models (:mod:`.models`), a jitted training loop (:mod:`.training`), the
experiment runner behind ``gsm-optax mnist`` (:mod:`.runner`), its plots
(:mod:`.plotting`, needs matplotlib) and the command line (:mod:`.cli`).
"""

from gsm_optax.experiments.datasets import Dataset, load_fashion_mnist, load_mnist
from gsm_optax.experiments.models import LeNet5, LeNet300100
from gsm_optax.experiments.runner import (
    METHODS,
    ExperimentConfig,
    PhaseConfig,
    fast_config,
    load_phase_params,
    paper_config,
    recommended_config,
    run,
    with_recipe,
)

__all__ = [
    "METHODS",
    "Dataset",
    "ExperimentConfig",
    "LeNet300100",
    "LeNet5",
    "PhaseConfig",
    "fast_config",
    "load_fashion_mnist",
    "load_mnist",
    "load_phase_params",
    "paper_config",
    "recommended_config",
    "run",
    "with_recipe",
]
