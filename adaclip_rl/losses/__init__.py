"""Policy-loss core: pure PyTorch (no trl/transformers import), vectorised, no host sync.

* :mod:`.surrogate` - clipped surrogate with per-token bounds, dual-clip, TRL aggregation modes
* :mod:`.bapo` - BAPO adaptive bound search (arXiv 2510.18927)
* :mod:`.archer` - Archer entropy-classed clip widths and KL weights (arXiv 2507.15778)
* :mod:`.kl` - k1/k2/k3 KL estimators
* :mod:`.ratio` - the log-ratio clamp and the tokens it leaves a gradient
* :mod:`.registry` - policy losses by name, each with its config, field prefix and needs
"""

from .archer import ArcherConfig, ArcherResult, archer_loss, archer_token_classes, entropy_thresholds
from .bapo import (
    BAPOConfig,
    BAPOResult,
    bapo_loss,
    bapo_search,
    bapo_select,
    bapo_statistic_weights,
    bapo_statistics,
)
from .kl import KL_ESTIMATORS, kl_estimate
from .ratio import LOG_RATIO_CLAMP, clamp_log_ratio, sequence_live_fraction
from .registry import (
    POLICY_LOSS_CONFIGS,
    POLICY_LOSS_SPECS,
    POLICY_LOSSES,
    GRPOClipConfig,
    PolicyLossOutput,
    PolicyLossSpec,
    get_policy_loss,
    get_policy_loss_spec,
    register_policy_loss,
)
from .surrogate import (
    AGGREGATION_MODES,
    ClipMasks,
    aggregate_loss,
    aggregation_weights,
    clip_fractions,
    clipped_surrogate,
    clipped_surrogate_with_masks,
)

__all__ = [
    "AGGREGATION_MODES",
    "KL_ESTIMATORS",
    "LOG_RATIO_CLAMP",
    "POLICY_LOSSES",
    "POLICY_LOSS_CONFIGS",
    "POLICY_LOSS_SPECS",
    "ArcherConfig",
    "ArcherResult",
    "BAPOConfig",
    "BAPOResult",
    "ClipMasks",
    "GRPOClipConfig",
    "PolicyLossOutput",
    "PolicyLossSpec",
    "aggregate_loss",
    "aggregation_weights",
    "archer_loss",
    "archer_token_classes",
    "bapo_loss",
    "bapo_search",
    "bapo_select",
    "bapo_statistic_weights",
    "bapo_statistics",
    "clamp_log_ratio",
    "clip_fractions",
    "clipped_surrogate",
    "clipped_surrogate_with_masks",
    "entropy_thresholds",
    "get_policy_loss",
    "get_policy_loss_spec",
    "kl_estimate",
    "register_policy_loss",
    "sequence_live_fraction",
]
