"""policy_loss="grpo" reproduces stock TRL GRPOTrainer's loss and gradients on the same batch."""

from __future__ import annotations

import pytest
import torch
from conftest import digit_reward
from trl import GRPOConfig, GRPOTrainer

from adaclip_rl import AdaClipGRPOConfig, AdaClipGRPOTrainer

COMMON = dict(
    use_cpu=True, bf16=False, per_device_train_batch_size=4, num_generations=4, max_completion_length=6,
    report_to="none", save_strategy="no", gradient_checkpointing=False, epsilon=0.2, epsilon_high=0.28,
    gradient_accumulation_steps=2, steps_per_generation=2, logging_steps=1,
)


def _batch(model, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    b, p, c = 4, 3, 6
    prompt_ids = torch.randint(3, 200, (b, p), generator=gen)
    prompt_mask = torch.ones(b, p, dtype=torch.long)
    prompt_mask[0, 0] = 0  # left padding
    completion_ids = torch.randint(3, 200, (b, c), generator=gen)
    lengths = torch.tensor([6, 4, 1, 5])
    completion_mask = (torch.arange(c).unsqueeze(0) < lengths.unsqueeze(1)).long()
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt_ids, completion_ids], 1),
                       attention_mask=torch.cat([prompt_mask, completion_mask], 1)).logits[:, p - 1 : -1]
        logps = torch.log_softmax(logits.float(), -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    # stale behaviour policy: ratios spread well beyond [0.8, 1.28], so clipping is exercised
    old = logps + 0.4 * torch.randn(b, c, generator=gen)
    ref = logps + 0.2 * torch.randn(b, c, generator=gen)
    return {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
        "completion_mask": completion_mask, "advantages": torch.tensor([1.3, -0.7, 0.4, -1.1]),
        "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": completion_mask.sum().float() * 2,
    }


def _loss_and_grads(trainer, inputs):
    trainer.model.train()
    trainer.model.zero_grad()
    trainer.current_gradient_accumulation_steps = 2
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_policy_loss_matches_stock_trl(tiny_model_dir, arithmetic_dataset, tmp_path, loss_type, beta):
    kw = dict(COMMON, loss_type=loss_type, beta=beta)
    stock = GRPOTrainer(model=tiny_model_dir, reward_funcs=[digit_reward], train_dataset=arithmetic_dataset,
                        args=GRPOConfig(output_dir=str(tmp_path / "stock"), **kw))
    ours = AdaClipGRPOTrainer(model=tiny_model_dir, reward_funcs=[digit_reward], train_dataset=arithmetic_dataset,
                              args=AdaClipGRPOConfig(output_dir=str(tmp_path / "ours"), policy_loss="grpo", **kw))
    inputs = _batch(stock.model, seed=len(loss_type) * 10 + int(beta * 100))
    loss_s, grads_s = _loss_and_grads(stock, inputs)
    loss_o, grads_o = _loss_and_grads(ours, inputs)
    assert torch.allclose(loss_o, loss_s, rtol=1e-6, atol=1e-7), (loss_o, loss_s)
    assert grads_s.keys() == grads_o.keys() and len(grads_s) > 0
    for name, g in grads_s.items():
        assert torch.allclose(grads_o[name], g, rtol=1e-5, atol=1e-7), name
    # clipping really happened on this batch, and the shared metrics agree
    assert ours._metrics["train"]["clip_ratio/region_mean"][-1] > 0
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "entropy") + (("kl",) if beta else ()):
        assert ours._metrics["train"][key][-1] == pytest.approx(stock._metrics["train"][key][-1], rel=1e-5)
