"""Property tests of the off-policy batch assembly over a grid of settings, on the fake engine.

The trainer's own :class:`~adaclip_rl.rollout.schedule.BatchScheduler` (partial rollouts, pre-fill,
replay share, checkpoint state) runs a simulated training loop - one weight push per generation
batch, fresh groups stored for replay, a resume from a ``torch.save`` round trip at a random step -
over ``max_staleness`` 0-4 x pre-fill 0-2 batches x ``replay_ratio`` {0, .25, .5, .75} x groups per
rank 1-8 x 1-2 ranks x short / long-tailed lengths. Invariants, whatever the setting:

* no trained token is older than ``max_staleness`` (nothing a ``drop`` policy would remove), and
  staleness is never negative (``token_staleness`` raises on it);
* versions never go back, across a resume included;
* every batch trains at least one fresh group; every submitted group is trained or still in
  flight, never both, never twice; every batch row is submitted, deferred or counted as skipped;
* the replayed groups requested over a run are within one group of the (capped) share, and what the
  buffer could not serve is counted;
* ranks never generate the same prompt with the same seed.

``ADACLIP_FULL_GRID=1`` runs the whole product (1920 settings) instead of the sampled 160.
"""

from __future__ import annotations

import io
import itertools
import os
import random

import pytest
import torch

from adaclip_rl.rollout import PartialRolloutManager, ReplayBuffer, RolloutConfig, pad_versions
from adaclip_rl.rollout.importance import staleness_weights, token_staleness
from adaclip_rl.rollout.schedule import BatchScheduler, ReplayShare, effective_prefill, prefill_indices

from .fakes import FakeEngine

G = 2  # completions per prompt
STEPS = 10
DATASET = 48  # prompts; ranks and the pre-fill draw overlapping rows on purpose
MAX_LEN = 64

GRID = list(itertools.product(range(5), range(3), (0.0, 0.25, 0.5, 0.75), range(1, 9), (1, 2), ("short", "long")))
SAMPLED = GRID if os.environ.get("ADACLIP_FULL_GRID") else random.Random(2024).sample(GRID, 160)


def _config(max_staleness: int, prefill_batches: int, replay_ratio: float, groups: int) -> RolloutConfig:
    prefill = prefill_batches * groups
    kw = dict(max_completion_length=MAX_LEN, partial_rollouts=True, partial_max_segments=4,
              max_staleness=max_staleness, staleness_policy="drop", replay_ratio=replay_ratio, replay_max_age=4,
              replay_filter_equal_rewards=False, seed=3)
    if max_staleness == 0 and prefill:
        with pytest.raises(ValueError, match="partial_prefill_groups"):
            RolloutConfig(**kw, partial_prefill_groups=prefill)
        prefill = 0
    return RolloutConfig(**kw, partial_prefill_groups=prefill)


