import pytest
import torch

from adaclip_rl.rollout import BehaviourSample, ReplayBuffer, ReplayGroup


def make_group(rewards, version=0, prompt=1, tag=None):
    samples = [
        BehaviourSample(
            prompt_ids=[prompt], completion_ids=[5, 6], logprobs=[-0.1, -0.2], versions=[version, version + 1]
        )
        for _ in rewards
    ]
    return ReplayGroup(
        samples=samples, rewards=list(rewards), advantages=[0.0] * len(rewards), meta={"tag": tag}
    )


def test_capacity_evicts_oldest_and_filters_equal_rewards():
    buf = ReplayBuffer(capacity=3)
    assert not buf.add(make_group([1.0, 1.0, 1.0], tag="flat"))
    for i in range(5):
        assert buf.add(make_group([0.0, 1.0], tag=i))
    assert [g.meta["tag"] for g in buf.groups] == [2, 3, 4]
    m = buf.metrics(current_version=0)
    assert m["replay/size"] == 3 and m["replay/evicted"] == 2 and m["replay/filtered"] == 1
    keep_flat = ReplayBuffer(capacity=2, filter_equal_rewards=False)
    assert keep_flat.add(make_group([1.0, 1.0]))


def test_age_limit_expires_before_sampling():
    buf = ReplayBuffer(capacity=10, max_age=2)
    buf.add(make_group([0, 1], version=0, tag="v0"))
    buf.add(make_group([0, 1], version=3, tag="v3"))
    # age = current - oldest token version: v0 -> 4 (expired), v3 -> 1
    out = buf.sample(5, current_version=4)
    assert [g.meta["tag"] for g in out] == ["v3"]
    m = buf.metrics(current_version=4)
    assert m["replay/expired"] == 1 and m["replay/age_mean"] == 1 and m["replay/sampled"] == 1


def test_variance_selection_prefers_high_variance():
    buf = ReplayBuffer(capacity=100, selection="variance", seed=0, filter_equal_rewards=False)
    buf.add(make_group([1.0, 1.0], tag="zero"))
    buf.add(make_group([0.0, 0.1], tag="low"))
    buf.add(make_group([0.0, 1.0], tag="high"))
    counts = {"zero": 0, "low": 0, "high": 0}
    for _ in range(300):
        (g,) = buf.sample(1, current_version=0)
        counts[g.meta["tag"]] += 1
    assert counts["zero"] == 0  # a zero-variance group only comes after every non-zero one
    assert counts["high"] > 5 * counts["low"] > 0
    # k = 3 draws each group exactly once, zero-variance last
    assert [g.meta["tag"] for g in buf.sample(3, 0)][-1] == "zero"


def test_uniform_selection_is_seeded_and_distinct():
    def draws(seed):
        buf = ReplayBuffer(capacity=10, seed=seed)
        for i in range(6):
            buf.add(make_group([0, i + 1], tag=i))
        return [[g.meta["tag"] for g in buf.sample(3, 0)] for _ in range(4)]

    a, b = draws(1), draws(1)
    assert a == b and all(len(set(x)) == 3 for x in a)
    assert draws(2) != a


def test_max_reuse_retires_groups():
    buf = ReplayBuffer(capacity=10, max_reuse=2)
    buf.add(make_group([0, 1]))
    assert len(buf.sample(1, 0)) == 1 and len(buf.sample(1, 0)) == 1
    assert len(buf) == 0 and buf.sample(1, 0) == []


def test_checkpoint_round_trip_is_exact(tmp_path):
    buf = ReplayBuffer(capacity=8, max_age=5, selection="variance", seed=3)
    for i in range(10):
        buf.add(make_group([0.0, float(i % 3 + 1), 0.5], version=i, tag=i))
    buf.sample(2, current_version=9)  # advance the RNG
    path = tmp_path / "replay.pt"
    torch.save(buf.state_dict(), path)
    restored = ReplayBuffer(capacity=8, max_age=5, selection="variance", seed=0)  # RNG comes from the state
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.state_dict() == buf.state_dict()
    for v in range(9, 13):
        a = [(g.gid, g.meta["tag"], g.uses) for g in buf.sample(3, v)]
        b = [(g.gid, g.meta["tag"], g.uses) for g in restored.sample(3, v)]
        assert a == b
    assert restored.metrics(12) == buf.metrics(12)
    g = restored.groups[0]
    assert g.samples[0].versions and isinstance(g.samples[0], BehaviourSample)


def test_resume_keeps_the_constructors_settings_and_warns(tmp_path, caplog):
    """A buffer resumed under a changed config follows the new config (and says so), not the saved one."""
    buf = ReplayBuffer(capacity=8, max_age=5, seed=3)
    for i in range(6):
        buf.add(make_group([0.0, 1.0], version=i, tag=i))
    smaller = ReplayBuffer(capacity=4, max_age=1, seed=3)
    with caplog.at_level("WARNING", logger="adaclip_rl.rollout.replay"):
        smaller.load_state_dict(buf.state_dict())
    assert "capacity 8 -> 4" in caplog.text and "max_age 5 -> 1" in caplog.text
    assert smaller.capacity == 4 and smaller.max_age == 1
    assert [g.meta["tag"] for g in smaller.groups] == [2, 3, 4, 5]  # oldest evicted down to the new capacity
    assert [g.meta["tag"] for g in smaller.sample(4, current_version=6)] and all(
        g.age(6) <= 1 for g in smaller.groups)  # the new max_age applies at the next draw


def test_invalid_arguments():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(capacity=0)
    with pytest.raises(ValueError, match="selection"):
        ReplayBuffer(capacity=1, selection="best")
    with pytest.raises(ValueError, match="rewards"):
        ReplayGroup(samples=[BehaviourSample(prompt_ids=[1])], rewards=[1.0, 2.0])


def test_negative_age_is_an_error_not_fresh_data():
    """A group newer than the current version (a resume that lost the version counter) used to get age 0
    (``max(0, ...)``): it never expired and bypassed the bound."""
    g = make_group([0, 1], version=5)
    assert g.age(7) == 2
    with pytest.raises(ValueError, match="version counter went back"):
        g.age(4)
    buf = ReplayBuffer(capacity=4, max_age=1)
    buf.add(g)
    with pytest.raises(ValueError, match="version counter went back"):
        buf.sample(1, current_version=3)


@pytest.mark.parametrize(("policy", "max_staleness", "max_age", "expected"), [
    ("drop", 1, 4, 1), ("drop", 6, 4, 4), ("drop", None, 4, 4), ("downweight", 1, 4, 4), ("drop", 2, None, 2),
    ("downweight", None, None, None)])
def test_replay_expires_at_the_bound_the_loss_applies(policy, max_staleness, max_age, expected):
    """Under 'drop' a group older than max_staleness would be replayed with weight 0 (still counted as a
    use and in the loss's denominator): it expires there instead."""
    from adaclip_rl.rollout import RolloutConfig

    cfg = RolloutConfig(replay_ratio=0.5, staleness_policy=policy, max_staleness=max_staleness, replay_max_age=max_age)
    assert cfg.replay_expiry_age == expected
