"""The staleness study's grid: methods (policy losses and their flags), staleness levels, and
:class:`StudyConfig` (what one invocation trains). No torch / TRL import."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data import DEMO_RECIPE

STUDY_RECIPE = DEMO_RECIPE  # the study's base recipe is the demo's


@dataclass(frozen=True)
class Method:
    """A policy loss and its recipe flags (the papers' defaults; nothing tuned per method)."""

    name: str
    label: str
    flags: tuple[str, ...]


@dataclass(frozen=True)
class Level:
    """A staleness level: optimizer steps per generation batch, optionally with replayed groups or
    with partial rollouts (``OffPolicyGRPOTrainer`` on vLLM), optionally at another learning rate.

    ``partial_prefill_groups`` / ``max_staleness``: with partial rollouts, the extra groups kept in
    flight beyond one batch and the staleness bound every group is returned within (versions)."""

    name: str
    steps_per_generation: int
    replay_ratio: float = 0.0
    replay_max_age: int = 8
    partial: bool = False
    partial_prefill_groups: int = 0
    max_staleness: int | None = None
    learning_rate: float | None = None  # None: the recipe's (or --learning-rate)
    num_iterations: int = 1  # TRL's num_iterations (PPO epochs): each generation batch is trained on this many times

    @property
    def uses_vllm(self) -> bool:
        return self.replay_ratio > 0 or self.partial

    @property
    def kind(self) -> str:
        """``"replay"``, ``"partial"``, ``"spg"`` (steps per generation only, at the study's learning
        rate: the levels on the staleness axis) or ``"regime"`` (steps per generation at its own
        learning rate)."""
        if self.replay_ratio > 0:
            return "replay"
        if self.partial:
            return "partial"
        return "spg" if self.learning_rate is None and self.num_iterations == 1 else "regime"

    def flags(self, max_completion_length: int) -> list[str]:
        out = ["--steps_per_generation", str(self.steps_per_generation)]
        if self.uses_vllm:
            if self.replay_ratio > 0:
                out += ["--replay_ratio", str(self.replay_ratio), "--replay_max_age", str(self.replay_max_age)]
            if self.partial:
                out += ["--partial_rollouts", "true", "--partial_prefill_groups", str(self.partial_prefill_groups)]
                if self.max_staleness is not None:
                    out += ["--max_staleness", str(self.max_staleness)]
            out += ["--use_vllm", "true", "--vllm_mode", "colocate", "--vllm_importance_sampling_correction", "true",
                    "--vllm_max_model_length", str(max_completion_length + 32)]
        if self.learning_rate is not None:
            out += ["--learning_rate", str(self.learning_rate)]
        if self.num_iterations != 1:
            out += ["--num_iterations", str(self.num_iterations)]
        return out


METHODS: dict[str, Method] = {
    "grpo": Method("grpo", "GRPO clip [0.8, 1.2]", ("--policy_loss", "grpo", "--epsilon", "0.2")),
    "dapo": Method("dapo", "DAPO clip-higher [0.8, 1.28]",
                   ("--policy_loss", "grpo", "--epsilon", "0.2", "--epsilon_high", "0.28")),
    "bapo": Method("bapo", "BAPO (paper defaults)", ("--policy_loss", "bapo")),
    "archer": Method("archer", "Archer (paper defaults)", ("--policy_loss", "archer")),
    # ablation for the replay level: GRPO's clip on the ratio to the behaviour policy (what BAPO and
    # Archer clip there by default) instead of the decoupled proximal ratio + truncated IS weight
    "grpo_bh": Method("grpo_bh", "GRPO clip [0.8, 1.2], ratio to behaviour (ablation)",
                      ("--policy_loss", "grpo", "--epsilon", "0.2", "--ratio_anchor", "behaviour")),
    # the same ablation for DAPO: with it, all four methods clip the ratio to the behaviour policy at replay
    "dapo_bh": Method("dapo_bh", "DAPO clip-higher [0.8, 1.28], ratio to behaviour (ablation)",
                      ("--policy_loss", "grpo", "--epsilon", "0.2", "--epsilon_high", "0.28",
                       "--ratio_anchor", "behaviour")),
    # "adaptive" vs "wider": BAPO's search from GRPO's bounds (c_low 0.8 -> 0.9, c_high 1.2 -> 3.0,
    # the paper's steps, target and dual clip otherwise)
    "bapo_narrow": Method("bapo_narrow", "BAPO from [0.8, 1.2] (ablation)",
                          ("--policy_loss", "bapo", "--bapo_low_start", "0.8")),
}
DEFAULT_METHODS = ("grpo", "dapo", "bapo", "archer")
LEVELS: dict[str, Level] = {
    "s1": Level("s1", 1),
    "s2": Level("s2", 2),
    "s4": Level("s4", 4),
    "s8": Level("s8", 8),
    "s16": Level("s16", 16),
    "replay": Level("replay", 1, replay_ratio=0.5),
}
DEFAULT_LEVELS = tuple(LEVELS)
# levels of issue 28, not in the default set:
# partial rollouts (BAPO's second off-policy scenario): a generation batch ends once its 8 groups are
# done; the 16 groups pre-filled beyond it keep generating into the next batches under newer weights,
# each returned within 2 versions of its admission
LEVELS["partial"] = Level("partial", 1, partial=True, partial_prefill_groups=16, max_staleness=2)
# candidate regimes where clipping acts (clip fraction >= 5%): more steps per generation batch, or a
# larger learning rate at s16 (docs/staleness_study.md, "a regime where clipping acts")
LEVELS["s32"] = Level("s32", 32)
LEVELS["s64"] = Level("s64", 64)
LEVELS["s128"] = Level("s128", 128)  # one generation batch for the study's 128 steps
LEVELS["s16-lr3e-4"] = Level("s16-lr3e-4", 16, learning_rate=3e-4)
LEVELS["s64-lr2e-4"] = Level("s64-lr2e-4", 64, learning_rate=2e-4)
# PPO epochs: every generation batch of s16 trained on 4 times (64 optimizer steps per batch, a quarter of the samples)
LEVELS["s16-mu4"] = Level("s16-mu4", 16, num_iterations=4)
LEVELS["s8-mu8"] = Level("s8-mu8", 8, num_iterations=8)
LEVELS["s4-mu16"] = Level("s4-mu16", 4, num_iterations=16)
LEVELS["s2-mu32"] = Level("s2-mu32", 2, num_iterations=32)
# issue 28b's search: one generation batch of s16 (1024 samples) trained on 8 times, i.e. the whole
# 128-step budget on one batch (staleness up to 16 versions plus 8 passes)
LEVELS["s16-mu8"] = Level("s16-mu8", 16, num_iterations=8)
LEVELS["s8-mu16"] = Level("s8-mu16", 8, num_iterations=16)  # one batch of s8 (512 samples) trained on 16 times
LEVELS["s32-mu4"] = Level("s32-mu4", 32, num_iterations=4)  # one batch of s32 (2048 samples) trained on 4 times


@dataclass
class StudyConfig:
    """What one invocation trains. ``quick`` is a smoke run of every stage (its numbers mean nothing)."""

    out: str = "runs/study"
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    levels: list[str] = field(default_factory=lambda: list(DEFAULT_LEVELS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    max_steps: int = 128
    warm_steps: int = 400
    digits: int = 3
    n_test: int = 200
    k: int = 4
    learning_rate: float | None = None
    threads: int = 1
    recipe: str = str(STUDY_RECIPE)
    plot: bool = True
    extra_flags: list[str] = field(default_factory=list)
    cells: list[tuple[str, str]] | None = None  # (method, level) pairs to train; None: methods x levels
    premise: bool = True  # log BAPO's premise measures per step (adaclip_rl.losses.premise; cheap)
    baseline: str | None = None  # an earlier report JSON: its runs stand in for runs missing here (not retrained)

    def grid(self) -> list[tuple[str, str]]:
        """The (method, level) cells of this study, levels in the outer order."""
        if self.cells is not None:
            return list(self.cells)
        return [(m, lv) for lv in self.levels for m in self.methods]

    def __post_init__(self) -> None:
        if self.cells is not None:
            self.cells = [tuple(c) for c in self.cells]  # type: ignore[misc]
            self.methods = list(dict.fromkeys(m for m, _ in self.cells))
            self.levels = list(dict.fromkeys(lv for _, lv in self.cells))
        bad = [m for m in self.methods if m not in METHODS] + [lv for lv in self.levels if lv not in LEVELS]
        if bad:
            raise ValueError(f"unknown methods/levels {bad}; methods: {list(METHODS)}, levels: {list(LEVELS)}")
        for name in ("max_steps", "n_test", "k", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.warm_steps < 0:
            raise ValueError(f"warm_steps must be >= 0; got {self.warm_steps}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        clash = [lv for lv in self.levels if LEVELS[lv].learning_rate is not None]
        if self.learning_rate is not None and clash:
            raise ValueError(f"learning_rate is set by levels {clash}; leave --learning-rate unset for them")


def run_name(method: str, level: str, seed: int) -> str:
    return f"{method}-{level}-seed{seed}"
