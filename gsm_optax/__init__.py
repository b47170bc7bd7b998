"""gsm-optax: Global Sparse Momentum SGD as composable optax transformations."""

from gsm_optax.eligibility import default_eligible
from gsm_optax.grouping import (
    GroupMember,
    Groups,
    MacCost,
    MacTerm,
    input_groups,
    mac_costs,
    output_groups,
)
from gsm_optax.importance import magnitude, taylor
from gsm_optax.masking import (
    GradualPruningState,
    HoldMaskState,
    gradual_magnitude_pruning,
    hold_mask,
)
from gsm_optax.pruning import prune, prune_mask
from gsm_optax.readiness import PruneReadiness, prune_readiness
from gsm_optax.recipes import recommended_gsm
from gsm_optax.reporting import LeafSparsity, SparsityReport, sparsity_report
from gsm_optax.schedules import (
    cubic_keep_ratio_schedule,
    decay_shrink_factor,
    shrink_warning,
    simulate_decay_shrink,
    warmup_piecewise_schedule,
)
from gsm_optax.selection import (
    Selection,
    global_budget_selection,
    global_topk_mask,
    global_topk_selection,
)
from gsm_optax.sparse import load_sparse, save_sparse, to_dense, to_sparse
from gsm_optax.structure import ChannelSet, Coupling, Narrow, couple, narrow
from gsm_optax.transform import (
    KeepTopGradientsState,
    SelectionStats,
    gsm,
    keep_count,
    keep_top_gradients,
    keep_top_groups,
    selection_stats,
)

__version__ = "0.1.0"

__all__ = [
    "ChannelSet",
    "couple",
    "Coupling",
    "cubic_keep_ratio_schedule",
    "decay_shrink_factor",
    "default_eligible",
    "global_budget_selection",
    "global_topk_mask",
    "global_topk_selection",
    "gradual_magnitude_pruning",
    "GradualPruningState",
    "GroupMember",
    "Groups",
    "gsm",
    "hold_mask",
    "HoldMaskState",
    "input_groups",
    "keep_count",
    "keep_top_gradients",
    "keep_top_groups",
    "KeepTopGradientsState",
    "LeafSparsity",
    "load_sparse",
    "mac_costs",
    "MacCost",
    "MacTerm",
    "magnitude",
    "narrow",
    "Narrow",
    "output_groups",
    "prune",
    "prune_mask",
    "prune_readiness",
    "PruneReadiness",
    "recommended_gsm",
    "save_sparse",
    "Selection",
    "selection_stats",
    "SelectionStats",
    "shrink_warning",
    "simulate_decay_shrink",
    "sparsity_report",
    "SparsityReport",
    "taylor",
    "to_dense",
    "to_sparse",
    "warmup_piecewise_schedule",
]
