"""Partial rollouts on a deterministic fake engine: generation is interrupted only when a batch has
its groups (i.e. at the weight update that follows), never truncated by the segment bound, never
staler than max_staleness when returned; continued sequences carry per-token versions."""

import random

import pytest
import torch

from adaclip_rl.rollout import PartialRolloutManager, RolloutConfig, SamplingSettings, pad_versions
from adaclip_rl.rollout.importance import staleness_weights, token_staleness
from adaclip_rl.rollout.partial import request_seed

from .fakes import FakeEngine


def manager(engine, max_len=12, segments=10, **kw):
    return PartialRolloutManager(engine, max_completion_length=max_len, max_segments=segments, **kw)


def test_interrupted_sequence_concatenates_segments_with_versions():
    # prompt [1] stops at full length 3 (2 tokens); [2] never stops (cap 12); [3] stops at 4 (3 tokens)
    eng = FakeEngine({1: 3, 3: 4})
    m = manager(eng)
    m.submit([[1], [2]], n=1)
    (g,) = m.collect(1)  # version 0: [1] done after 2 steps, [2] interrupted there
    assert g.samples[0].completion_ids == [7, 0]
    eng.version = 1
    m.submit([[3]], n=1)
    (g,) = m.collect(1)  # version 1: [2] continued first, interrupted when [3] ends after 3 steps
    assert g.samples[0].prompt_ids == [3]
    eng.version = 2
    (g,) = m.collect(1)  # version 2: [2] runs to its cap
    s = g.samples[0]
    assert s.finished and s.truncated and s.finish_reason == "length" and s.num_tokens == 12
    assert s.versions == [0] * 2 + [1] * 3 + [2] * 7
    assert s.logprobs == [-0.1] * 2 + [-0.2] * 3 + [-0.3] * 7
    assert s.segments == 3
    # one engine call per batch; a continued sequence is resubmitted as prompt + partial completion
    assert [[len(r.prompt_token_ids) for r in call] for call in eng.calls] == [[1, 1], [3, 1], [6]]
    met = m.metrics()
    assert met["partial/version_span_max"] == 2 and met["partial/continued_frac"] == 1.0


def test_long_completion_is_never_truncated_by_the_segment_bound():
    """8192-token completion, default 4 segments: it used to stop at budget x segments = 4096."""
    cfg = RolloutConfig(max_completion_length=8192, partial_rollouts=True)  # partial_max_segments = 4
    eng = FakeEngine({2: 3})  # prompt [2]: a 2-token answer; prompt [1]: never stops
    m = PartialRolloutManager.from_config(eng, cfg)
    m.submit([[1]], n=1)
    for version in range(3):  # three batches in which the long sequence is not needed: interrupted
        eng.version = version
        m.submit([[2]], n=1)
        (short,) = m.collect(1)
        assert short.samples[0].prompt_ids == [2]
    eng.version = 3
    (g,) = m.collect(1)  # its 4th segment is its last: not interruptible, runs to the cap
    s = g.samples[0]
    assert s.num_tokens == 8192 and s.finish_reason == "length" and s.segments == 4
    assert sorted(set(s.versions)) == [0, 1, 2, 3]
    # alone, within one batch under one version, it is generated in one piece
    eng2 = FakeEngine({})
    m2 = PartialRolloutManager.from_config(eng2, cfg)
    m2.submit([[1]], n=1)
    (g2,) = m2.collect(1)
    assert g2.samples[0].num_tokens == 8192 and g2.samples[0].segments == 1 and len(eng2.calls) == 1


def test_no_barrier_and_no_prefix_reprocessing_while_weights_stay():
    """A batch that needs every group runs as one engine call: each prompt is processed once and the
    engine takes as many steps as the longest completion (a round budget B cost L/B calls and
    re-processed the growing prefix each time: O(L^2 / B))."""
    eng = FakeEngine({})
    m = manager(eng, max_len=512, segments=4)
    caps = [[8, 512], [64, 32]]
    m.submit([[1, 1, 1], [2, 2]], n=2, max_new_tokens=caps)
    out = m.collect(2)
    assert len(out) == 2 and len(eng.calls) == 1
    assert eng.prefill_tokens == 3 * 2 + 2 * 2
    assert eng.steps == 512
    assert sorted(s.num_tokens for g in out for s in g.samples) == [8, 32, 64, 512]


def test_continued_before_new_prompts_admitted():
    eng = FakeEngine({1: 100, 2: 3, 3: 3, 4: 3})
    m = manager(eng, max_len=50, max_active_groups=2)
    m.submit([[1], [4], [2]], n=1)
    (g,) = m.collect(1)  # two slots: [1] and [4]; [4] ends, [1] is interrupted, [2] waits
    assert g.samples[0].prompt_ids == [4] and [r.prompt_token_ids[0] for r in eng.calls[-1]] == [1, 4]
    m.submit([[3]], n=1)
    eng.version = 1
    m.collect(1)
    assert [r.prompt_token_ids[0] for r in eng.calls[-1]] == [1, 2]  # continued first, then the oldest waiting
    assert m.num_waiting == 1


