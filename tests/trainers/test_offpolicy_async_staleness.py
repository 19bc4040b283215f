"""The asynchronous trainer enforces max_staleness per token: a sample whose oldest token is beyond the
bound when trained (continued under newer weights with pause_mode='keep', or trained a sync after it
was pulled) is dropped or down-weighted as configured. Reference: with the GRPO clip, scaling a
sample's loss by c >= 0 equals scaling its advantage by c (min(rA, clip(r)A) is positively homogeneous
in A), so the enforced loss must equal the plain loss of a batch whose stale sample's advantage is
scaled - same tokens, same denominator."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import trl.experimental.async_grpo.async_grpo_trainer as agt
from async_stubs import NoTransfer, StubWorker, zero_reward
from datasets import Dataset
from transformers import AttentionInterface, AutoTokenizer

from adaclip_rl.rollout import RolloutConfig
from adaclip_rl.trainers.async_config import AdaClipAsyncGRPOConfig
from adaclip_rl.trainers.async_grpo import (
    AdaClipAsyncGRPOTrainer,
    _VersionedCollator,
)
from adaclip_rl.trainers.chat_template import set_plain_response_template
from adaclip_rl.trainers.cpu_tree_attention import cpu_tree_attention

NOW = 5  # the trainer's policy version
BOUND = 1


def _batch(tokenizer, versions: list[list[int]], advantages: list[float]) -> dict:
    """One packed micro-batch; sample i has completion token versions ``versions[i]``."""
    g = torch.Generator().manual_seed(0)
    row = agt.TreeRow()
    for i, (tv, adv) in enumerate(zip(versions, advantages, strict=True)):
        prompt = tokenizer(f"{10 + i}+{20 + i}=", add_special_tokens=False)["input_ids"]
        completion = torch.randint(3, 250, (len(tv),), generator=g).tolist()
        ids = np.asarray(prompt + completion, dtype=np.int64)
        mask = np.asarray([0] * len(prompt) + [1] * len(completion), dtype=np.int64)
        old = np.where(mask > 0, -5.6 + 0.8 * torch.randn(len(ids), generator=g).numpy(), 0.0).astype(np.float32)
        token_versions = np.asarray([-1] * len(prompt) + tv, dtype=np.int64)
        row.add({"input_ids": ids, "completion_mask": mask, "old_log_probs": old, "advantage": adv, "group_id": i,
                 "metrics": {}, "token_versions": token_versions})
    return _VersionedCollator(tokenizer.pad_token_id, 1)([[row]])


@pytest.fixture(scope="module")
def trainer(tiny_model_dir, tmp_path_factory):
    tokenizer = set_plain_response_template(AutoTokenizer.from_pretrained(tiny_model_dir))
    args = AdaClipAsyncGRPOConfig(output_dir=str(tmp_path_factory.mktemp("async_stale")), report_to=[], bf16=False,
                                  dtype="float32", token_budget=0, policy_loss="grpo", max_staleness=BOUND,
                                  max_steps=1)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": "1+1="}]}] * 4)
    t = AdaClipAsyncGRPOTrainer(tiny_model_dir, zero_reward, args, ds, tokenizer, rollout_worker=StubWorker(),
                                weight_transfer=NoTransfer())
    AttentionInterface.register(agt.TREE_ATTENTION, cpu_tree_attention)
    t.model_version = NOW
    t.model.train()
    t.current_gradient_accumulation_steps = 1
    t.tok = tokenizer
    return t


def _loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])


# sample 0 fresh, sample 1 spans versions 3 -> 5 (oldest token 2 behind: beyond the bound), sample 2 spans
# 4 -> 5 (within), sample 3 all at version 2 (3 behind)
VERSIONS = [[5] * 6, [3, 3, 4, 5, 5, 5, 5], [4, 4, 5, 5, 5], [2] * 5]
ADV = [0.9, -0.7, 0.5, 0.8]


@pytest.mark.parametrize(("policy", "decay", "scale"), [
    ("drop", 0.5, [1.0, 0.0, 1.0, 0.0]),
    ("downweight", 0.5, [1.0, 0.5, 1.0, 0.25]),
    ("downweight", 0.0, [1.0, 0.0, 1.0, 0.0]),
])
def test_sample_beyond_the_bound_is_handled_as_configured(trainer, policy, decay, scale):
    trainer.args.staleness_policy, trainer.args.staleness_decay = policy, decay
    loss, grads = _loss_and_grads(trainer, _batch(trainer.tok, VERSIONS, ADV))
    fresh = [[NOW] * len(v) for v in VERSIONS]
    scaled = [a * c for a, c in zip(ADV, scale, strict=True)]
    ref_loss, ref_grads = _loss_and_grads(trainer, _batch(trainer.tok, fresh, scaled))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(grads, ref_grads, rtol=1e-5, atol=1e-8)
    # and the bound matters: without enforcement the loss would be the unscaled one
    plain, _ = _loss_and_grads(trainer, _batch(trainer.tok, fresh, ADV))
    assert not torch.allclose(loss, plain)


def test_staleness_fields_share_the_rollout_config_defaults_and_checks(tmp_path):
    fields = {f.name: f for f in dataclasses.fields(AdaClipAsyncGRPOConfig)}
    for name in ("staleness_policy", "staleness_decay"):
        ref = RolloutConfig.__dataclass_fields__[name]
        assert fields[name].default == ref.default and fields[name].metadata["help"] == ref.metadata["help"]
    with pytest.raises(ValueError, match="staleness_policy must be one of"):
        AdaClipAsyncGRPOConfig(output_dir=str(tmp_path), report_to=[], staleness_policy="keep")
    with pytest.raises(ValueError, match=r"staleness_decay must be in \[0.0, 1.0\]"):
        AdaClipAsyncGRPOConfig(output_dir=str(tmp_path), report_to=[], staleness_decay=1.5)
