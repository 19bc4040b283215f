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
from dataclasses import dataclass, fields
from typing import Any

IS_LEVELS = ("token", "sequence", "sequence_mean")
IS_MODES = ("truncate", "mask")
STALENESS_POLICIES = ("drop", "downweight")
STALENESS_LEVELS = ("token", "sequence")
REPLAY_SELECTIONS = ("uniform", "variance")
RATIO_ANCHORS = ("proximal", "behaviour")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}; got {value!r}")


def _check_int(name: str, value: Any, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(
            f"{name} must be an integer >= {low}{' or None' if allow_none else ''}; got {value!r}"
        )


def _check_float(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        close = ")" if math.isinf(high) else "]"
        raise ValueError(f"{name} must be in {bracket}{low}, {high}{close}; got {value!r}")


@dataclass
class RolloutConfig:
    """Off-policy rollout settings.

    Partial rollouts (``partial_rollouts=True``): all in-flight sequences generate in one
    continuous batch; once a generation batch has its groups, the sequences still running are
    interrupted and continued in the next batch - after the weight update - by the then-current
    policy, *before* new prompts are admitted. They keep their tokens, behaviour log-probs and
    per-token versions. Generation is cut only there, never at a token budget. A completion spans
    at most ``partial_max_segments`` policy versions and is never staler than ``max_staleness``
    when trained on: a sequence that would exceed either bound is not interrupted (it finishes in
    the current batch), so no completion is truncated and no group is dropped for these bounds.
    ``partial_prefill_groups`` extra prompt groups are kept in flight so that the long tail of one
    batch generates beside the next batch's prompts. Generation and training still alternate (in
    one process); nothing runs concurrently with training.

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
    evicted) and ``replay_max_age``; each training batch takes ``round(replay_ratio * groups)``
    groups from the buffer, selected ``uniform`` or by reward ``variance``.
    """

    # --- generation lengths
    max_completion_length: int = 512

    # --- behaviour data
    use_behaviour_logprobs: bool = True

    # --- partial rollouts
    partial_rollouts: bool = False
    partial_max_segments: int = 4
    partial_prefill_groups: int | None = None

    # --- importance correction
    ratio_anchor: str = "proximal"
    behaviour_is_level: str = "token"
    behaviour_is_mode: str = "truncate"
    behaviour_is_cap: float = 2.0

    # --- staleness
    max_staleness: int | None = None
    staleness_policy: str = "drop"
    staleness_decay: float = 0.5
    staleness_level: str = "sequence"

    # --- replay buffer
    replay_ratio: float = 0.0
    replay_capacity: int = 64
    replay_max_age: int | None = 4
    replay_selection: str = "uniform"
    replay_filter_equal_rewards: bool = True
    replay_max_reuse: int | None = None

    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field, its value and the allowed range."""
        _check_int("max_completion_length", self.max_completion_length, 1)
        if self.partial_rollouts:
            if not self.use_behaviour_logprobs:
                raise ValueError(
                    "partial_rollouts=True requires use_behaviour_logprobs=True: a continued sequence "
                    "mixes tokens from several policy versions and its importance ratios need the "
                    "per-token behaviour log-probs recorded at generation time"
                )
        _check_int("partial_max_segments", self.partial_max_segments, 1)
        _check_int("partial_prefill_groups", self.partial_prefill_groups, 0, allow_none=True)
        _check_choice("ratio_anchor", self.ratio_anchor, RATIO_ANCHORS)
        if self.ratio_anchor == "behaviour" and not self.use_behaviour_logprobs:
            raise ValueError("ratio_anchor='behaviour' requires use_behaviour_logprobs=True")
        _check_choice("behaviour_is_level", self.behaviour_is_level, IS_LEVELS)
        _check_choice("behaviour_is_mode", self.behaviour_is_mode, IS_MODES)
        _check_float("behaviour_is_cap", self.behaviour_is_cap, 1.0, math.inf)
        _check_int("max_staleness", self.max_staleness, 0, allow_none=True)
        _check_choice("staleness_policy", self.staleness_policy, STALENESS_POLICIES)
        _check_float("staleness_decay", self.staleness_decay, 0.0, 1.0)
        _check_choice("staleness_level", self.staleness_level, STALENESS_LEVELS)
        if not (isinstance(self.replay_ratio, (int, float)) and 0.0 <= self.replay_ratio < 1.0):
            raise ValueError(
                f"replay_ratio must be in [0, 1): the share of each batch taken from the buffer, which only "
                f"fresh groups fill; got {self.replay_ratio!r}"
            )
        if self.replay_ratio > 0 and not self.use_behaviour_logprobs:
            raise ValueError(
                "replay_ratio > 0 requires use_behaviour_logprobs=True: replayed samples are stale and "
                "need their behaviour log-probs for the importance correction"
            )
        _check_int("replay_capacity", self.replay_capacity, 1)
        _check_int("replay_max_age", self.replay_max_age, 0, allow_none=True)
        _check_choice("replay_selection", self.replay_selection, REPLAY_SELECTIONS)
        _check_int("replay_max_reuse", self.replay_max_reuse, 1, allow_none=True)
        _check_int("seed", self.seed, 0)

    # ------------------------------------------------------------------ helpers
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
