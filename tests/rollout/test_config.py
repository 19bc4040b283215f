import pytest

from adaclip_rl.rollout import RolloutConfig


def test_defaults_valid():
    cfg = RolloutConfig()
    assert cfg.round_budget == cfg.max_completion_length and cfg.max_segments == 1


def test_partial_budget_and_segments():
    cfg = RolloutConfig(
        max_completion_length=64, partial_rollouts=True, partial_round_budget=16, partial_max_segments=3
    )
    assert cfg.round_budget == 16 and cfg.max_segments == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"max_completion_length": 32, "partial_rollouts": True, "partial_round_budget": 64},
            r"partial_round_budget \(64\).*\[1, max_completion_length=32\]",
        ),
        ({"max_completion_length": 32, "partial_round_budget": 33}, r"partial_round_budget"),
        ({"partial_rollouts": True}, r"partial_round_budget must be set"),
        (
            {"partial_rollouts": True, "partial_round_budget": 8, "use_behaviour_logprobs": False},
            r"partial_rollouts=True requires use_behaviour_logprobs",
        ),
        ({"replay_ratio": 1.5}, r"replay_ratio must be in \[0.0, 1.0\]; got 1.5"),
        ({"replay_ratio": -0.1}, r"replay_ratio must be in \[0.0, 1.0\]"),
        ({"replay_ratio": 0.5, "use_behaviour_logprobs": False}, r"replay_ratio > 0 requires"),
        ({"behaviour_is_cap": 0.5}, r"behaviour_is_cap must be in \[1.0, inf\)"),
        ({"behaviour_is_mode": "clip"}, r"behaviour_is_mode must be one of"),
        ({"staleness_policy": "ignore"}, r"staleness_policy must be one of"),
        ({"staleness_decay": 2.0}, r"staleness_decay"),
        ({"max_staleness": -1}, r"max_staleness must be an integer >= 0"),
        ({"replay_capacity": 0}, r"replay_capacity"),
        ({"replay_selection": "best"}, r"replay_selection"),
        ({"partial_max_segments": 0}, r"partial_max_segments"),
        ({"ratio_anchor": "ref"}, r"ratio_anchor"),
    ],
)
def test_misconfiguration_fails_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RolloutConfig(**kwargs)


def test_from_object_reads_matching_attributes():
    class Args:
        max_completion_length = 16
        partial_rollouts = True
        partial_round_budget = 4
        unrelated = "x"

    cfg = RolloutConfig.from_object(Args(), replay_ratio=0.25)
    assert cfg.round_budget == 4 and cfg.replay_ratio == 0.25
