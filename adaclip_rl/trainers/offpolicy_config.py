"""Configuration of :class:`~adaclip_rl.trainers.offpolicy.OffPolicyGRPOTrainer`.

Kept apart from the trainer so that parsing a recipe (``adaclip-rl train --config``) imports only
the config classes, not TRL's trainer and vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..rollout.config import (
    IS_LEVELS,
    IS_MODES,
    RATIO_ANCHORS,
    REPLAY_SELECTIONS,
    STALENESS_POLICIES,
    RolloutConfig,
)
from . import field_checks
from .config import AdaClipGRPOConfig


@dataclass
class OffPolicyGRPOConfig(AdaClipGRPOConfig):
    r"""``AdaClipGRPOConfig`` plus off-policy rollouts (fields of :class:`adaclip_rl.rollout.RolloutConfig`).

    Partial rollouts and replay need ``use_vllm=True`` with ``vllm_mode="colocate"`` (behaviour
    log-probs come from vLLM with ``logprobs_mode="processed_logprobs"``) and
    ``vllm_importance_sampling_correction=True`` (TRL then recomputes the proximal log-probs and
    the loss multiplies the behaviour weight in).
    """

    partial_rollouts: bool = field(
        default=False,
        metadata={
            "help": "Interrupt generation when a generation batch has its groups; unfinished sequences carry "
            "their tokens, behaviour log-probs and versions over to the next batch, continued by the updated "
            "policy (APRIL / slime / AReaL). Generation and training still alternate: nothing overlaps."
        },
    )
    partial_max_segments: int = field(
        default=4,
        metadata={"help": "Policy versions (generation batches) a completion may span (>= 1); in its last one it "
                  "is not interrupted, so it is never truncated by this bound."},
    )
    partial_prefill_groups: int | None = field(
        default=None,
        metadata={
            "help": "Extra prompt groups kept in flight (>= 0), so that a batch's long tail generates beside the "
            "next batch's prompts; default: the groups of one generation batch."
        },
    )
    use_behaviour_logprobs: bool = field(
        default=True,
        metadata={"help": "Record per-token behaviour log-probs (required by partial rollouts/replay)."},
    )
    ratio_anchor: str = field(
        default="auto",
        metadata={
            "help": f"{['auto', *RATIO_ANCHORS]}: 'behaviour' = the clipped ratio is pi_theta/pi_behaviour (the "
            "policy that sampled each token; BAPO and Archer clip this ratio, verl bypass mode), behaviour weight 1; "
            "'proximal' = clip pi_theta/pi_old (recomputed at generation time, about 1 on the first update) and "
            "weight by the capped pi_old/pi_behaviour (AReaL decoupled PPO). 'auto': 'behaviour' for "
            "policy_loss bapo/archer, 'proximal' for grpo."
        },
    )
    behaviour_is_level: str = field(
        default="token", metadata={"help": f"Behaviour IS weight level {list(IS_LEVELS)} (sequence: exp of the summed log-ratio, "
                  "almost always capped on long traces; sequence_mean: exp of the mean)."}
    )
    behaviour_is_mode: str = field(
        default="truncate",
        metadata={"help": f"{list(IS_MODES)}: truncate at the cap (TIS) or zero beyond it."},
    )
    behaviour_is_cap: float = field(default=2.0, metadata={"help": "Behaviour IS weight cap (>= 1)."})
    max_staleness: int | None = field(
        default=None,
        metadata={"help": "Max staleness in policy versions (weight pushes, one per generation batch); "
                  "None: unbounded. Partial rollouts respect it at admission (a sequence is not interrupted if "
                  "it would exceed it), so only replayed or resumed data can be beyond it."},
    )
    staleness_policy: str = field(
        default="drop",
        metadata={
            "help": f"{list(STALENESS_POLICIES)} samples beyond max_staleness (downweight: decay**excess)."
        },
    )
    staleness_decay: float = field(default=0.5, metadata={"help": "Down-weighting factor gamma in [0, 1]."})
    staleness_level: str = field(
        default="sequence", metadata={"help": "'sequence' (oldest token of a sample) or 'token' staleness."}
    )
    replay_ratio: float = field(
        default=0.0,
        metadata={"help": "Share of each batch's groups taken from the replay buffer, in [0, 1]."},
    )
    replay_capacity: int = field(default=64, metadata={"help": "Replay buffer capacity in groups (>= 1)."})
    replay_max_age: int | None = field(
        default=4, metadata={"help": "Max age of a replayed group in policy versions (weight pushes); None: unbounded."}
    )
    replay_selection: str = field(
        default="uniform",
        metadata={"help": f"Replay selection {list(REPLAY_SELECTIONS)} (variance: by reward std)."},
    )
    replay_filter_equal_rewards: bool = field(
        default=True, metadata={"help": "Do not store groups whose rewards are all equal (zero advantage)."}
    )
    replay_max_reuse: int | None = field(
        default=None, metadata={"help": "Remove a group after this many replays (>= 1); None: unlimited."}
    )

    def _validate_adaclip_fields(self) -> None:
        """The parent's checks, then the rollout fields (all before TRL's own post-init)."""
        super()._validate_adaclip_fields()
        field_checks.validate_rollout_fields(self)

    def rollout_config(self) -> RolloutConfig:
        """The validated :class:`RolloutConfig` (shares field names with this config; ``ratio_anchor``
        resolved)."""
        return RolloutConfig.from_object(self, ratio_anchor=field_checks.resolved_ratio_anchor(self))
