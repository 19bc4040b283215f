"""Pieces of the off-policy trainer that need no engine: per-rank pre-fill rows and pool size."""

from __future__ import annotations

import random

import pytest
import torch

from adaclip_rl.trainers.config import OffPolicyGRPOConfig
from adaclip_rl.trainers.offpolicy import in_flight_sequences, prefill_indices


def test_ranks_prefill_disjoint_rows_and_resume_where_they_stopped():
    world, size, seed = 4, 1000, 3
    drawn = [prefill_indices(size, seed, world, rank, 0, 50) for rank in range(world)]
    flat = [i for rows in drawn for i in rows]
    assert len(flat) == len(set(flat)) == 200  # no row pre-filled by two ranks
    assert drawn[0] != sorted(drawn[0])  # a seeded permutation, not the dataset order
    # a resumed run continues from its cursor: the next rows follow on, still disjoint
    later = prefill_indices(size, seed, world, 1, 50, 10)
    assert later == prefill_indices(size, seed, world, 1, 0, 60)[50:] and not set(later) & set(flat)
    # together the ranks draw every row once before any repeats
    cover = [i for rank in range(world) for i in prefill_indices(size, seed, world, rank, 0, size // world)]
    assert sorted(cover) == list(range(size))
    # each rank computes its rows itself, so they must be a function of the seed alone: a plain reference
    # (one seeded permutation, position (cursor + j) * world + rank), not global RNG state or hash seeds
    rows = prefill_indices(size, seed, world, 2, 0, 5)
    reference = list(range(size))
    random.Random(seed).shuffle(reference)
    assert rows == [reference[j * world + 2] for j in range(5)]
    random.seed(12345)
    torch.manual_seed(12345)
    assert prefill_indices(size, seed, world, 2, 0, 5) == rows
    assert prefill_indices(size, seed + 1, world, 2, 0, 5) != rows


@pytest.mark.parametrize(("partial", "prefill", "expected"), [(False, None, 32), (True, None, 64), (True, 2, 40)])
def test_in_flight_pool_size(tmp_path, partial, prefill, expected):
    args = OffPolicyGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none",
                               per_device_train_batch_size=8, steps_per_generation=4, num_generations=4,
                               partial_rollouts=partial, partial_prefill_groups=prefill, use_vllm=True,
                               vllm_mode="colocate", vllm_importance_sampling_correction=True)
    assert in_flight_sequences(args) == expected  # batch 32 sequences (8 groups) + pre-filled groups x 4


def test_rows_without_room_are_deferred_not_skipped():
    """Rows the pool has no room for are submitted first next time (they used to be dropped)."""
    from adaclip_rl.trainers.offpolicy import top_up_rows

    batches = [[{"i": 10 * s + j} for j in range(4)] for s in range(5)]
    needs = [2, 3, 4, 5, 6]  # room in the pool per step (varies with what finished)
    deferred: list[dict] = []
    submitted = []
    for batch, need in zip(batches, needs, strict=True):
        take, deferred, skipped = top_up_rows(deferred, batch, need, keep=4)
        assert skipped == 0
        submitted += [r["i"] for r in take]
    assert submitted == [r["i"] for b in batches for r in b]  # every row, in order
    assert deferred == []
    # with replay taking slots for good, the surplus beyond one batch is skipped (and counted), oldest first
    take, deferred, skipped = top_up_rows([{"i": 1}, {"i": 2}], [{"i": 3}, {"i": 4}, {"i": 5}], need=1, keep=2)
    assert [r["i"] for r in take] == [1] and [r["i"] for r in deferred] == [4, 5] and skipped == 2


def test_trl_engine_is_built_without_chunked_prefill_on_cpu(monkeypatch):
    """TRL builds its colocated vLLM with chunked prefill; on CPU a seeded request whose prompt is chunked
    crashes vLLM, so the wrapped engine used to drop every per-request seed. The constructor patch turns
    chunked prefill off (and sizes max_num_seqs) while GRPOTrainer builds the engine, then restores both."""
    from trl.generation import vllm_generation
    from trl.trainer import grpo_trainer

    from adaclip_rl.rollout import vllm_engine
    from adaclip_rl.trainers.offpolicy import _vllm_max_num_seqs_at_least

    built = []
    monkeypatch.setattr(vllm_generation, "LLM", lambda *a, **kw: built.append(kw) or "llm", raising=False)
    monkeypatch.setattr(vllm_engine, "_is_cpu_platform", lambda: True)
    original_llm, original_gen = vllm_generation.LLM, grpo_trainer.VLLMGeneration
    with _vllm_max_num_seqs_at_least(48):
        assert vllm_generation.LLM("m", max_num_seqs=8) == "llm"
        assert issubclass(grpo_trainer.VLLMGeneration, original_gen)
    assert built == [{"max_num_seqs": 8, "enable_chunked_prefill": False}]
    assert vllm_generation.LLM is original_llm and grpo_trainer.VLLMGeneration is original_gen


@pytest.mark.parametrize(("anchor", "logprobs", "skips"), [
    ("behaviour", [-0.5, -1.0], True),
    ("behaviour", [-0.5, float("nan")], False),  # old fills the NaN entry: TRL's forward is needed
    ("proximal", [-0.5, -1.0], False),  # the ratio is pi_theta / pi_old: the forward is needed
])
def test_old_logp_forward_is_skipped_only_when_nothing_reads_it(anchor, logprobs, skips):
    from types import SimpleNamespace

    from adaclip_rl.rollout import BehaviourSample
    from adaclip_rl.trainers.offpolicy import OffPolicyGRPOTrainer

    trainer = object.__new__(OffPolicyGRPOTrainer)
    trainer.rollout_cfg = SimpleNamespace(ratio_anchor=anchor)
    samples = [BehaviourSample([1], [5, 6], [-0.1, -0.2], [0, 0]),
               BehaviourSample([1], [7, 8], logprobs, [0, 0])]
    assert trainer._skips_old_forward(samples) is skips
    if not skips:  # the hook is a no-op: TRL's method is untouched
        with trainer._behaviour_as_old_logps(samples):
            assert "_get_per_token_logps_and_entropies" not in trainer.__dict__
