import pytest

from adaclip_rl.rollout import PartialRolloutManager, RolloutConfig, SamplingSettings

from .fakes import FakeEngine


def manager(engine, budget=4, max_len=12, segments=10, **kw):
    return PartialRolloutManager(
        engine, max_completion_length=max_len, round_budget=budget, max_segments=segments, **kw
    )


def test_continued_sequence_concatenates_segments_with_versions():
    # prompt [1] stops when the full sequence reaches 10 tokens: completion of 9 tokens, eos last
    eng = FakeEngine({1: 10})
    m = manager(eng, budget=4)
    m.submit([[1]], n=1)
    assert m.collect(1, max_rounds=1) == []  # 4 tokens, unfinished
    eng.version = 1
    assert m.collect(1, max_rounds=1) == []  # 8 tokens
    eng.version = 2
    (g,) = m.collect(1)
    s = g.samples[0]
    assert s.finished and not s.truncated and s.finish_reason == "stop"
    assert s.completion_ids == [7] * 8 + [0]
    assert s.versions == [0] * 4 + [1] * 4 + [2]
    assert s.logprobs == [-0.1] * 4 + [-0.2] * 4 + [-0.3]
    assert s.segments == 3
    # each round resubmitted prompt + partial completion with the remaining budget
    assert [len(c[0].prompt_token_ids) for c in eng.calls] == [1, 5, 9]
    met = m.metrics()
    assert met["partial/version_span_max"] == 2 and met["partial/continued_frac"] == 1.0


def test_continued_before_new_prompts_admitted():
    eng = FakeEngine({1: 100, 2: 3, 3: 3})
    m = manager(eng, budget=4, max_len=50, max_active_groups=1)
    m.submit([[1], [2]], n=1)
    m.run_round()  # only group [1] admitted (one slot)
    assert [r.prompt_token_ids[0] for r in eng.calls[-1]] == [1]
    m.submit([[3]], n=1)
    m.run_round()  # [1] continues; [2], [3] wait for a slot
    assert [r.prompt_token_ids[0] for r in eng.calls[-1]] == [1] and m.num_waiting == 2
    m2 = manager(FakeEngine({1: 100, 2: 3}), budget=4, max_len=50)
    m2.submit([[1]], n=1)
    m2.run_round()
    m2.submit([[2]], n=1)
    m2.run_round()
    first = [r.prompt_token_ids[0] for r in m2.engine.calls[-1]]
    assert first == [1, 2]  # unfinished continued first, then the new prompt


def test_segment_cap_finishes_as_truncated_and_length_cap():
    eng = FakeEngine({})  # never stops
    m = manager(eng, budget=3, max_len=100, segments=2)
    m.submit([[1]], n=2)
    (g,) = m.collect(1)
    for s in g.samples:
        assert s.finished and s.truncated and s.finish_reason == "segments" and s.num_tokens == 6
    m = manager(FakeEngine({}), budget=4, max_len=6, segments=10)
    m.submit([[1]], n=1, max_new_tokens=[[5]])
    (g,) = m.collect(1)
    assert g.samples[0].num_tokens == 5 and g.samples[0].finish_reason == "length"


def test_group_returned_only_when_all_members_finish_and_extras_stay_ready():
    eng = FakeEngine({1: 3, 2: 3})
    m = manager(eng, budget=4, max_len=20)
    # group 0: two samples with different caps -> one finishes in round 1, the other in round 2
    m.submit([[5]], n=2, max_new_tokens=[[2, 6]], metas=[{"row": "a"}])
    m.submit([[1], [2]], n=1, metas=[{"row": "b"}, {"row": "c"}])
    out = m.collect(1)
    assert [g.meta["row"] for g in out] == ["b"] and m.num_ready == 1  # "c" kept for later
    out = m.collect(2)
    assert [g.meta["row"] for g in out] == ["c", "a"]
    assert [s.num_tokens for s in out[1].samples] == [2, 6]


def test_without_partial_rollouts_everything_finishes_in_one_round():
    cfg = RolloutConfig(max_completion_length=16)
    eng = FakeEngine({})
    m = PartialRolloutManager.from_config(eng, cfg, SamplingSettings(temperature=0.7))
    m.submit([[1], [2]], n=3)
    out = m.collect(2)
    assert len(out) == 2 and len(eng.calls) == 1
    assert all(s.num_tokens == 16 and s.segments == 1 for g in out for s in g.samples)


def test_seeds_depend_on_sample_not_batch_and_state_round_trip():
    eng = FakeEngine({})
    m = manager(eng, budget=2, max_len=8)
    m.submit([[1], [2]], n=2)
    m.run_round()
    seeds_round1 = [r.seed for r in eng.calls[-1]]
    assert len(set(seeds_round1)) == 4
    state = m.state_dict()
    m.run_round()
    seeds_round2 = [r.seed for r in eng.calls[-1]]
    m2 = manager(FakeEngine({}), budget=2, max_len=8)
    m2.load_state_dict(state)
    m2.run_round()
    assert [r.seed for r in m2.engine.calls[-1]] == seeds_round2
    assert [r.prompt_token_ids for r in m2.engine.calls[-1]] == [r.prompt_token_ids for r in eng.calls[-1]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="round_budget"):
        manager(FakeEngine({}), budget=30, max_len=10)
    m = manager(FakeEngine({}))
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.submit([[1]], n=2, max_new_tokens=[[1]])
