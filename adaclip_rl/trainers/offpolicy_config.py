"""Configuration of :class:`~adaclip_rl.trainers.offpolicy.OffPolicyGRPOTrainer`.

Kept apart from the trainer so that parsing a recipe (``adaclip-rl train --config``) imports only
the config classes, not TRL's trainer and vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import field_checks
from .adaclip_fields import RolloutFields
from .config import AdaClipGRPOConfig


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