class _Rank:
    """One rank's engine, manager, replay buffer and scheduler, rebuilt from a state dict on resume."""

    def __init__(self, cfg: RolloutConfig, rank: int, world: int, groups: int, lengths: str) -> None:
        self.cfg, self.rank, self.world, self.groups, self.lengths = cfg, rank, world, groups, lengths
        self.cursor = 0
        self.rows_submitted = 0
        self.submitted_gids: list[int] = []
        self.build()

    def build(self) -> None:
        self.engine = FakeEngine({})
        self.engine.version = -1  # a new engine, as the trainer wraps TRL's
        self.manager = PartialRolloutManager.from_config(self.engine, self.cfg, rank=self.rank)
        replay = None
        if self.cfg.replay_ratio > 0:
            replay = ReplayBuffer(8, self.cfg.replay_expiry_age, filter_equal_rewards=False, seed=self.cfg.seed)
        self.sched = BatchScheduler(self.manager, self.cfg, groups=self.groups, submit=self.submit,
                                    prefill_rows=self.prefill_rows, replay=replay)

    def cap(self, row: int, j: int) -> int:
        rng = random.Random(row * 131 + j)
        if self.lengths == "short":
            return rng.randint(1, 8)
        return min(MAX_LEN, int(2 * rng.paretovariate(0.7)))

    def submit(self, rows: list[dict]) -> None:
        prompts = [[r["id"] + 1, 5] for r in rows]
        caps = [[self.cap(r["id"], j) for j in range(G)] for r in rows]
        self.submitted_gids += self.manager.submit(prompts, n=G, metas=[{"row": r} for r in rows],
                                                   max_new_tokens=caps)
        self.rows_submitted += len(rows)

    def prefill_rows(self, k: int, fallback: list[dict]) -> list[dict]:
        idx = prefill_indices(DATASET, 0, self.world, self.rank, self.cursor, k)
        self.cursor += k
        return [{"id": i} for i in idx]

    def resume(self) -> None:
        buf = io.BytesIO()
        torch.save({**self.sched.state_dict(), "cursor": self.cursor}, buf)
        buf.seek(0)
        state = torch.load(buf, weights_only=True)
        self.build()
        self.sched.load_state_dict(state)
        self.cursor = state["cursor"]


def _check_staleness(samples, version: int, bound: int) -> None:
    versions = pad_versions([s.versions for s in samples])
    mask = versions >= 0
    if not mask.any():
        return
    stal = token_staleness(versions, version, mask)  # raises on negative staleness
    assert int(stal.max()) <= bound
    kept = staleness_weights(stal, mask, max_staleness=bound, policy="drop", level="sequence")
    assert torch.equal(kept, mask.float())  # nothing the drop policy would remove


def _run(max_staleness, prefill_batches, replay_ratio, groups, world, lengths):
    cfg = _config(max_staleness, prefill_batches, replay_ratio, groups)
    rng = random.Random(hash((max_staleness, prefill_batches, replay_ratio, groups, world, lengths)) & 0xFFFF)
    resume_at = rng.randrange(1, STEPS)
    ranks = [_Rank(cfg, r, world, groups, lengths) for r in range(world)]
    seeds: list[set] = [set() for _ in ranks]
    trained: list[list[int]] = [[] for _ in ranks]
    rows_given = [0] * world
    replayed_total = [0] * world
    last_version = [-1] * world
    for step in range(STEPS):
        if step == resume_at:
            for r in ranks:
                r.resume()
        for i, r in enumerate(ranks):
            r.engine.version += 1  # the weight push before each generation batch
            v = r.engine.version
            assert v > last_version[i]  # never back, across the resume too
            last_version[i] = v
            first = ((step * world + i) * groups) % DATASET
            batch_rows = [{"id": (first + j) % DATASET} for j in range(groups)]
            rows_given[i] += groups
            n_calls = len(r.engine.calls)
            fresh, replayed = r.sched.next_batch(batch_rows)
            seeds[i] |= {(req.prompt_token_ids[0], req.seed) for call in r.engine.calls[n_calls:] for req in call}
            assert len(fresh) >= 1 and len(fresh) + len(replayed) == groups
            _check_staleness([s for g in fresh for s in g.samples], v, max_staleness)
            for g in replayed:
                assert 0 <= g.age(v) <= max_staleness
            _check_staleness([s for g in replayed for s in g.samples], v, max_staleness)
            trained[i] += [g.gid for g in fresh]
            replayed_total[i] += len(replayed)
            r.sched.store(fresh, [[rng.random() for _ in range(G)] for _ in fresh], [[0.0] * G for _ in fresh])
    share = ReplayShare(cfg.replay_ratio, groups)
    for i, r in enumerate(ranks):
        m = r.manager
        in_flight = [g.gid for q in (m._waiting, m._active, m._ready) for g in q]
        assert len(trained[i]) == len(set(trained[i]))  # no group trained twice as fresh
        assert sorted(trained[i] + in_flight) == sorted(r.submitted_gids)  # nothing vanishes
        assert r.rows_submitted + len(r.sched.deferred_rows) + r.sched.prompts_skipped == \
            rows_given[i] + r.sched.prefill
        if cfg.replay_ratio:
            assert abs(r.sched.replay_requested - STEPS * share.target) <= 1
            assert r.sched.replay_requested - r.sched.replay_shortfall == replayed_total[i]
        else:
            assert replayed_total[i] == 0
    if world == 2:
        assert not seeds[0] & seeds[1]
    return ranks


