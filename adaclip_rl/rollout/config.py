"""Configuration of the off-policy rollout machinery (partial rollouts, replay, staleness, IS).

One dataclass, validated at construction: a misconfiguration fails when the config is built, not
steps into a run. :class:`adaclip_rl.trainers.offpolicy.OffPolicyGRPOConfig` exposes the same
fields (validated by building a :class:`RolloutConfig` in its ``__post_init__``), so Python, YAML
and the trainer share one set of checks and messages.

Design references (upstream projects: THUDM/slime, inclusionAI/AReaL, volcengine/verl, OpenRLHF/OpenRLHF,
huggingface/trl):

* partial rollouts with a per-round token budget, continued before new prompts are admitted:
  slime ``--partial-rollout`` (``RolloutDataSourceWithBuffer`` serves unfinished groups first),
  AReaL ``RemoteInfEngine.agenerate`` (per-token ``output_versions``), APRIL;
* staleness bounded in policy versions: AReaL ``max_head_offpolicyness``, TRL AsyncGRPO
  ``max_staleness`` (drop at consumption);
* truncated / masked importance weights against the behaviour policy: TIS (slime ``--use-tis``,
  verl ``rollout_is_threshold``), ICEPOP/masking (OpenRLHF, AReaL ``rejection_sampling``);
* decoupled PPO (AReaL, arXiv 2505.24298): clip against a proximal policy recomputed by the
  trainer, multiply by the behaviour weight pi_prox / pi_behaviour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from ..checks import check_choice, check_int, check_interval

IS_LEVELS = ("token", "sequence", "sequence_mean")
IS_MODES = ("truncate", "mask")
STALENESS_POLICIES = ("drop", "downweight")
STALENESS_LEVELS = ("token", "sequence")
REPLAY_SELECTIONS = ("uniform", "variance")
RATIO_ANCHORS = ("proximal", "behaviour")


@dataclass
class RolloutConfig:
    """Off-policy rollout settings.

    Partial rollouts (``partial_rollouts=True``): all in-flight sequences generate in one
    continuous batch; once a generation batch has its groups, the sequences still running are
    interrupted and continued in the next batch - after the weight update - by the then-current
    policy, *before* new prompts are admitted. They keep their tokens, behaviour log-probs and
    per-token versions. Generation is cut only there, never at a token budget. A completion spans
    at most ``partial_max_segments`` policy versions (in its last one it is not interrupted). With
    ``max_staleness`` every group is returned within that many versions of its admission: each
    admitted group gets a due version, at which it is not interrupted and is returned first, and
    admission waits while every version within the bound already has one batch of due groups
    (:mod:`adaclip_rl.rollout.partial`). No completion is truncated and no group is dropped for these
    bounds. ``partial_prefill_groups`` extra prompt groups are kept in flight so that the long tail
    of one batch generates beside the next batch's prompts; with ``max_staleness = M`` at most
    ``M`` batches of fresh groups can be in flight beyond the batch, so the trainer caps the pre-fill
    there (``M = 0``: no pre-fill, generation is synchronous). Generation and training still
    alternate (in one process); nothing runs concurrently with training.

    Importance correction: per token ``w = exp(logp_old - logp_behaviour)``, truncated at
    ``behaviour_is_cap`` (``behaviour_is_mode="truncate"``, TIS) or zeroed beyond it (``"mask"``, ICEPOP-style), at
    token level, sequence level (``exp`` of the summed log-ratio: long traces are almost always
    capped) or ``sequence_mean`` (``exp`` of the mean log-ratio, the per-token geometric mean). ``logp_old`` is the proximal policy recomputed by the trainer
    (``ratio_anchor="proximal"``, AReaL's decoupled objective); with ``ratio_anchor="behaviour"``
    the PPO/BAPO ratio is taken directly against the behaviour log-probs and ``w = 1`` (verl
    "bypass" mode, slime ``--use-rollout-logprobs``).

    Staleness of a token = current policy version - version that generated it. Versions count
    weight pushes into the engine (one per generation batch), not optimizer steps. Beyond ``max_staleness`` samples are dropped (weight 0) or
    down-weighted by ``staleness_decay ** (staleness - max_staleness)``.

    Replay: scored groups (non-constant rewards) are stored with ``replay_capacity`` (oldest
    evicted) and expire beyond ``replay_max_age`` - or beyond ``max_staleness`` with
    ``staleness_policy="drop"``, where the loss would give them weight 0 (:attr:`replay_expiry_age`).
    Each generation batch of ``n`` groups takes ``k`` groups from the buffer, selected ``uniform``
    or by reward ``variance``: ``k`` rounds ``replay_ratio * n`` by error diffusion (the carried
    fraction makes the share over a run exact to within one group) and is at most ``n - 1``, so
    every batch generates at least one fresh group (:class:`adaclip_rl.rollout.schedule.ReplayShare`).
    """

    # --- generation lengths
    max_completion_length: int = field(default=512, metadata={"help": "Maximum completion length in tokens."})

    # --- behaviour data
    use_behaviour_logprobs: bool = field(
        default=True,
        metadata={"help": "Record per-token behaviour log-probs (required by partial rollouts/replay)."},
    )

    # --- partial rollouts
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
            "next batch's prompts; default: the fresh groups of one generation batch. With max_staleness M at "
            "most M x the fresh groups of a batch (more are capped with a warning); 0 when M = 0."
        },
    )

    # --- importance correction
    ratio_anchor: str = field(
        default="proximal",
        metadata={
            "help": f"{list(RATIO_ANCHORS)}: 'behaviour' = the clipped ratio is pi_theta/pi_behaviour (the policy "
            "that sampled each token; BAPO and Archer clip this ratio, verl bypass mode), behaviour weight 1; "
            "'proximal' = clip pi_theta/pi_old (recomputed at generation time, about 1 on the first update) and "
            "weight by the capped pi_old/pi_behaviour (AReaL decoupled PPO)."
        },
    )
    behaviour_is_level: str = field(
        default="token",
        metadata={"help": f"Behaviour IS weight level {list(IS_LEVELS)} (sequence: exp of the summed log-ratio, "
                  "almost always capped on long traces; sequence_mean: exp of the mean)."},
    )
    behaviour_is_mode: str = field(
        default="truncate", metadata={"help": f"{list(IS_MODES)}: truncate at the cap (TIS) or zero beyond it."}
    )
    behaviour_is_cap: float = field(default=2.0, metadata={"help": "Behaviour IS weight cap (>= 1)."})

    # --- staleness
    max_staleness: int | None = field(
        default=None,
        metadata={"help": "Max staleness in policy versions (weight pushes, one per generation batch); "
                  "None: unbounded. Partial rollouts respect it at admission (every group is returned within M "
                  "versions of its admission); replayed groups expire at it under 'drop'."},
    )
    staleness_policy: str = field(
        default="drop",
        metadata={"help": f"{list(STALENESS_POLICIES)} samples beyond max_staleness (downweight: decay**excess)."},
    )
    staleness_decay: float = field(default=0.5, metadata={"help": "Down-weighting factor gamma in [0, 1]."})
    staleness_level: str = field(
        default="sequence", metadata={"help": "'sequence' (oldest token of a sample) or 'token' staleness."}
    )

    # --- replay buffer
    replay_ratio: float = field(
        default=0.0,
        metadata={"help": "Share of each batch's groups taken from the replay buffer, in [0, 1)."},
    )
    replay_capacity: int = field(default=64, metadata={"help": "Replay buffer capacity in groups (>= 1)."})
    replay_max_age: int | None = field(
        default=4, metadata={"help": "Max age of a replayed group in policy versions (weight pushes); None: unbounded. "
                             "With staleness_policy 'drop' groups expire at max_staleness if that is smaller."}
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

    seed: int = field(default=0, metadata={"help": "Seed of the replay buffer's sampling."})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field, its value and the allowed range."""
        check_int("max_completion_length", self.max_completion_length, 1)
        if self.partial_rollouts:
            if not self.use_behaviour_logprobs:
                raise ValueError(
                    "partial_rollouts=True requires use_behaviour_logprobs=True: a continued sequence "
                    "mixes tokens from several policy versions and its importance ratios need the "
                    "per-token behaviour log-probs recorded at generation time"
                )
        check_int("partial_max_segments", self.partial_max_segments, 1)
        check_int("partial_prefill_groups", self.partial_prefill_groups, 0, allow_none=True)
        check_int("max_staleness", self.max_staleness, 0, allow_none=True)
        if self.partial_rollouts and self.max_staleness == 0 and self.partial_prefill_groups:
            raise ValueError(
                f"partial_prefill_groups={self.partial_prefill_groups} with max_staleness=0 and partial_rollouts=True: "
                "a pre-filled group would be returned a version after its admission, beyond the bound; use "
                "partial_prefill_groups=0 (or None), or max_staleness >= 1")
        check_choice("ratio_anchor", self.ratio_anchor, RATIO_ANCHORS)
        if self.ratio_anchor == "behaviour" and not self.use_behaviour_logprobs:
            raise ValueError("ratio_anchor='behaviour' requires use_behaviour_logprobs=True")
        check_choice("behaviour_is_level", self.behaviour_is_level, IS_LEVELS)
        check_choice("behaviour_is_mode", self.behaviour_is_mode, IS_MODES)
        check_interval("behaviour_is_cap", self.behaviour_is_cap, 1.0, math.inf)
        check_int("max_staleness", self.max_staleness, 0, allow_none=True)
        check_choice("staleness_policy", self.staleness_policy, STALENESS_POLICIES)
        check_interval("staleness_decay", self.staleness_decay, 0.0, 1.0)
        check_choice("staleness_level", self.staleness_level, STALENESS_LEVELS)
        check_interval("replay_ratio", self.replay_ratio, 0, 1, high_open=True,
                       why="the share of each batch taken from the buffer, which only fresh groups fill")
        if self.replay_ratio > 0 and not self.use_behaviour_logprobs:
            raise ValueError(
                "replay_ratio > 0 requires use_behaviour_logprobs=True: replayed samples are stale and "
                "need their behaviour log-probs for the importance correction"
            )
        check_int("replay_capacity", self.replay_capacity, 1)
        check_int("replay_max_age", self.replay_max_age, 0, allow_none=True)
        check_choice("replay_selection", self.replay_selection, REPLAY_SELECTIONS)
        check_int("replay_max_reuse", self.replay_max_reuse, 1, allow_none=True)
        check_int("seed", self.seed, 0)

    # ------------------------------------------------------------------ helpers
    @property
    def off_policy(self) -> bool:
        """Partial rollouts or replay are on: the off-policy trainer's rollout machinery runs."""
        return self.partial_rollouts or self.replay_ratio > 0

    @property
    def replay_expiry_age(self) -> int | None:
        """Age beyond which replayed groups expire: ``replay_max_age``, or ``max_staleness`` if smaller
        under ``staleness_policy="drop"`` (the loss would give older groups weight 0 while still
        counting them as replays and in the loss's denominator)."""
        ages = [a for a in (self.replay_max_age,) if a is not None]
        if self.staleness_policy == "drop" and self.max_staleness is not None:
            ages.append(self.max_staleness)
        return min(ages) if ages else None

    @property
    def max_segments(self) -> int:
        """Policy versions a completion may span (1 without partial rollouts: never interrupted)."""
        return self.partial_max_segments if self.partial_rollouts else 1

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_object(cls, obj: Any, **overrides: Any) -> RolloutConfig:
        """Build from any object carrying attributes of the same names (e.g. a trainer config)."""
        kwargs = {name: getattr(obj, name) for name in cls.field_names() if hasattr(obj, name)}
        kwargs.update(overrides)
        return cls(**kwargs)
