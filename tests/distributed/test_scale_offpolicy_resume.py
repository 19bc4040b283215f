"""The off-policy trainer's rollout state across world sizes (issue 24, item 4).

``OffPolicyGRPOTrainer`` writes one ``rollout_state_<rank>.pt`` per rank (replay buffer with its RNG,
in-flight partial rollouts, policy version, rank-strided pre-fill cursor) and each rank loads its
own file on resume (tests/trainers/test_offpolicy.py checks the round trip in one process, with a
real vLLM engine). Resuming on another number of ranks used to go on silently: with fewer ranks the
other ranks' buffers and partial rollouts were dropped, with more the new ranks started empty
beside restored ones (their policy-version clocks then disagree). It is now refused, before any
state is loaded, naming the ranks found and the way out (resume on that many ranks, or drop the
files to start the rollout state empty).

The trainer here is built without ``__init__`` (no vLLM engine, so many world sizes cost 9 s); what
runs is its real ``_load_optimizer_and_scheduler``. The 2-rank off-policy training, its resume and a
real one-process refusal of its checkpoint are test_scale_offpolicy_train.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from adaclip_rl.trainers.offpolicy import OffPolicyGRPOTrainer


def _checkpoint(tmp_path, ranks):
    for r in ranks:
        torch.save({"version": 3}, tmp_path / f"rollout_state_{r}.pt")
    return str(tmp_path)


def _trainer(world: int, loaded: list) -> OffPolicyGRPOTrainer:
    """Rank 0 of ``world``; what transformers' part of the load reads (no optimizer.pt: it loads nothing)."""
    trainer = object.__new__(OffPolicyGRPOTrainer)
    trainer.offpolicy_enabled = True
    trainer.accelerator = SimpleNamespace(num_processes=world, process_index=0)
    trainer.is_deepspeed_enabled = trainer.is_fsdp_xla_v1_enabled = False
    trainer.grad_clipper, trainer.use_adaptive_entropy = None, False
    trainer.load_rollout_state_dict = loaded.append
    return trainer


@pytest.mark.parametrize(("saved", "world"), [((0, 1), 1), ((0,), 2), ((0, 1, 2, 3), 2), ((1,), 1)])
def test_resume_on_another_world_size_is_refused(tmp_path, saved, world):
    ckpt, loaded = _checkpoint(tmp_path, saved), []
    with pytest.raises(ValueError, match=rf"rollout state of ranks \[{', '.join(map(str, saved))}\].* has {world} rank"):
        _trainer(world, loaded)._load_optimizer_and_scheduler(ckpt)
    assert loaded == []  # refused before any state was loaded


@pytest.mark.parametrize(("saved", "world"), [((0, 1), 2), ((0,), 1), ((), 2)])
def test_same_world_size_loads_this_ranks_state_and_none_starts_empty(tmp_path, saved, world):
    loaded = []
    _trainer(world, loaded)._load_optimizer_and_scheduler(_checkpoint(tmp_path, saved))
    assert loaded == ([{"version": 3}] if saved else [])