def test_offpolicy_contracts_hold_over_the_grid():
    for setting in SAMPLED:
        try:
            _run(*setting)
        except (AssertionError, RuntimeError, ValueError) as err:
            raise AssertionError(f"setting (max_staleness, prefill batches, replay_ratio, groups, ranks, lengths)="
                                 f"{setting}: {err}") from err


def test_prefill_is_sized_from_fresh_groups_and_the_bound():
    """The pre-fill defaults to the fresh groups of a batch and is capped at max_staleness of them."""
    cfg = RolloutConfig(partial_rollouts=True, max_staleness=1, replay_ratio=0.5, partial_prefill_groups=16)
    assert effective_prefill(cfg, ReplayShare(0.5, 8).min_fresh) == 4
    cfg = RolloutConfig(partial_rollouts=True, max_staleness=2, replay_ratio=0.5)
    assert effective_prefill(cfg, ReplayShare(0.5, 8).min_fresh) == 4
    assert effective_prefill(RolloutConfig(partial_rollouts=True, max_staleness=0), 8) == 0
    assert effective_prefill(RolloutConfig(partial_rollouts=True), 8) == 8
    assert effective_prefill(RolloutConfig(), 8) == 0


@pytest.mark.parametrize(("ratio", "groups", "expected"), [
    (0.25, 1, 0.0), (0.25, 2, 0.25), (0.25, 3, 0.25), (0.6, 1, 0.0), (0.75, 2, 0.5), (0.5, 4, 0.5), (0.9, 8, 0.875)])
def test_replay_share_keeps_a_fresh_group_and_the_expected_share(ratio, groups, expected):
    """Banker's rounding replayed nothing at 0.25 with <= 2 groups and every slot at 0.6 / 1 group."""
    share = ReplayShare(ratio, groups)
    ks = [share.next() for _ in range(400)]
    assert max(ks) <= groups - 1
    assert share.effective_ratio == pytest.approx(expected)
    assert abs(sum(ks) - 400 * groups * expected) <= 1


def test_resume_continues_the_policy_version():
    """A resumed engine starts at version -1: the saved version is restored, so the next push is one newer
    than every restored token and restored groups keep their true staleness (they used to get 0)."""
    cfg = _config(2, 1, 0.5, 4)
    (rank,) = _run(2, 1, 0.5, 4, 1, "long")[:1]
    saved = rank.engine.version
    assert saved == STEPS - 1
    rank.resume()
    assert rank.engine.version == saved
    rank.engine.version += 1
    fresh, replayed = rank.sched.next_batch([{"id": j} for j in range(4)])
    samples = [s for g in [*fresh, *replayed] for s in g.samples]
    _check_staleness(samples, rank.engine.version, cfg.max_staleness)
    assert max(v for s in samples for v in s.versions) <= rank.engine.version


@pytest.mark.parametrize("setting", [(1, 1, 0.0, 4, 1, "long"), (2, 1, 0.5, 2, 1, "long"), (4, 2, 0.25, 8, 2, "long")])
def test_bounded_partial_rollouts_still_continue_sequences(setting):
    """The bound is kept by due versions, not by making generation synchronous: long sequences are still
    interrupted at one version and continued at the next."""
    ranks = _run(*setting)
    assert all(r.manager._totals["interrupted"] > 0 for r in ranks)
