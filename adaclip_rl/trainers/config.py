"""``AdaClipGRPOConfig``: TRL's ``GRPOConfig`` plus the adaptive-clipping fields.

Every TRL field keeps its meaning; ``policy_loss`` picks the per-token policy term:

* ``grpo``   - PPO/GRPO clip with TRL's ``epsilon``/``epsilon_high``/``delta`` (+ optional dual-clip)
* ``bapo``   - BAPO adaptive asymmetric bounds (Xi et al., arXiv 2510.18927)
* ``archer`` - Archer entropy-classed clip widths and KL weights (Wang et al., arXiv 2507.15778)

Invalid values are refused in ``__post_init__`` with the field name, the value and the allowed range.
"""

from __future__ import annotations

from dataclasses import dataclass

from trl import GRPOConfig

from . import field_checks
from .adaclip_fields import AdaClipFields
from .field_checks import CLIP_LOSS_TYPES

__all__ = ["CLIP_LOSS_TYPES", "AdaClipGRPOConfig"]


@dataclass
class AdaClipGRPOConfig(AdaClipFields, GRPOConfig):
    r"""GRPO configuration with adaptive clipping. See :class:`trl.GRPOConfig` for the base fields.

    Parameters specific to adaclip-rl (:class:`~adaclip_rl.trainers.adaclip_fields.AdaClipFields`)
    are grouped by prefix: ``bapo_*`` (BAPO bound search), ``archer_*`` (Archer token classes),
    ``grad_clip`` with ``zclip_*``, ``adagc_*``, ... (adaptive gradient clipping); each is derived
    from the setting it configures (``bapo_target`` from ``BAPOConfig.target``).
    """

    def __post_init__(self) -> None:
        # Our fields are checked before TRL/transformers' own post-init, so that a typo in them is
        # reported as such (and not hidden behind, e.g., "Your setup doesn't support bf16/gpu").
        self.validate_adaclip_fields()
        super().__post_init__()
        field_checks.validate_after_trl(self)
