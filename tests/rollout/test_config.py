import pytest

from adaclip_rl.rollout import RolloutConfig


def test_defaults_valid():
    cfg = RolloutConfig()
    assert cfg.max_segments == 1 and not cfg.partial_rollouts


def test_partial_segments():
    cfg = RolloutConfig(max_completion_length=64, partial_rollouts=True, partial_max_segments=3)
    assert cfg.max_segments == 3
    assert RolloutConfig(partial_max_segments=3).max_segments == 1  # only with partial rollouts


def test_partial_round_budget_is_gone():
    """Generation is cut only at weight updates now: a token budget per round no longer exists."""
    with pytest.raises(TypeError, match="partial_round_budget"):
        RolloutConfig(partial_rollouts=True, partial_round_budget=16)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"partial_rollouts": True, "use_behaviour_logprobs": False},
            r"partial_rollouts=True requires use_behaviour_logprobs",
        ),
        ({"replay_ratio": 1.5}, r"replay_ratio must be in \[0, 1\).*got 1.5"),
        ({"replay_ratio": 1.0}, r"replay_ratio must be in \[0, 1\): .*only fresh groups fill; got 1.0"),
        ({"replay_ratio": -0.1}, r"replay_ratio must be in \[0, 1\)"),
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
        partial_max_segments = 2
        unrelated = "x"

    cfg = RolloutConfig.from_object(Args(), replay_ratio=0.25)
    assert cfg.max_segments == 2 and cfg.replay_ratio == 0.25 and cfg.max_completion_length == 16
