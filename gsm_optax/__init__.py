"""gsm-optax: Global Sparse Momentum SGD as composable optax transformations."""

from gsm_optax.eligibility import default_eligible
from gsm_optax.importance import magnitude, taylor
from gsm_optax.pruning import prune, prune_mask
from gsm_optax.reporting import LeafSparsity, SparsityReport, sparsity_report
from gsm_optax.selection import Selection, global_topk_mask, global_topk_selection
from gsm_optax.sparse import load_sparse, save_sparse, to_dense, to_sparse
from gsm_optax.transform import (
    KeepTopGradientsState,
    SelectionStats,
    gsm,
    keep_count,
    keep_top_gradients,
    selection_stats,
)

__version__ = "0.1.0"

__all__ = [
    "KeepTopGradientsState",
    "LeafSparsity",
    "Selection",
    "SelectionStats",
    "SparsityReport",
    "default_eligible",
    "global_topk_mask",
    "global_topk_selection",
    "gsm",
    "keep_count",
    "keep_top_gradients",
    "load_sparse",
    "magnitude",
    "prune",
    "prune_mask",
    "save_sparse",
    "selection_stats",
    "sparsity_report",
    "taylor",
    "to_dense",
    "to_sparse",
]
