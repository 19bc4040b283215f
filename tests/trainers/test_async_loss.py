"""The asynchronous trainer's loss path (no server): Archer's KL weighs every response of an
optimizer update alike however the micro-batches were packed, and the packed forward reads the
host once (TRL's read of the attention's segment lengths), not once more per row shape."""

from __future__ import annotations

import sys
from unittest import mock

import numpy as np
import pytest
import torch
import trl.experimental.async_grpo.async_grpo_trainer as agt
from async_stubs import NoTransfer, StubWorker, zero_reward
from datasets import Dataset
from transformers import AttentionInterface, AutoTokenizer

from adaclip_rl.losses import ArcherConfig
from adaclip_rl.tasks import ArithmeticTask
from adaclip_rl.trainers.async_config import AdaClipAsyncGRPOConfig
from adaclip_rl.trainers.async_grpo import (
    AdaClipAsyncGRPOTrainer,
    _VersionedCollator,
)
from adaclip_rl.trainers.chat_template import set_plain_response_template
from adaclip_rl.trainers.cpu_tree_attention import cpu_tree_attention


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return set_plain_response_template(AutoTokenizer.from_pretrained(tiny_model_dir))


@pytest.fixture(scope="module")
def trainer(tiny_model_dir, tokenizer, tmp_path_factory):
    rows = ArithmeticTask().sample(8, "train", seed=0)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows])
    args = AdaClipAsyncGRPOConfig(output_dir=str(tmp_path_factory.mktemp("async_loss")), report_to=[], bf16=False,
                                  dtype="float32", token_budget=0, policy_loss="archer", archer_low_kl=0.5,
                                  archer_high_kl=0.25, max_steps=1)
    tr = AdaClipAsyncGRPOTrainer(tiny_model_dir, zero_reward, args, data, tokenizer, rollout_worker=StubWorker(),
                                 weight_transfer=NoTransfer())
    AttentionInterface.register(agt.TREE_ATTENTION, cpu_tree_attention)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move the policy away from the frozen reference: a non-zero KL
        for p in tr.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    tr.model.train()
    return tr


def _samples(tokenizer, n: int = 8) -> list[dict]:
    g = torch.Generator().manual_seed(5)
    out = []
    for i in range(n):
        prompt = tokenizer(f"{10 + i // 2}+{20 + i // 2}=", add_special_tokens=False)["input_ids"]
        completion = torch.randint(3, 250, (3 + 2 * i,), generator=g).tolist()
        ids = np.asarray(prompt + completion, dtype=np.int64)
        mask = np.asarray([0] * len(prompt) + [1] * len(completion), dtype=np.int64)
        old = np.where(mask > 0, -5.6 + 0.3 * torch.randn(len(ids), generator=g).numpy(), 0.0).astype(np.float32)
        out.append({"input_ids": ids, "completion_mask": mask, "old_log_probs": old,
                    "advantage": float((-1) ** i) * 0.9, "group_id": i // 2, "metrics": {},
                    "token_versions": np.where(mask > 0, 0, -1)})
    return out


def _pack(tokenizer, samples: list[dict]) -> dict:
    row = agt.TreeRow()
    for s in samples:
        row.add(dict(s))
    return _VersionedCollator(tokenizer.pad_token_id, 1)([[row]])


def _update_loss(trainer, window: list[dict], cfg) -> float:
    """The summed loss of one optimizer update's micro-batches under ``cfg``."""
    trainer.loss_config = cfg
    trainer.current_gradient_accumulation_steps = len(window)
    trainer.begin_update(window)
    with torch.no_grad():
        return sum(trainer.compute_loss(trainer.model, dict(b)).item() for b in window)


@pytest.mark.parametrize("aggregation", ["response"])
def test_archer_kl_weighs_each_response_of_the_update_alike_however_packed(trainer, tokenizer, aggregation):
    samples = _samples(tokenizer)
    with_kl = ArcherConfig(low_kl=0.5, high_kl=0.25, kl_aggregation=aggregation)
    without = ArcherConfig(low_kl=0.0, high_kl=0.0, kl_aggregation=aggregation)
    kl_parts = []
    for packing in ([range(0, 2), range(2, 8)], [range(0, 4), range(4, 8)], [range(0, 6), range(6, 8)], [range(8)]):
        window = [_pack(tokenizer, [samples[i] for i in part]) for part in packing]
        kl_parts.append(_update_loss(trainer, window, with_kl) - _update_loss(trainer, window, without))
    assert kl_parts[-1] > 1e-4  # one micro-batch: the mean over the 8 responses of their class-mean KL
    for part in kl_parts[:-1]:
        assert part == pytest.approx(kl_parts[-1], rel=1e-4)


def test_packed_forward_reads_the_host_once(trainer, tokenizer):
    batch = _pack(tokenizer, _samples(tokenizer)[:5])
    reads = []
    originals = {name: getattr(torch.Tensor, name) for name in ("item", "tolist", "__int__", "__float__", "__index__")}

    def counting(name):
        def read(self, *a, **k):
            # the CPU stand-in for FA3 (cpu_tree_attention) reads its segment offsets: not on a GPU's path
            reads.append((name, sys._getframe(1).f_code.co_name))
            return originals[name](self, *a, **k)
        return read

    with mock.patch.multiple(torch.Tensor, **{name: counting(name) for name in originals}), torch.no_grad():
        p = trainer._forward_packed(trainer.model, dict(batch))
    ours = [r for r in reads if r[1] != "cpu_tree_attention"]
    assert ours == [("tolist", "_forward_packed")], ours  # the attention's segment lengths and the row shape
    assert p.shape == (5, max(3 + 2 * i for i in range(5)))
