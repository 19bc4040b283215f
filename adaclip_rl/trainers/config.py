"""``AdaClipGRPOConfig``: TRL's ``GRPOConfig`` plus the adaptive-clipping fields; ``OffPolicyGRPOConfig``
adds the off-policy rollout fields.

Every TRL field keeps its meaning; ``policy_loss`` picks the per-token policy term:

* ``grpo``   - PPO/GRPO clip with TRL's ``epsilon``/``epsilon_high``/``delta`` (+ optional dual-clip)
* ``bapo``   - BAPO adaptive asymmetric bounds (Xi et al., arXiv 2510.18927)
* ``archer`` - Archer entropy-classed clip widths and KL weights (Wang et al., arXiv 2507.15778)

Invalid values are refused in ``__post_init__`` with the field name, the value and the allowed range.
The fields come from :mod:`.adaclip_fields` (hand-written choices, methods) and
:mod:`.generated_fields` (one per registry setting); the checks are :mod:`.field_checks`' (plain
functions, also run by the recipe pre-check before TRL is imported). The asynchronous trainer's
config is :mod:`.async_config` (it imports TRL's experimental package).
"""

from __future__ import annotations

from dataclasses import dataclass

from trl import GRPOConfig

from . import field_checks
from .adaclip_fields import AdaClipFields, RolloutFields
from .field_checks import CLIP_LOSS_TYPES

__all__ = ["CLIP_LOSS_TYPES", "AdaClipGRPOConfig", "OffPolicyGRPOConfig"]


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


@dataclass
class OffPolicyGRPOConfig(RolloutFields, AdaClipGRPOConfig):
    r"""``AdaClipGRPOConfig`` plus off-policy rollouts: one field per :class:`adaclip_rl.rollout.RolloutConfig`
    field (:class:`~adaclip_rl.trainers.adaclip_fields.RolloutFields`, same name, default and help;
    ``ratio_anchor`` adds ``"auto"``).

    Partial rollouts and replay need ``use_vllm=True`` with ``vllm_mode="colocate"`` (behaviour
    log-probs come from vLLM with ``logprobs_mode="processed_logprobs"``) and
    ``vllm_importance_sampling_correction=True`` (TRL then recomputes the proximal log-probs and
    the loss multiplies the behaviour weight in).
    """

    def validate_adaclip_fields(self) -> None:
        """The parent's checks, then the rollout fields (all before TRL's own post-init)."""
        super().validate_adaclip_fields()
        field_checks.validate_rollout_fields(self)