def test_staleness_is_bounded_at_admission_so_nothing_is_dropped_or_length_biased():
    """Long-tailed lengths, max_staleness=1: every returned group is within the bound at the version
    it is trained on, so a drop-at-consumption rule drops nothing and the share of long groups
    trained equals the share generated (the old rule dropped 86-100% of groups over 128 tokens)."""
    rng = random.Random(0)
    eng = FakeEngine({})
    m = manager(eng, max_len=512, segments=8, max_staleness=1)
    lengths: dict[int, int] = {}
    returned = []

    def submit(k: int) -> None:
        caps = [[min(512, int(8 * rng.paretovariate(0.7)))] * 2 for _ in range(k)]
        for gid, cap in zip(m.submit([[5]] * k, n=2, max_new_tokens=caps), caps, strict=True):
            lengths[gid] = cap[0]

    submit(4)  # pre-filled groups, as the trainer keeps one extra batch in flight
    for version in range(40):
        eng.version = version
        submit(4 + 4 - m.num_in_flight)  # the trainer's top-up of the pool
        for g in m.collect(4):
            versions = pad_versions([s.versions for s in g.samples])
            mask = versions >= 0
            stal = token_staleness(versions, version, mask)
            assert stal.max().item() <= 1
            w = staleness_weights(stal, mask, max_staleness=1, policy="drop", level="sequence")
            assert torch.equal(w, mask.float())  # nothing dropped
            returned.append(g.gid)
    long_generated = sum(cap >= 128 for cap in lengths.values()) / len(lengths)
    long_trained = sum(lengths[gid] >= 128 for gid in returned) / len(returned)
    assert long_generated > 0.1
    assert abs(long_trained - long_generated) < 0.05
    assert len(returned) >= 0.9 * len(lengths)


def test_group_returned_only_when_all_members_finish_and_extras_stay_ready():
    eng = FakeEngine({1: 3, 2: 3})
    m = manager(eng, max_len=20, segments=1)  # nothing interruptible: extra finished groups stay ready
    m.submit([[5]], n=2, max_new_tokens=[[2, 6]], metas=[{"row": "a"}])
    m.submit([[1], [2]], n=1, metas=[{"row": "b"}, {"row": "c"}])
    out = m.collect(1)  # all three finish in the call; the earliest admitted is returned first
    assert [g.meta["row"] for g in out] == ["a"] and m.num_ready == 2
    assert [s.num_tokens for s in out[0].samples] == [2, 6] and all(s.finished for s in out[0].samples)
    out = m.collect(2)
    assert [g.meta["row"] for g in out] == ["b", "c"] and len(m.engine.calls) == 1


def test_without_partial_rollouts_everything_finishes_in_one_call():
    cfg = RolloutConfig(max_completion_length=16)
    eng = FakeEngine({})
    m = PartialRolloutManager.from_config(eng, cfg, SamplingSettings(temperature=0.7))
    m.submit([[1], [2]], n=3)
    out = m.collect(1)
    assert len(out) == 1 and len(eng.calls) == 1 and m.num_ready == 1
    assert all(s.num_tokens == 16 and s.segments == 1 for g in out for s in g.samples)


def test_seeds_depend_on_sample_and_rank_not_batch_and_state_round_trip():
    eng = FakeEngine({3: 3})
    m = manager(eng, max_len=8)
    m.submit([[1], [2], [3]], n=2)
    m.collect(1)  # [3] ends, [1] and [2] are interrupted
    assert len({r.seed for r in eng.calls[-1]}) == 6
    state = m.state_dict()
    eng.version = 1
    m.collect(2)
    m2 = manager(FakeEngine({3: 3}), max_len=8)
    m2.engine.version = 1
    m2.load_state_dict(state)
    m2.collect(2)
    assert [(r.seed, r.prompt_token_ids) for r in m2.engine.calls[-1]] == [
        (r.seed, r.prompt_token_ids) for r in eng.calls[-1]]
    # two ranks with the same base seed draw disjoint seed streams
    rank0 = {request_seed(7, 0, uid, seg) for uid in range(500) for seg in range(4)}
    rank1 = {request_seed(7, 1, uid, seg) for uid in range(500) for seg in range(4)}
    assert len(rank0) == len(rank1) == 2000 and not rank0 & rank1


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_segments"):
        manager(FakeEngine({}), segments=0)
    with pytest.raises(ValueError, match="max_staleness"):
        manager(FakeEngine({}), max_staleness=-1)
    m = manager(FakeEngine({}))
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.submit([[1]], n=2, max_new_tokens=[[1]])
